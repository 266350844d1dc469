"""`--prompt_mode paper` and the official post-processing options, against a local scripted server.

The request and the diversity pick are checked against golden data in `tests/golden/`: the outputs of the
authors' own functions in `datasets/Prompt Engineering.ipynb` of github.com/shengminp/TinyThinker (MIT),
run once outside this repository on the official exemplar files and the raw benchmark files under
TINYTHINKER_DATA_DIR. `tests/golden/README.md` records the commit, the inputs and the seeds.
"""

import json
import os
import random
import statistics

import pytest

from tinythinker_jax import cli, formats
from tinythinker_jax.data import readers
from tinythinker_jax.data.records import Rationale, make_question, question_to_json, read_teacher_records, write_jsonl
from tinythinker_jax.teacher import exemplars, paper, parsing, prompts, selection
from tinythinker_jax.teacher.fake_server import (
    PAPER_WORDS,
    Reply,
    ScriptedServer,
    paper_length_reply,
    paper_length_text,
    verdicts,
)
from tinythinker_jax.teacher.selection import levenshtein as levenshtein_distance

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


# ---- Helpers ----

def _golden(name):
    """One golden file of `tests/golden/`, the official notebook's output (see the README there)."""
    with open(os.path.join(GOLDEN_DIR, name)) as f:
        return json.load(f)


def _cli(*argv):
    return cli.main(["teacher", *argv])  # as the command runs: a user error is one line on stderr and exit 2


def _write_split(tmp_path, questions):
    split_dir = tmp_path / "data"
    write_jsonl(str(split_dir / "train.jsonl"), map(question_to_json, questions))
    return str(split_dir)


def _user(body):
    return body["messages"][-1]["content"]


def _with_user_text(body, text):
    """A copy of the request `body` with `text` as its user message (the last one), its keys in their order."""
    return {**body, "messages": [*body["messages"][:-1], {**body["messages"][-1], "content": text}]}


def _reply(question, correct, tag):
    """A reply in the paper's layout: `correct` judged correct (None: every option incorrect), its verdict first."""
    order = sorted(question.labels, key=lambda label: label != correct)
    lines = [f"Key Information: Fact {tag}."]
    for index, label in enumerate(order):
        verdict = "correct" if label == correct else "incorrect"
        lines.append(f"{'Explanations: ' if index == 0 else ''}{label} is {verdict}. Because reason {tag} {label}.")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def official(benchmark_data_dir):
    return os.path.join(benchmark_data_dir, "exemplars")


def _official_exemplars(official, dataset):
    path = os.path.join(official, f"{dataset}_cot.json")
    with open(path) as f:
        return path, json.load(f)


# ---- The request ----

# Raw lines of the official training files: CSQA 28 has a triple space in its stem, 3879 an option
# with a trailing space, 54 a stem ending in "?,"; StrategyQA 0 and 3 are true, 1 and 2 false.
RAW_PICKS = {
    "csqa": ("csqa/train_rand_split.jsonl", [0, 1, 28, 54, 3879]),
    "obqa": ("obqa/train.jsonl", [0, 1, 2]),
    "strategyqa": ("strategyqa/strategyqa_train.json", [0, 1, 2, 3]),
}
# Question records keep texts without leading and trailing whitespace (`records.make_question`), so
# the one upstream training item with such whitespace, CSQA's option "ice cream " (line 3879), reads
# "A. ice cream, B." where the notebook wrote "A. ice cream , B.".
STRIPPED_BY_RECORDS = {"csqa": ("A. ice cream , ", "A. ice cream, ")}


def _raw_subset(benchmark_data_dir, tmp_path, dataset):
    """Our question records of the picked raw items, read from a file of the upstream format holding just them."""
    relative, picks = RAW_PICKS[dataset]
    source = os.path.join(benchmark_data_dir, relative)
    target = str(tmp_path / os.path.basename(relative))
    if dataset == "strategyqa":
        with open(source) as f:
            items = json.load(f)
        with open(target, "w") as f:
            json.dump([items[i] for i in picks], f)
        return readers.read_strategyqa_json(target)
    with open(source) as f:
        lines = f.readlines()
    with open(target, "w") as f:
        f.writelines(lines[i] for i in picks)
    return readers.read_multiple_choice_jsonl(target, 5 if dataset == "csqa" else 4)


