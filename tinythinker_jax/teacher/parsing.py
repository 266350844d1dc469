"""One sampled teacher reply -> a Rationale, or a rejection naming the filter that dropped it.

The teacher is asked for

    Key Information: <one or two sentences>
    Explanations:
    B is correct. Because <reason>
    A is incorrect. Because <reason>
    ...

or, in the paper's prompt mode, with the first verdict on the header line
(`Explanations: B is correct. Because <reason>`); both parse alike.
Verdicts are stripped with `formats.strip_verdict` so the analyze targets match what the student
is trained on; every text is closed with `formats.close_sentence`.
"""

import dataclasses
import re
from typing import Optional

from tinythinker_jax import formats
from tinythinker_jax.data.records import Question, Rationale

TRUNCATED = "truncated"  # finish_reason == "length": the reply was cut off
NO_KEY_INFORMATION = "no_key_information"
MALFORMED = "malformed"  # an option explained twice, or a label the question does not have
MISSING_OPTION = "missing_option"
EMPTY_EXPLANATION = "empty_explanation"
CONTRADICTS_GOLD = "contradicts_gold"
FORMAT_REASONS = (TRUNCATED, NO_KEY_INFORMATION, MALFORMED, MISSING_OPTION, EMPTY_EXPLANATION)
REASONS = FORMAT_REASONS + (CONTRADICTS_GOLD,)

_KEY_INFORMATION_RE = re.compile(r"key\s+information\s*:", re.IGNORECASE)
_EXPLANATIONS_HEADER_RE = re.compile(r"^\s*explanations?\s*:", re.IGNORECASE)
# A verdict opens a line (after optional list markers); the label is case-sensitive so that
# an English "a is correct" inside a reason is not read as option A.
_VERDICT_RE = re.compile(r"^[\s*\-•]*\(?([A-Z])\)?\s+(?i:is\s+(correct|incorrect))\b", re.MULTILINE)


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclasses.dataclass(frozen=True)
class Explanation:
    label: str
    correct: bool
    text: str  # the reason alone: verdict and "Because" stripped, sentence closed


def _squash(text: str) -> str:
    return " ".join(text.split())


def split_explanations(section: str) -> list[Explanation]:
    """The verdict lines of an `Explanations:` section, in the order written."""
    matches = list(_VERDICT_RE.finditer(section))
    explanations = []
    for match, following in zip(matches, matches[1:] + [None]):
        chunk = section[match.start():following.start() if following else len(section)]
        reason = _squash(formats.strip_verdict(chunk.strip().lstrip("*-• ")))
        explanations.append(Explanation(
            label=match.group(1),
            correct=match.group(2).lower() == "correct",
            text=formats.close_sentence(reason) if reason else "",
        ))
    return explanations


def _recall_and_section(text: str) -> tuple[str, str]:
    key = _KEY_INFORMATION_RE.search(text)
    if key is None:
        raise Rejected(NO_KEY_INFORMATION, "no 'Key Information:' in the reply")
    rest = text[key.end():]
    ends = [m.start() for m in (re.search(r"explanations?\s*:", rest, re.IGNORECASE), _VERDICT_RE.search(rest)) if m]
    end = min(ends, default=len(rest))
    recall = _squash(rest[:end])
    if not recall:
        raise Rejected(NO_KEY_INFORMATION, "'Key Information:' is empty")
    return formats.close_sentence(recall), _EXPLANATIONS_HEADER_RE.sub("", rest[end:], count=1)


def read_sample(text: str, finish_reason: str | None, question: Question) -> tuple[Optional[str], Rationale]:
    """The teacher's answer and the rationale in one reply, checked for form but not against the gold label.

    Args:
        text: the reply.
        finish_reason: the choice's finish reason; "length" means the reply was cut off.
        question: the question asked, for its labels.

    Returns:
        The one option the reply judges correct (None when it judges none or several correct) and
        the rationale.

    Raises:
        Rejected: when a format filter drops the reply (any reason but CONTRADICTS_GOLD).
    """
    if finish_reason == "length":
        raise Rejected(TRUNCATED)
    recall, section = _recall_and_section(text)
    by_label: dict[str, Explanation] = {}
    for explanation in split_explanations(section):
        if explanation.label in by_label or explanation.label not in question.labels:
            raise Rejected(MALFORMED, f"option {explanation.label} is repeated or not an option")
        by_label[explanation.label] = explanation
    missing = [label for label in question.labels if label not in by_label]
    if missing:
        raise Rejected(MISSING_OPTION, f"no explanation for {missing}")
    empty = [label for label in question.labels if not by_label[label].text]
    if empty:
        raise Rejected(EMPTY_EXPLANATION, f"option {empty[0]} has no reason")
    correct = [label for label in question.labels if by_label[label].correct]
    answer = correct[0] if len(correct) == 1 else None
    return answer, Rationale(recall=recall, analyze={label: by_label[label].text for label in question.labels})


def parse_sample(text: str, finish_reason: str | None, question: Question) -> Rationale:
    """The rationale in one reply; raises Rejected when a filter drops it, CONTRADICTS_GOLD included."""
    answer, rationale = read_sample(text, finish_reason, question)
    if answer != question.answer:
        raise Rejected(CONTRADICTS_GOLD, f"the reply judges {answer or 'no single option'} correct, "
                                         f"the gold answer is {question.answer}")
    return rationale
