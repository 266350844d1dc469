"""Teacher prompts, exemplars and reply parsing: no server needed."""

import json

import pytest

from tinythinker_jax.data.records import DataError, make_question
from tinythinker_jax.teacher import exemplars, parsing, prompts

QUESTION = make_question("q1", "Where is a sofa kept?", [("A", "house"), ("B", "ocean"), ("C", "sky")], "A")


def test_well_formed_reply_gives_recall_and_stripped_closed_analyses():
    text = (
        "Key Information: Sofas are furniture, and furniture is kept indoors\n"
        "Explanations:\n"
        "A is correct. Because a house holds furniture,\n   such as a sofa\n"
        "- B is incorrect. Because the ocean is water.\n"
        "(C) is incorrect: because a is correct and the sky holds nothing \"solid\""
    )
    rationale = parsing.parse_sample(text, "stop", QUESTION)
    assert rationale.recall == "Sofas are furniture, and furniture is kept indoors."
    assert list(rationale.analyze) == ["A", "B", "C"]
    assert rationale.analyze == {
        "A": "a house holds furniture, such as a sofa.",
        "B": "the ocean is water.",
        "C": "a is correct and the sky holds nothing \"solid\"",  # already closed by a quote; "a is" is no verdict
    }


def test_explanations_on_the_header_line_and_out_of_order():
    text = ("key information: Furniture stays indoors. Explanations: C is incorrect. Because no.\n"
            "A is correct. Because yes\nB is incorrect. Because wet")
    rationale = parsing.parse_sample(text, "stop", QUESTION)
    assert rationale.recall == "Furniture stays indoors."
    assert rationale.analyze == {"A": "yes.", "B": "wet.", "C": "no."}


GOOD = ("Key Information: K.\nExplanations:\nA is correct. Because a.\nB is incorrect. Because b.\n"
        "C is incorrect. Because c.")


@pytest.mark.parametrize("text, finish_reason, reason", [
    (GOOD, "length", parsing.TRUNCATED),
    (GOOD.replace("Key Information: K.\n", ""), "stop", parsing.NO_KEY_INFORMATION),
    (GOOD.replace("K.", ""), "stop", parsing.NO_KEY_INFORMATION),
    ("I cannot help with that.", "stop", parsing.NO_KEY_INFORMATION),
    (GOOD.replace("\nC is incorrect. Because c.", ""), "stop", parsing.MISSING_OPTION),
    (GOOD + "\nB is incorrect. Because again.", "stop", parsing.MALFORMED),
    (GOOD + "\nD is incorrect. Because no such option.", "stop", parsing.MALFORMED),
    (GOOD.replace("B is incorrect", "B is correct"), "stop", parsing.CONTRADICTS_GOLD),
    (GOOD.replace("A is correct", "A is incorrect"), "stop", parsing.CONTRADICTS_GOLD),
    (GOOD.replace("Because b.", "Because"), "stop", parsing.EMPTY_EXPLANATION),
])
def test_bad_replies_are_rejected_with_their_reason(text, finish_reason, reason):
    assert parsing.parse_sample(GOOD, "stop", QUESTION).analyze["B"] == "b."
    with pytest.raises(parsing.Rejected) as rejected:
        parsing.parse_sample(text, finish_reason, QUESTION)
    assert rejected.value.reason == reason


def test_read_sample_gives_the_teachers_answer_in_either_layout_without_the_gold_check():
    paper_layout = ("Key Information: K.\nExplanations: B is correct. Because b.\n"
                    "A is incorrect. Because a.\nC is incorrect. Because c.")
    answer, rationale = parsing.read_sample(paper_layout, "stop", QUESTION)
    assert (answer, rationale.recall, rationale.analyze) == ("B", "K.", {"A": "a.", "B": "b.", "C": "c."})
    with pytest.raises(parsing.Rejected) as rejected:
        parsing.parse_sample(paper_layout, "stop", QUESTION)
    assert rejected.value.reason == parsing.CONTRADICTS_GOLD
    assert parsing.read_sample(GOOD, "stop", QUESTION)[0] == "A"
    assert parsing.read_sample(GOOD.replace("A is correct", "A is incorrect"), "stop", QUESTION)[0] is None
    assert parsing.read_sample(GOOD.replace("B is incorrect", "B is correct"), "stop", QUESTION)[0] is None
    with pytest.raises(parsing.Rejected) as rejected:
        parsing.read_sample(GOOD, "length", QUESTION)
    assert rejected.value.reason == parsing.TRUNCATED