@pytest.mark.parametrize("dataset, prompt_seed, n", [("csqa", 7, 8), ("obqa", 0, 4), ("strategyqa", 3, 4)])
def test_paper_mode_sends_the_notebooks_request_byte_for_byte(
        benchmark_data_dir, official, tmp_path, dataset, prompt_seed, n):
    golden = _golden("paper_requests.json")["datasets"][dataset]
    # The golden holds the notebook's output for these raw items, this seed and this n: a mismatch is a stale golden.
    assert (golden["raw_file"], golden["raw_items"]) == RAW_PICKS[dataset]
    assert (golden["prompt_seed"], golden["n"]) == (prompt_seed, n)
    questions = _raw_subset(benchmark_data_dir, tmp_path, dataset)
    exemplar_path, examples = _official_exemplars(official, dataset)
    assert golden["num_shot"] == len(examples)
    request_path = os.path.join(official, "request.json")
    expected = golden["bodies"]
    assert len(expected) == len(questions)
    if dataset in STRIPPED_BY_RECORDS:
        notebook_text, record_text = STRIPPED_BY_RECORDS[dataset]
        assert sum(notebook_text in _user(body) for body in expected) == 1
        expected = [_with_user_text(body, _user(body).replace(notebook_text, record_text)) for body in expected]

    split_dir, out_dir = _write_split(tmp_path, questions), str(tmp_path / "out")
    common = ["--dataset", dataset, "--split_dir", split_dir, "--out_dir", out_dir, "--prompt_mode", "paper",
              "--request_file", request_path, "--exemplars", exemplar_path, "--prompt_seed", str(prompt_seed)]
    batch_file = str(tmp_path / "batch.jsonl")
    assert _cli("export-batch", "--batch_file", batch_file, *common) == 0
    exported = [json.loads(line)["body"] for line in open(batch_file)]
    assert exported == expected
    assert all(list(body) == ["model", "messages", "max_tokens", "n", "temperature"] for body in exported)

    with ScriptedServer() as server:
        assert _cli("run", "--base_url", server.base_url, "--no-progress", *common) == 0
    assert sorted(server.requests, key=_user) == sorted(expected, key=_user)
    # The scripted server read the paper's verdicts, so every default reply passed the filters.
    records = read_teacher_records(os.path.join(out_dir, "train.jsonl"))
    assert [(r.question.id, len(r.rationales)) for r in records] == [(q.id, n) for q in questions]


def test_the_exemplar_order_follows_the_prompt_seed_as_the_notebook_after_random_seed(official):
    exemplar_path, _ = _official_exemplars(official, "csqa")
    loaded = exemplars.load_exemplars(exemplar_path)
    instruction = paper.load_instruction(os.path.join(official, "request.json"))
    notebook = {(s["seed"], s["num_shot"]): s["content"] for s in _golden("paper_system_messages.json")["systems"]}
    for seed in range(3):
        assert paper.system_message(instruction, loaded, seed) == notebook[seed, 8]
        assert paper.system_message(instruction, loaded, seed, k=3) == notebook[seed, 3]
    assert paper.system_message(instruction, loaded, 0) != paper.system_message(instruction, loaded, 1)


@pytest.mark.parametrize("dataset", ["csqa", "obqa", "strategyqa"])
def test_replies_in_the_papers_layout_parse(official, dataset):
    """The exemplars' own replies, as the notebook wrote them (first verdict on the `Explanations:` line)."""
    _, examples = _official_exemplars(official, dataset)
    replies = _golden("paper_exemplar_replies.json")["replies"][dataset]
    assert len(replies) == len(examples)
    by_key_information = {example["Key Information"]: example for example in examples}
    for reply in replies:
        example = by_key_information[reply.split("\n")[0].removeprefix("Key Information: ")]
        explanations = parsing.split_explanations("\n".join(example["Explanations"]))
        gold = next(e.label for e in explanations if e.correct)
        labels = sorted(e.label for e in explanations)
        question = make_question("x", example["Q"], [(label, "option") for label in labels], gold)
        answer, rationale = parsing.read_sample(reply, "stop", question)
        assert answer == gold and parsing.parse_sample(reply, "stop", question) == rationale
        # The parser squashes runs of whitespace (one exemplar has a double space).
        assert rationale.recall == formats.close_sentence(" ".join(example["Key Information"].split()))
        assert rationale.analyze == {
            e.label: formats.close_sentence(" ".join(formats.strip_verdict(line).split()))
            for e, line in zip(explanations, example["Explanations"])
        }


