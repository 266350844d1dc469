"""Pins every string of the three-stage format on hand-written examples."""

import pytest

from tinythinker_jax import formats
from tinythinker_jax.data.records import make_question

QUESTION = make_question(
    "q1", "Where do you keep milk?", [("A", "fridge"), ("B", "oven"), ("C", "shelf")], "A"
)
CONTEXT = "Where do you keep milk?\n(A) fridge (B) oven (C) shelf"
ANALYSES = {"A": "cold keeps milk fresh", "B": "an oven heats food.", "C": 'a shelf is "warm"'}


def test_options_are_built_from_structured_choices_in_label_order():
    assert formats.options_text(QUESTION.options) == "(A) fridge (B) oven (C) shelf"


def test_recall_input():
    assert formats.recall_input(QUESTION) == f"{CONTEXT}\nRecall:"


def test_analyze_input_closes_the_recall():
    assert formats.analyze_input(QUESTION, "Milk spoils when warm", "B") == (
        f"{CONTEXT}\nRecall: Milk spoils when warm.\nAnalyze: For option B,"
    )


def test_summarize_input_joins_every_option_in_label_order():
    assert formats.summarize_input(QUESTION, "Milk spoils when warm.", ANALYSES) == (
        f"{CONTEXT}\nRecall: Milk spoils when warm.\nAnalyze: For option A, cold keeps milk fresh. "
        'For option B, an oven heats food. For option C, a shelf is "warm"\nSummarize:'
    )


def test_summary_target_and_answer_regex():
    assert formats.summary_target("C") == "So the answer is option C."
    assert formats.parse_answer("So the answer is option C.") == "C"
    assert formats.parse_answer("I think the answer is option B. Really.") == "B"
    assert formats.parse_answer("So the answer is option C") is None  # the period is part of the rule
    assert formats.parse_answer("So the answer is C.") is None
    assert formats.parse_answer("") is None


@pytest.mark.parametrize("text, closed", [
    ("plain", "plain."), ("done.", "done."), ('said "hi"', 'said "hi"'), ("it's 'x'", "it's 'x'"),
    ("  padded  ", "padded."), ("question?", "question?."),
])
def test_close_sentence(text, closed):
    assert formats.close_sentence(text) == closed


def test_ablation_inputs():
    assert formats.summarize_input(QUESTION) == f"{CONTEXT}\nSummarize:"
    assert formats.summarize_input(QUESTION, recall="Milk spoils") == f"{CONTEXT}\nRecall: Milk spoils.\nSummarize:"
    assert formats.analyze_input(QUESTION, None, "A") == f"{CONTEXT}\nAnalyze: For option A,"
    assert formats.summarize_input(QUESTION, analyses=ANALYSES) == (
        f"{CONTEXT}\nAnalyze: For option A, cold keeps milk fresh. For option B, an oven heats food. "
        'For option C, a shelf is "warm"\nSummarize:'
    )


def test_stage_types():
    assert formats.stages_of("full") == ("recall", "analyze", "summarize")
    assert formats.stages_of("summarize") == ("summarize",)
    assert formats.stages_of("recall_summarize") == ("recall", "summarize")
    assert formats.stages_of("analyze_summarize") == ("analyze", "summarize")
    with pytest.raises(ValueError, match="unknown stage type"):
        formats.stages_of("recall_only")


@pytest.mark.parametrize("teacher, target", [
    ("A is correct. Because milk is kept cold.", "milk is kept cold."),
    ("B is incorrect. Because, an oven is hot.", "an oven is hot."),
    ("(C) is incorrect. because shelves are warm.", "shelves are warm."),
    ("milk is kept cold.", "milk is kept cold."),
    ("Because it is cold.", "it is cold."),
])
def test_strip_verdict(teacher, target):
    assert formats.strip_verdict(teacher) == target