@pytest.mark.parametrize("dataset, num_options", [("csqa", 5), ("obqa", 4), ("strategyqa", 2), ("toyworld_yesno", 2)])
def test_shipped_exemplars_are_valid_and_have_the_benchmarks_options(dataset, num_options):
    loaded = exemplars.load_exemplars(exemplars.shipped_exemplars_path(dataset))
    assert len(loaded) >= 4
    for exemplar in loaded:
        labels = [e.label for e in parsing.split_explanations("\n".join(exemplar.explanations))]
        assert labels == [chr(ord("A") + i) for i in range(num_options)]
        assert exemplar.options.startswith("A. ")


def _write(tmp_path, items):
    path = tmp_path / "ex.json"
    path.write_text(json.dumps(items))
    return str(path)


def test_bad_exemplar_files_are_located(tmp_path):
    good = {"Q": "q?", "Options": "A. x, B. y", "Key Information": "k.",
            "Explanations": ["A is correct. Because x.", "B is incorrect. Because y."]}
    assert len(exemplars.load_exemplars(_write(tmp_path, [good]))) == 1
    two_correct = dict(good, Explanations=["A is correct. Because x.", "B is correct. Because y."])
    with pytest.raises(DataError, match=r"\[1\]\.Explanations.*exactly one"):
        exemplars.load_exemplars(_write(tmp_path, [good, two_correct]))
    no_verdict = dict(good, Explanations=["A is correct. Because x.", "B fits badly."])
    with pytest.raises(DataError, match="correct|incorrect"):
        exemplars.load_exemplars(_write(tmp_path, [no_verdict]))
    with pytest.raises(DataError, match="Key Information"):
        exemplars.load_exemplars(_write(tmp_path, [dict(good, **{"Key Information": " "})]))


def test_exemplars_keep_the_files_text_and_the_project_prompt_strips_it(tmp_path):
    padded = {"Q": " q? ", "Options": "A. x, B. y ", "Key Information": "k. ",
              "Explanations": ["A is correct. Because x. ", "B is incorrect. Because y."]}
    loaded = exemplars.load_exemplars(_write(tmp_path, [padded]))[0]
    assert (loaded.question, loaded.options, loaded.key_information) == (" q? ", "A. x, B. y ", "k. ")
    assert loaded.explanations[0] == "A is correct. Because x. "  # the paper prompt joins the lines as they are
    assert "Q: q?\nOptions: A. x, B. y\nKey Information: k.\nExplanations:\n" in prompts.system_message([loaded])


def test_user_message_prefills_gold_first_then_the_others():
    question = make_question("q", "Pick one?", [("A", "x"), ("B", "y, z"), ("C", "w")], "B")
    assert prompts.user_message(question) == (
        "Q: Pick one?\nOptions: A. x, B. y, z, C. w\nExplanations:\n"
        "B is correct. Because\nA is incorrect. Because\nC is incorrect. Because"
    )


def test_system_message_holds_the_instruction_and_k_exemplars():
    loaded = exemplars.load_exemplars(exemplars.shipped_exemplars_path("obqa"))
    system = prompts.system_message(loaded[:2])
    assert system.startswith(prompts.INSTRUCTION)
    assert "Key Information: <one or two sentences>" in system
    assert system.count("\nQ: ") == 2 and loaded[1].explanations[-1] in system and loaded[2].question not in system


def test_plan_splits_samples_over_requests_with_round_dependent_seed_and_temperature():
    sampling = prompts.TeacherSampling(samples=8, choices_per_request=3, temperature=0.8, temperature_step=0.1, seed=7)
    first = prompts.plan_requests(QUESTION, 8, 0, "SYS", sampling)
    assert [r.body["n"] for r in first] == [3, 3, 2]
    assert [r.body["seed"] for r in first] == [7, 8, 9]
    assert {r.body["temperature"] for r in first} == {0.8}
    retry = prompts.plan_requests(QUESTION, 2, 2, "SYS", sampling)
    assert [(r.body["n"], r.body["seed"], r.body["temperature"]) for r in retry] == [(2, 2007, 1.0)]
    again = prompts.plan_requests(QUESTION, 8, 0, "SYS", sampling)
    assert [r.key for r in again] == [r.key for r in first]  # a re-run finds the same cache entries
    assert len({r.key for r in first + retry}) == 4
    assert prompts.plan_requests(QUESTION, 8, 0, "SYS2", sampling)[0].key != first[0].key