def test_paper_mode_needs_the_official_files(tmp_path, capsys):
    split_dir = _write_split(tmp_path, [make_question("q0", "Q?", [("A", "a"), ("B", "b")], "A")])
    assert _cli("estimate", "--dataset", "strategyqa", "--split_dir", split_dir, "--prompt_mode", "paper") == 2
    assert "--request_file" in capsys.readouterr().err
    assert _cli("estimate", "--dataset", "strategyqa", "--split_dir", split_dir, "--request_file", "r.json") == 2
    assert "--prompt_mode paper" in capsys.readouterr().err


def test_identical_paper_bodies_get_distinct_cache_keys():
    """Paper bodies carry no seed: the round and index keep a retry from being answered by the cache."""
    question = make_question("q0", "Q?", [("A", "a"), ("B", "b")], "A")
    sampling = prompts.TeacherSampling(prompt_mode="paper", samples=8, choices_per_request=4, paper_retry=True)
    first = prompts.plan_requests(question, 8, 0, "SYS", sampling)
    retry = prompts.plan_requests(question, 4, 1, "SYS", sampling)
    assert first[0].body == first[1].body == retry[0].body and "seed" not in first[0].body
    assert len({r.key for r in first + retry}) == 3
    assert [r.key for r in prompts.plan_requests(question, 8, 0, "SYS", sampling)] == [r.key for r in first]


# ---- The fake server's paper-length replies ----

def test_the_fake_server_reads_the_paper_user_message():
    question = make_question("q", "Pick?", [("A", "x"), ("B", "y"), ("C", "z")], "B")
    body = {"messages": [{"role": "user", "content": paper.user_message(question)}]}
    assert paper.user_message(question) == (
        "Pick?\nOptions: A. x, B. y, C. z\nKey Information:\n"
        "Explanations: B is correct. Because\nA is incorrect. Because\nC is incorrect. Because")
    assert verdicts(body) == [("B", True), ("A", False), ("C", False)]


def test_paper_length_replies_are_well_formed_and_deterministic():
    question = make_question("q", "Pick?", [(label, label.lower()) for label in "ABCDE"], "D")
    sampling = prompts.TeacherSampling(prompt_mode="paper", samples=3, choices_per_request=3)
    body = prompts.plan_requests(question, 3, 0, "SYS", sampling)[0].body
    texts = paper_length_reply(body, 0).texts
    assert len(texts) == 3 and len(set(texts)) == 3 and texts[1] == paper_length_text(body, 1)
    assert texts[0].split("\n")[1].startswith("Explanations: D is correct. Because ")
    for text in texts:
        rationale = parsing.parse_sample(text, "stop", question)
        low, high = PAPER_WORDS[5]["explanation"][2:]
        assert all(low <= len(analysis.split()) <= high for analysis in rationale.analyze.values())


def test_paper_words_are_the_official_exemplars_lengths(official):
    for dataset, options in (("csqa", 5), ("obqa", 4), ("strategyqa", 2)):
        _, examples = _official_exemplars(official, dataset)
        key_information = [len(e["Key Information"].split()) for e in examples]
        explanation = [len(formats.strip_verdict(line).split()) for e in examples for line in e["Explanations"]]
        for name, counts in (("key_information", key_information), ("explanation", explanation)):
            mean, deviation, low, high = PAPER_WORDS[options][name]
            assert mean == pytest.approx(statistics.mean(counts), abs=0.006)
            assert deviation == pytest.approx(statistics.pstdev(counts), abs=0.006)
            assert (low, high) == (min(counts), max(counts))


def test_paper_length_summarize_inputs_reach_the_exemplars_t5_lengths(benchmark_data_dir):
    """The official CSQA exemplars' own summarize inputs are 190-259 T5 tokens long."""
    import sentencepiece as spm

    vocabulary = os.path.join(os.path.dirname(benchmark_data_dir.rstrip("/")), "vocab", "t5_spiece.model")
    processor = spm.SentencePieceProcessor(model_file=vocabulary)
    questions = readers.read_multiple_choice_jsonl(os.path.join(benchmark_data_dir, "csqa", "dev_rand_split.jsonl"), 5)
    sampling = prompts.TeacherSampling(prompt_mode="paper", samples=2, choices_per_request=2)
    lengths = []
    for question in questions[:100]:
        body = prompts.plan_requests(question, 2, 0, "SYS", sampling)[0].body
        for choice in range(2):
            rationale = parsing.parse_sample(paper_length_text(body, choice), "stop", question)
            summarize = formats.summarize_input(question, rationale.recall, rationale.analyze)
            lengths.append(len(processor.encode(summarize)))
    assert 200 <= statistics.mean(lengths) <= 250
    assert sum(190 <= length <= 260 for length in lengths) >= 0.8 * len(lengths)


