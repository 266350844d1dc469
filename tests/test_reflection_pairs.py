"""Preference pairs from hand-made sampled chains: one test per rule of issue 5, steps 2-4 and 6-7, and of the
official code's that refine them. The sampled texts here are unclosed, as students often leave them; the pairs
hold them closed (`formats.close_sentence`), as the official code reads them back from the next stage's prompt."""

import collections
import json
import os
import random
import subprocess
import sys

import pytest

from tinythinker_jax import chains as chains_module
from tinythinker_jax import formats
from tinythinker_jax.chains import Chain
from tinythinker_jax.data.records import Rationale, iter_json_lines, make_question, write_json, write_jsonl
from tinythinker_jax.reflection import pairs, sampling
from tinythinker_jax.reflection.pairs import analyze_pairs, fallback_analyses, recall_pairs, recalls_to_analyze

QUESTION = make_question("q1", "Where would you find a sofa?", [("A", "ocean"), ("B", "house"), ("C", "sky")], "B")
RECALL = "Sofas are furniture, kept indoors"


def chain(recall, prediction, analyses=None):
    summary = formats.summary_target(prediction) if prediction else "I am not sure."
    return Chain(recall=recall, analyses=analyses, summary=summary, prediction=prediction)


def analyses(tag):
    return {label: f"{tag} about {label}" for label in QUESTION.labels}


def recall_rows(chains, teacher=(), seed=0):
    return recall_pairs(QUESTION, chains, list(teacher), random.Random(seed))


def analyze_rows(chains, fallback=(), seed=0):
    return analyze_pairs(QUESTION, RECALL, chains, list(fallback), random.Random(seed))


def sides(rows):
    return collections.Counter(r["chosen"] for r in rows), collections.Counter(r["rejected"] for r in rows)


# Recall pairs (steps 2-4).

def test_recall_pairs_use_distinct_texts_and_drop_texts_on_both_sides():
    chains = [chain("r1", "B"), chain("r1", "B"), chain("r2", "B"), chain(" r3 ", "B"), chain("r3", "B"),
              chain("r1", "A"), chain("r4", "C"), chain("r4", "C"), chain("r5", None)]
    rows = recall_rows(chains, teacher=["t1"])
    chosen, rejected = sides(rows)
    assert chosen == {"r2.": 1, "r3.": 1}  # r1 was also wrong once; the teacher is not needed
    assert rejected == {"r4.": 1, "r5.": 1}  # an unparseable summary counts as wrong
    assert all(r["prompt"] == formats.recall_input(QUESTION) for r in rows)
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in rows)


def test_question_without_rejected_recalls_is_skipped():
    assert recall_rows([chain("r1", "B"), chain("r2", "B")], teacher=["t1"]) == []
    assert recall_rows([chain("r1", "B"), chain("r1", "A")], teacher=["t1"]) == []  # the only wrong one overlaps


def test_more_chosen_resamples_rejected_with_replacement():
    chains = [chain(f"r{i}", "B") for i in range(5)] + [chain("w1", "A"), chain("w2", None)]
    chosen, rejected = sides(recall_rows(chains))
    assert chosen == {f"r{i}.": 1 for i in range(5)}
    assert set(rejected) == {"w1.", "w2."} and sum(rejected.values()) == 5


def test_more_rejected_adds_distinct_teacher_recalls_first():
    chains = [chain("r1", "B"), chain("w1", "A"), chain("w2", "C"), chain("w3", None)]
    chosen, rejected = sides(recall_rows(chains, teacher=["r1", "t1", "t2", "t3"]))
    assert rejected == {"w1.": 1, "w2.": 1, "w3.": 1}
    assert chosen["r1."] == 1 and sum(chosen.values()) == 3 and max(chosen.values()) == 1
    assert set(chosen) <= {"r1.", "t1.", "t2.", "t3."}


def test_teacher_recalls_fill_in_with_replacement_when_too_few():
    chains = [chain("w1", "A"), chain("w2", "C"), chain("w3", None)]
    assert sides(recall_rows(chains, teacher=["t1"]))[0] == {"t1.": 3}
    chosen, _ = sides(recall_rows(chains, teacher=["t1", "t2"]))
    assert set(chosen) == {"t1.", "t2."} and sum(chosen.values()) == 3


def test_teacher_recall_equal_to_a_rejected_text_is_never_chosen():
    chains = [chain("w1", "A"), chain("w2", "C")]
    assert sides(recall_rows(chains, teacher=["w1.", "t1"]))[0] == {"t1.": 2}  # equal once closed


