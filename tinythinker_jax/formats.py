"""The three-stage format: the single source of truth for every string the student reads or writes.

Training examples, inference inputs built from generated text, teacher-output parsing and
self-reflection prompts all call these functions, so the strings below are the only copy.

    Recall:    {question}\\n{options}\\nRecall:                          -> general knowledge
    Analyze:   ...\\nRecall: {recall}\\nAnalyze: For option X,           -> explanation for X
    Summarize: ...\\nRecall: {recall}\\nAnalyze: For option A, {a} ...\\nSummarize:
                                                                   -> So the answer is option X.

Ablation stage types drop the recall and/or analyze parts of the later inputs.
"""

import re
from typing import Mapping, Optional, Sequence

from tinythinker_jax.data.records import Option, Question

RECALL, ANALYZE, SUMMARIZE = "recall", "analyze", "summarize"
STAGES = (RECALL, ANALYZE, SUMMARIZE)  # every stage, in the chain's order

# Stage type -> the stages it trains and chains at inference, in order.
STAGE_TYPES: dict[str, tuple[str, ...]] = {
    "full": STAGES,
    "summarize": (SUMMARIZE,),
    "recall_summarize": (RECALL, SUMMARIZE),
    "analyze_summarize": (ANALYZE, SUMMARIZE),
}

_ANSWER_RE = re.compile(r"the answer is option ([A-Z])\.")
_VERDICT_RE = re.compile(r"^\s*\(?([A-Z])\)?\s+is\s+(?:correct|incorrect)\s*[.:,]?\s*", re.IGNORECASE)
_BECAUSE_RE = re.compile(r"^\s*because\b[\s,:]*", re.IGNORECASE)
_TERMINALS = (".", '"', "'")


def stages_of(stage_type: str) -> tuple[str, ...]:
    if stage_type not in STAGE_TYPES:
        raise ValueError(f"unknown stage type {stage_type!r}; expected one of {sorted(STAGE_TYPES)}")
    return STAGE_TYPES[stage_type]


def options_text(options: Sequence[Option]) -> str:
    """`(A) text (B) text ...`, from the structured choices, in the order given (label order)."""
    return " ".join(f"({o.label}) {o.text}" for o in options)


def close_sentence(text: str) -> str:
    """Generated or teacher text, ended with `.` unless it already ends in `.`, `"` or `'`."""
    text = text.strip()
    return text if text.endswith(_TERMINALS) else text + "."


def _context(question: Question) -> str:
    return f"{question.question}\n{options_text(question.options)}"


def _recall_line(recall: Optional[str]) -> str:
    return "" if recall is None else f"\nRecall: {close_sentence(recall)}"


def recall_input(question: Question) -> str:
    return f"{_context(question)}\nRecall:"


def analyze_input(question: Question, recall: Optional[str], label: str) -> str:
    """The analyze prompt for one option; `recall=None` is the analyze+summarize ablation."""
    return f"{_context(question)}{_recall_line(recall)}\nAnalyze: For option {label},"


def summarize_input(
    question: Question, recall: Optional[str] = None, analyses: Optional[Mapping[str, str]] = None
) -> str:
    """The summarize prompt; leaving out recall and/or analyses gives the ablation variants."""
    analyze_line = ""
    if analyses is not None:
        parts = [f"For option {o.label}, {close_sentence(analyses[o.label])}" for o in question.options]
        analyze_line = "\nAnalyze: " + " ".join(parts)
    return f"{_context(question)}{_recall_line(recall)}{analyze_line}\nSummarize:"


def summary_target(label: str) -> str:
    return f"So the answer is option {label}."


def parse_answer(summary: str) -> Optional[str]:
    """The predicted label, or None when the summary does not state one (which counts as wrong)."""
    match = _ANSWER_RE.search(summary)
    return match.group(1) if match else None


def strip_verdict(explanation: str) -> str:
    """Teacher text `X is correct. Because ...` -> the analyze target `...`."""
    return _BECAUSE_RE.sub("", _VERDICT_RE.sub("", explanation, count=1), count=1).strip()
