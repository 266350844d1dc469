"""Few-shot exemplars for the teacher prompt: the project's own, per benchmark, or a user's file.

An exemplar file is a JSON list of `{"Q", "Options": "A. x, B. y, ...", "Key Information",
"Explanations": ["A is incorrect. Because ...", ...]}` — the shape of the TinyThinker paper's
exemplars, so its files can be passed with `--exemplars` as they are.
"""

import dataclasses
import importlib.resources

from tinythinker_jax.data.records import DataError, load_json
from tinythinker_jax.teacher import parsing

# The toy world mirrors the benchmarks' layouts, so it borrows their exemplars.
DATASET_EXEMPLARS = {
    "csqa": "csqa.json",
    "obqa": "obqa.json",
    "strategyqa": "strategyqa.json",
    "toyworld": "csqa.json",
    "toyworld_mc4": "obqa.json",
    "toyworld_yesno": "strategyqa.json",
}


@dataclasses.dataclass(frozen=True)
class Exemplar:
    """One exemplar, every text as in the file: the paper prompt reproduces the file byte for byte."""

    question: str
    options: str
    key_information: str
    explanations: tuple[str, ...]

    def reply(self) -> str:
        """The text a teacher should write for this exemplar."""
        return "\n".join([f"Key Information: {self.key_information.strip()}", "Explanations:", *self.explanations])


def _check(item: object, path: str, index: int) -> Exemplar:
    def fail(field, message):
        return DataError(path, None, f"[{index}].{field}" if field else f"[{index}]", message)

    if not isinstance(item, dict):
        raise fail(None, "expected an object")
    for field in ("Q", "Options", "Key Information"):
        if not isinstance(item.get(field), str) or not item[field].strip():
            raise fail(field, "expected a non-empty string")
    lines = item.get("Explanations")
    if not isinstance(lines, list) or not lines or not all(isinstance(line, str) for line in lines):
        raise fail("Explanations", "expected a non-empty list of strings")
    explanations = parsing.split_explanations("\n".join(lines))
    if len(explanations) != len(lines) or not all(e.text for e in explanations):
        raise fail("Explanations", "every line must read '<label> is correct|incorrect. Because <reason>'")
    labels = [e.label for e in explanations]
    if len(set(labels)) != len(labels):
        raise fail("Explanations", f"labels {labels} repeat")
    if sum(e.correct for e in explanations) != 1:
        raise fail("Explanations", "exactly one option must be correct")
    return Exemplar(item["Q"], item["Options"], item["Key Information"], tuple(lines))


def load_exemplars(path: str) -> list[Exemplar]:
    """The exemplars of a JSON list file, each checked; a DataError names the file and item of a problem."""
    items = load_json(path)
    if not isinstance(items, list) or not items:
        raise DataError(path, None, None, "expected a non-empty JSON list of exemplars")
    return [_check(item, path, index) for index, item in enumerate(items)]


def shipped_exemplars_path(dataset: str) -> str:
    if dataset not in DATASET_EXEMPLARS:
        raise ValueError(f"no shipped exemplars for {dataset!r}; pass an exemplar file")
    return str(importlib.resources.files("tinythinker_jax.teacher") / "exemplars" / DATASET_EXEMPLARS[dataset])