def test_without_teacher_recalls_the_surplus_rejected_are_dropped():
    assert recall_rows([chain("w1", "A")]) == []
    chosen, rejected = sides(recall_rows([chain("r1", "B"), chain("w1", "A"), chain("w2", "C")]))
    assert chosen == {"r1.": 1} and sum(rejected.values()) == 1 and set(rejected) <= {"w1.", "w2."}


def test_recall_texts_are_closed_before_the_sets_are_formed():
    """Texts equal once closed are one text (here on both sides, so dropped); an empty sample becomes "."
    as in the official prompts; a text ending in a quote is already closed."""
    chains = [chain("r1", "B"), chain("r1.", "B"), chain("", "B"), chain('He said "yes"', "B"),
              chain("w1", "A"), chain("w1.", "C"), chain("r1.", "A"), chain("  ", "C")]
    chosen, rejected = sides(recall_rows(chains))
    assert set(chosen) == {'He said "yes"'}
    assert set(rejected) == {"w1."}  # "." (the empty sample) was chosen and rejected: dropped
    chosen, rejected = sides(recall_rows([chain("", "A"), chain("w1", "A")], teacher=["t1", "t2"]))
    assert rejected == {".": 1, "w1.": 1} and chosen == {"t1.": 1, "t2.": 1}

def test_recall_pairs_are_deterministic_per_seed():
    chains = [chain(f"r{i}", "B") for i in range(4)] + [chain(f"w{i}", "A") for i in range(3)]
    assert recall_rows(chains, seed=7) == recall_rows(chains, seed=7)
    assert recall_rows(list(reversed(chains)), seed=7) == recall_rows(chains, seed=7)
    outcomes = {json.dumps(recall_rows(chains, seed=seed)) for seed in range(10)}
    assert len(outcomes) > 1


def test_recalls_to_analyze_are_every_rows_chosen_side_repeats_included():
    """As the official analyze pass, which has one entry per recall-pair row: a recall chosen in k rows is
    analysed k times as often."""
    rows = recall_rows([chain("w1", "A"), chain("w2", "C"), chain("w3", None)], teacher=["t1"])
    assert recalls_to_analyze(rows) == ["t1."] * 3
    rows = recall_rows([chain("r2", "B"), chain("r1", "B"), chain("w1", "A")])
    assert recalls_to_analyze(rows) == ["r1.", "r2."]


def test_fallback_analyses_are_the_students_gold_ones_else_the_teachers():
    chains = [chain("r1", "B", analyses("gold")), chain("r1", "A", analyses("wrong")), chain("r2", "B", analyses("x"))]
    teacher = [Rationale("t1", analyses("teacher")), Rationale("t2", analyses("other"))]
    assert fallback_analyses(QUESTION, "r1", chains, teacher) == [analyses("gold")]
    assert fallback_analyses(QUESTION, "t1", chains, teacher) == [analyses("teacher")]
    # The pair rows hold recalls closed; they still find what went with the unclosed text.
    assert fallback_analyses(QUESTION, "r1.", chains, teacher) == [analyses("gold")]
    assert fallback_analyses(QUESTION, "t1.", chains, teacher) == [analyses("teacher")]


def test_rows_round_trip_through_jsonl(tmp_path):
    rows = recall_rows([chain("r1", "B"), chain("w1", "A")])
    path = str(tmp_path / "pairs.jsonl")
    write_jsonl(path, rows)
    assert [obj for _, obj in iter_json_lines(path)] == rows


# Analyze pairs (steps 6-7).

def test_each_analyze_pair_gives_a_gold_option_and_a_wrong_pick_example():
    chains = [chain(RECALL, "B", analyses("good")), chain(RECALL, "C", analyses("bad"))]
    rows = analyze_rows(chains, fallback=[analyses("teacher")])
    assert rows == [
        {"prompt": formats.analyze_input(QUESTION, RECALL, "B"), "chosen": "good about B.", "rejected": "bad about B."},
        {"prompt": formats.analyze_input(QUESTION, RECALL, "C"), "chosen": "good about C.", "rejected": "bad about C."},
    ]


def test_analyze_tuples_are_distinct_overlap_removed_and_unparseable_dropped():
    chains = [chain(RECALL, "B", analyses("shared")), chain(RECALL, "A", analyses("shared")),
              chain(RECALL, "B", analyses("good")), chain(RECALL, "B", analyses("good")),
              chain(RECALL, "A", analyses("bad")), chain(RECALL, "A", analyses("bad")),
              chain(RECALL, None, analyses("unparsed")), chain(RECALL, "Z", analyses("no such option"))]
    rows = analyze_rows(chains, fallback=[analyses("teacher")])
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        (formats.analyze_input(QUESTION, RECALL, "B"), "good about B.", "bad about B."),
        (formats.analyze_input(QUESTION, RECALL, "A"), "good about A.", "bad about A."),
    ]