# ---- The post-processing options ----

def test_levenshtein_and_its_limit():
    assert levenshtein_distance("kitten", "sitting") == 3
    assert levenshtein_distance("", "abc") == levenshtein_distance("abc", "") == 3
    assert levenshtein_distance("x" + "a" * 10, "x") == 10 and levenshtein_distance("x" + "a" * 11, "x") == 11
    assert selection.levenshtein("kitten", "sitting", limit=2) == 3  # above the limit: limit + 1
    assert selection.levenshtein("kitten", "sitting", limit=3) == 3
    assert selection.levenshtein("a" * 40, "b" * 40, limit=10) == 11


NEAR_1 = "Milk spoils quickly when warm."
NEAR_2 = "Milk spoils quickly when it's warm."  # 5 edits from NEAR_1: not diverse
FAR_1 = "Sofas are furniture kept indoors."
FAR_2 = "Birds migrate south for the winter months."
FAR_3 = "Copper conducts electricity well."
EDGE_1, EDGE_2 = "Ten more: " + "a" * 10, "Ten more: "  # exactly 10 edits apart: not diverse (> 10 is)


def _rationales(*recalls):
    return [Rationale(recall, {"A": "a."}) for recall in recalls]


def test_diversity_pick_takes_the_diverse_first_then_tops_up_at_random():
    candidates = _rationales(NEAR_1, FAR_1, NEAR_2, FAR_2, FAR_3)
    assert selection.diversity_pick(candidates, 2, random.Random(0)) == _rationales(FAR_1, FAR_2)
    assert selection.diversity_pick(candidates, 3, random.Random(0)) == _rationales(FAR_1, FAR_2, FAR_3)
    four = selection.diversity_pick(candidates, 4, random.Random(0))
    assert four[:3] == _rationales(FAR_1, FAR_2, FAR_3) and four[3] in _rationales(NEAR_1, NEAR_2)
    edge = selection.diversity_pick(_rationales(EDGE_1, FAR_1, EDGE_2), 1, random.Random(0))
    assert edge == _rationales(FAR_1)


@pytest.mark.parametrize("k", range(1, 8))
@pytest.mark.parametrize("seed", range(3))
def test_diversity_pick_is_the_notebooks_select_candidate(k, seed):
    recalls = [NEAR_1, FAR_1, NEAR_2, FAR_2, EDGE_1, FAR_3, EDGE_2]
    golden = _golden("select_candidate.json")
    assert golden["candidates"] == recalls  # the notebook ran on these very candidates, in this order
    (notebook,) = [p["picked"] for p in golden["picks"] if (p["seed"], p["augment_num"]) == (seed, k)]
    ours = selection.diversity_pick(_rationales(*recalls), k, random.Random(seed))
    assert [r.recall for r in ours] == notebook


def test_teacher_vote_is_a_plurality_and_a_tie_goes_to_the_first_sampled():
    def samples(*answers):
        return [selection.Sample(answer, Rationale("k.", {})) for answer in answers]

    assert selection.teacher_vote(samples("B", "A", "A", "B")) == "B"
    assert selection.teacher_vote(samples("C", "A", "B", "A", None, None, None)) == "A"  # 2 of 7 wins
    assert selection.teacher_vote(samples(None)) is None


FIVE = [(label, f"text {label}") for label in "ABCDE"]


def _paper_flags(tmp_path, dataset):
    """Paper mode with a stand-in request file and the project's exemplars: these tests need no data."""
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps({"Key": "Explain."}))
    return ["--prompt_mode", "paper", "--request_file", str(request_file),
            "--exemplars", exemplars.shipped_exemplars_path(dataset)]


def _scripted_run(tmp_path, questions, script, *flags):
    split_dir, out_dir = _write_split(tmp_path, questions), str(tmp_path / "out")
    with ScriptedServer(script) as server:
        argv = ["run", "--dataset", "csqa", "--split_dir", split_dir, "--out_dir", out_dir, "--base_url",
                server.base_url, "--model", "local", "--no-progress", *flags]
        assert _cli(*argv) == 0
        first_run_requests = list(server.requests)
        assert _cli(*argv) == 0
        assert server.requests == first_run_requests  # the re-run found every response in the cache
    records = read_teacher_records(os.path.join(out_dir, "train.jsonl"))
    with open(os.path.join(out_dir, "train_report.json")) as f:
        return records, json.load(f), first_run_requests


