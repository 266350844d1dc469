"""Stage examples from teacher records: one per rationale (per option for analyze), exact duplicates removed."""

import pytest

from tinythinker_jax.data import examples
from tinythinker_jax.data.records import Rationale, TeacherRecord, make_question

QUESTION = make_question("q1", "Hot or cold?", [("A", "hot"), ("B", "cold")], "B")
FIRST = Rationale("Ice is cold", {"A": "ice is not hot.", "B": "ice is cold."})
SAME_RECALL = Rationale("Ice is cold", {"A": "ice never burns.", "B": "ice is cold."})
RECORD = TeacherRecord(QUESTION, (FIRST, SAME_RECALL, FIRST))
CONTEXT = "Hot or cold?\n(A) hot (B) cold"


def pairs(rows):
    return [(row["inputs"], row["targets"]) for row in rows]


def test_recall_examples_drop_exact_duplicates():
    assert pairs(examples.stage_examples([RECORD], "recall")) == [(f"{CONTEXT}\nRecall:", "Ice is cold")]


def test_analyze_examples_one_per_option_and_distinct_pair():
    prompt = f"{CONTEXT}\nRecall: Ice is cold.\nAnalyze: For option"
    assert pairs(examples.stage_examples([RECORD], "analyze")) == [
        (f"{prompt} A,", "ice is not hot."), (f"{prompt} B,", "ice is cold."), (f"{prompt} A,", "ice never burns."),
    ]


def test_summarize_examples_differ_by_their_analyses():
    rows = examples.stage_examples([RECORD], "summarize")
    assert pairs(rows) == [
        (f"{CONTEXT}\nRecall: Ice is cold.\nAnalyze: For option A, ice is not hot. For option B, ice is cold."
         "\nSummarize:", "So the answer is option B."),
        (f"{CONTEXT}\nRecall: Ice is cold.\nAnalyze: For option A, ice never burns. For option B, ice is cold."
         "\nSummarize:", "So the answer is option B."),
    ]
    assert {row["id"] for row in rows} == {"q1"}


def test_ablation_stage_types():
    assert pairs(examples.stage_examples([RECORD], "summarize", "summarize")) == [
        (f"{CONTEXT}\nSummarize:", "So the answer is option B.")]
    assert pairs(examples.stage_examples([RECORD], "summarize", "recall_summarize")) == [
        (f"{CONTEXT}\nRecall: Ice is cold.\nSummarize:", "So the answer is option B.")]
    assert pairs(examples.stage_examples([RECORD], "analyze", "analyze_summarize")) == [
        (f"{CONTEXT}\nAnalyze: For option A,", "ice is not hot."),
        (f"{CONTEXT}\nAnalyze: For option B,", "ice is cold."),
        (f"{CONTEXT}\nAnalyze: For option A,", "ice never burns."),
    ]
    with pytest.raises(ValueError, match="not part of stage type"):
        examples.stage_examples([RECORD], "recall", "analyze_summarize")