def test_analyze_without_rejected_is_skipped():
    chains = [chain(RECALL, "B", analyses("good")), chain(RECALL, None, analyses("unparsed"))]
    assert analyze_rows(chains, fallback=[analyses("teacher")]) == []


def test_analyze_without_chosen_uses_the_fallback_with_replacement():
    chains = [chain(RECALL, "A", analyses("bad1")), chain(RECALL, "C", analyses("bad2"))]
    rows = analyze_rows(chains, fallback=[analyses("step1")])
    by_prompt = collections.defaultdict(list)
    for row in rows:
        by_prompt[row["prompt"]].append((row["chosen"], row["rejected"]))
    assert sorted(by_prompt[formats.analyze_input(QUESTION, RECALL, "B")]) == [
        ("step1 about B.", "bad1 about B."), ("step1 about B.", "bad2 about B.")]
    assert by_prompt[formats.analyze_input(QUESTION, RECALL, "A")] == [("step1 about A.", "bad1 about A.")]
    assert by_prompt[formats.analyze_input(QUESTION, RECALL, "C")] == [("step1 about C.", "bad2 about C.")]


def test_analyze_more_chosen_resamples_rejected():
    chains = [chain(RECALL, "B", analyses(f"good{i}")) for i in range(3)] + [chain(RECALL, "A", analyses("bad"))]
    rows = analyze_rows(chains)
    gold_rows = rows[0::2]
    assert sorted(r["chosen"] for r in gold_rows) == [f"good{i} about B." for i in range(3)]
    assert {r["rejected"] for r in gold_rows} == {"bad about B."}
    assert all(r["prompt"] == formats.analyze_input(QUESTION, RECALL, "A") for r in rows[1::2])


def test_analysis_tuples_are_closed_before_the_sets_are_formed():
    """Tuples equal once closed are one tuple: here the wrong chain's tuple equals the right one's, so
    there is no rejected tuple left; an empty analysis becomes "."."""
    closed = {label: f"good about {label}." for label in QUESTION.labels}
    assert analyze_rows([chain(RECALL, "B", analyses("good")), chain(RECALL, "A", closed)]) == []
    empty = {**analyses("bad"), "B": ""}
    rows = analyze_rows([chain(RECALL, "B", analyses("good")), chain(RECALL, "B", closed), chain(RECALL, "A", empty)])
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("good about B.", "."), ("good about A.", "bad about A.")]

def test_analyze_pairs_are_deterministic_per_seed():
    chains = [chain(RECALL, "B", analyses(f"good{i}")) for i in range(4)]
    chains += [chain(RECALL, "A", analyses(f"bad{i}")) for i in range(3)]
    assert analyze_rows(chains, seed=3) == analyze_rows(chains, seed=3)
    assert analyze_rows(list(reversed(chains)), seed=3) == analyze_rows(chains, seed=3)
    assert len({json.dumps(analyze_rows(chains, seed=seed)) for seed in range(10)}) > 1


HASH_SEED_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import test_reflection_pairs as t
recall = [t.chain(f"r{{i}}", "B") for i in range(6)] + [t.chain(f"w{{i}}", "A") for i in range(2)]
analyze = [t.chain(t.RECALL, "B", t.analyses(f"good{{i}}")) for i in range(2)]
analyze += [t.chain(t.RECALL, "A", t.analyses(f"bad{{i}}")) for i in range(6)]
print(json.dumps([t.recall_rows(recall, teacher=["t1", "t2"], seed=5), t.recall_rows(recall[4:], ["t1", "t2"], 5),
                  t.analyze_rows(analyze, fallback=[t.analyses("fb")], seed=5)]))