def test_relabel_by_teacher_vote_changes_the_label_and_reports_it(tmp_path):
    voted = make_question("q0", "Voted?", FIVE, "A")
    agreed = make_question("q1", "Agreed?", FIVE, "C")

    def script(body, number):
        if _user(body).startswith("Voted?"):  # B three times (once a duplicate), the gold A once
            return Reply(texts=[_reply(voted, "B", 1), _reply(voted, "A", 2), _reply(voted, "B", 3),
                                _reply(voted, "B", 1)])
        return Reply(texts=[_reply(agreed, "C", tag) for tag in range(4)])

    flags = _paper_flags(tmp_path, "csqa") + ["--samples", "4", "--rounds", "1"]
    records, report, _ = _scripted_run(tmp_path / "relabel", [voted, agreed], script, *flags,
                                       "--relabel_by_teacher_vote")
    assert [(r.question.id, r.question.answer) for r in records] == [("q0", "B"), ("q1", "C")]
    assert [r.recall for r in records[0].rationales] == ["Fact 1.", "Fact 3."]
    assert report["relabelled"] == 1
    assert report["relabelled_questions"] == [{"id": "q0", "gold": "A", "teacher": "B"}]
    assert report["filtered"]["contradicts_gold"] == 1 and report["filtered"]["duplicate"] == 1
    assert report["post_processing"]["relabel_by_teacher_vote"] is True

    records, report, _ = _scripted_run(tmp_path / "gold", [voted, agreed], script, *flags)
    assert [(r.question.id, r.question.answer) for r in records] == [("q0", "A"), ("q1", "C")]
    assert [r.recall for r in records[0].rationales] == ["Fact 2."]
    assert report["relabelled"] == 0 and report["relabelled_questions"] == []
    assert report["filtered"]["contradicts_gold"] == 3


def test_diversity_pick_through_the_cli(tmp_path):
    question = make_question("q0", "Diverse?", FIVE, "A")

    def script(body, number):
        texts = [_reply(question, "A", 0).replace("Fact 0.", recall) for recall in (NEAR_1, NEAR_2, FAR_1, FAR_2)]
        return Reply(texts=texts)

    flags = ["--samples", "2", "--request_samples", "4"]
    records, report, requests = _scripted_run(tmp_path / "pick", [question], script, *flags, "--diversity_pick")
    assert [body["n"] for body in requests] == [4]
    assert [r.recall for r in records[0].rationales] == [FAR_1, FAR_2]
    assert report["filtered"]["surplus"] == 2
    records, _, _ = _scripted_run(tmp_path / "arrival", [question], script, *flags)
    assert [r.recall for r in records[0].rationales] == [NEAR_1, NEAR_2]


def test_paper_retry_asks_for_the_failed_samples_and_doubles_max_tokens_after_a_truncation(tmp_path):
    question = make_question("q0", "Retried?", [(label, label.lower()) for label in "ABCD"], "A")
    rounds = {
        # 4 asked: good; cut off; no key information; judges B correct. Failed: 2 (the B vote is no failure).
        0: Reply(texts=[_reply(question, "A", 0), _reply(question, "A", 1), "garbage", _reply(question, "B", 3)],
                 finish_reason=["stop", "length", "stop", "stop"]),
        # 2 asked, with max_tokens doubled: good; every option judged incorrect. Failed: 1.
        1: Reply(texts=[_reply(question, "A", 4), _reply(question, None, 5)]),
        # 1 asked, max_tokens still doubled: good. Failed: 0, so no further round though 3 of 4 are kept.
        2: Reply(texts=[_reply(question, "A", 6)]),
    }
    flags = _paper_flags(tmp_path, "obqa") + ["--samples", "4", "--rounds", "4", "--paper_retry"]
    records, report, requests = _scripted_run(tmp_path, [question], lambda body, number: rounds[number], *flags)

    assert [(body["n"], body["max_tokens"], body["temperature"]) for body in requests] == [
        (4, 256, 0.8), (2, 512, 0.8), (1, 512, 0.8)]
    assert all("seed" not in body for body in requests)
    assert [r.recall for r in records[0].rationales] == ["Fact 0.", "Fact 4.", "Fact 6."]
    assert report["rounds"] == 3 and report["short_questions"] == [{"id": "q0", "samples": 3}]
    assert report["filtered"] == {
        "truncated": 1, "no_key_information": 1, "malformed": 0, "missing_option": 0, "empty_explanation": 0,
        "contradicts_gold": 2, "duplicate": 0, "surplus": 0,
    }