"""


def test_pairs_do_not_depend_on_the_string_hash_seed():
    """Sets of texts are ordered before sampling, so every process of a run (each with its own
    PYTHONHASHSEED) builds the same pairs from the same seed."""
    script = HASH_SEED_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    outputs = {
        subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
                       capture_output=True, text=True, check=True).stdout
        for hash_seed in range(2)
    }
    assert len(outputs) == 1


# The pool of questions and step 5's sampling (`reflection/sampling.py`), with a stand-in chain runner.

def test_the_pool_is_the_training_questions_with_teacher_rationales_then_capped():
    questions = [make_question(f"q{i}", f"Question {i}?", [("A", "yes"), ("B", "no")], "A") for i in range(5)]
    teacher = {q: (Rationale("t", {"A": "a", "B": "b"}),) for q in ("q1", "q3", "q4", "elsewhere")}
    assert [q.id for q in sampling.pair_questions(questions, teacher)] == ["q1", "q3", "q4"]
    assert [q.id for q in sampling.pair_questions(questions, teacher, max_questions=2)] == ["q1", "q3"]


class FakeRunner:
    """Step 1 replays `STEP1[question id]`; step 5 (recalls given) answers chain c right when c is even."""

    calls = []

    def __init__(self, model, vocabulary, settings, progress=None):
        self.settings = settings

    def run(self, questions, stage_type, num_chains, seed, recalls=None):
        FakeRunner.calls.append((self.settings, [q.id for q in questions], recalls))
        if recalls is None:
            return [[chain(text, prediction, analyses(text)) for text, prediction in STEP1[q.id]] for q in questions]
        return [[chain(recalls[i][c], "B" if c % 2 == 0 else "A", analyses(f"{recalls[i][c]} {q.id} {c}"))
                 for c in range(num_chains)] for i, q in enumerate(questions)]


# q1: three wrong recalls and no right one, so the teacher's one recall is the chosen side of three rows;
# q2: two right recalls, one wrong: two rows, each with its own chosen recall.
STEP1 = {"q1": [("w1", "A"), ("w2", "C"), ("w3", None)], "q2": [("r1", "B"), ("r2", "B"), ("w1", "A")]}


def sample_chunk(monkeypatch, seed=0):
    questions = [make_question(q, f"Where would you find a sofa ({q})?", [("A", "ocean"), ("B", "house"),
                                                                          ("C", "sky")], "B") for q in STEP1]
    teacher = {q.id: (Rationale("t1", analyses("teacher")),) for q in questions}
    analysed = []

    def analyze_pairs_spy(question, recall, chains, fallback, rng):
        analysed.append((question.id, recall, len(chains)))
        return analyze_pairs(question, recall, chains, fallback, rng)

    FakeRunner.calls = []
    monkeypatch.setattr(chains_module, "ChainRunner", FakeRunner)
    monkeypatch.setattr(pairs, "analyze_pairs", analyze_pairs_spy)
    rows = sampling.sample_chunk(None, None, questions, teacher, chains_module.ChainSettings(),
                                 sampling.PairSampling(num_samples=3), seed)
    return rows, analysed


def test_each_recall_pair_row_is_analysed_n_times_and_equal_recalls_pool_their_chains(monkeypatch):
    """The official analyze pass has one entry per recall-pair row: q1's teacher recall, chosen in three
    rows, gets 3 x N chains, pooled into one (question, recall) group; q2's two recalls get N each."""
    rows, analysed = sample_chunk(monkeypatch)
    (_, _, first), (step5_settings, ids, recalls) = FakeRunner.calls
    assert ids == ["q1"] * 3 + ["q2"] * 2
    assert recalls == [["t1."] * 3] * 3 + [["r1."] * 3, ["r2."] * 3]
    assert analysed == [("q1", "t1.", 9), ("q2", "r1.", 3), ("q2", "r2.", 3)]
    assert not step5_settings.analyze.greedy and step5_settings.recall.greedy and step5_settings.summarize.greedy
    assert [row["id"] for row in rows if row["stage"] == "recall"] == ["q1"] * 3 + ["q2"] * 2
    assert {row["id"] for row in rows if row["stage"] == "analyze"} == {"q1", "q2"}
    assert all(row["chosen"].endswith(".") and row["rejected"].endswith(".") for row in rows)


def test_sampled_rows_are_a_function_of_the_seed(monkeypatch):
    assert sample_chunk(monkeypatch, seed=3) == sample_chunk(monkeypatch, seed=3)
    assert len({json.dumps(sample_chunk(monkeypatch, seed)[0]) for seed in range(5)}) > 1


def test_chunks_from_older_pair_rules_are_refused(tmp_path, monkeypatch):
    """A chunk directory whose settings.json predates the recorded pair rules (sampled under the old rules:
    raw texts, every training question, one analyze pass per distinct recall) is never reused."""
    questions = [make_question("q0", "Question?", [("A", "yes"), ("B", "no")], "A")]
    settings = sampling.PairSampling(num_samples=2, chunk_size=2)
    monkeypatch.setattr(sampling, "sample_chunk", lambda *args: [])
    sampling.generate_pairs(None, None, questions, {}, str(tmp_path), chains_module.ChainSettings(), settings, 0)
    path = tmp_path / "chunks" / "settings.json"
    recorded = json.loads(path.read_text())
    assert recorded["pair_rules"] == sampling.PAIR_RULES
    write_json(str(path), {key: value for key, value in recorded.items() if key != "pair_rules"})
    with pytest.raises(ValueError, match="pair_rules"):
        sampling.generate_pairs(None, None, questions, {}, str(tmp_path), chains_module.ChainSettings(), settings, 0)
