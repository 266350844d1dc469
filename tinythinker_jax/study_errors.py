"""Where a study's chains go wrong: each greedy test chain, and each preference pair self-reflection sampled, checked
stage by stage against the toy world's facts.

The toy teacher's templates make a chain checkable word by word:
- a recall is right when it states the attribute's true value (what the answer needs); apart from that, it names
  the entity's own category or another one (what a noisy teacher's rationales get wrong);
- an analysis says an option fits the facts unless it says "not" (`A zorblat is a flimber, and flimbers eat
  copper.` against `Flimbers eat copper, not sand.`), and its verdicts are right when exactly the options that
  fit the facts fit.
"""

import dataclasses
import json
import os
import re
from typing import Any, Optional, Sequence

from tinythinker_jax.data.toyworld import ToyWorld, Truth
from tinythinker_jax.reflection import sampling


@dataclasses.dataclass(frozen=True)
class ChainCheck:
    """One chain against the facts; a stage the chain's stage type lacks is None.

    Attributes:
        own_category: The recall names the entity's category and no other.
        true_value: The recall states the entity's value of the attribute asked about.
        verdicts: Every option's analysis fits exactly when the option fits the facts.
        accepts_wrong: Some option that does not fit the facts is analysed as fitting (for yes/no: a false claim
            is accepted).
        rejects_right: Some option that fits the facts is analysed as not fitting (for yes/no: a true claim is
            rejected).
        correct: The chain's answer is the gold one.
    """

    own_category: Optional[bool]
    true_value: Optional[bool]
    verdicts: Optional[bool]
    accepts_wrong: Optional[bool]
    rejects_right: Optional[bool]
    correct: bool


CHECKS = tuple(field.name for field in dataclasses.fields(ChainCheck))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _states_value(recall: str, truth: Truth) -> bool:
    return re.search(rf"\b{re.escape(truth.value)}\b", recall.lower()) is not None


def _says_fits(analysis: str) -> bool:
    return "not" not in _words(analysis)


def _verdict_right(analysis: str, label: str, truth: Truth) -> bool:
    return _says_fits(analysis) == (label in truth.fitting_labels)


def check_chain(chain: dict[str, Any], answer: str, truth: Truth, categories: Sequence[str]) -> ChainCheck:
    """Checks one chain as `predictions_<split>.jsonl` records it (`recall`, `analyses`, `prediction`).

    Args:
        chain: The chain.
        answer: The question's gold label.
        truth: The facts behind the question (`ToyWorld.truth`).
        categories: Every category of the world.

    Returns:
        The chain's check.
    """
    own_category = true_value = verdicts = accepts_wrong = rejects_right = None
    if chain["recall"] is not None:
        words = set(_words(chain["recall"]))
        named = {category for category in categories if {category, category + "s"} & words}
        own_category = named == {truth.category}
        true_value = _states_value(chain["recall"], truth)
    if chain["analyses"] is not None:
        fitting = {label: label in truth.fitting_labels for label in chain["analyses"]}
        says_fits = {label: _says_fits(text) for label, text in chain["analyses"].items()}
        accepts_wrong = any(says_fits[label] and not fitting[label] for label in fitting)
        rejects_right = any(fitting[label] and not says_fits[label] for label in fitting)
        verdicts = not (accepts_wrong or rejects_right)
    return ChainCheck(own_category, true_value, verdicts, accepts_wrong, rejects_right,
                      chain["prediction"] == answer)


def _read_rows(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):  # e.g. a kind of pair an iteration sampled none of
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_predictions(path: str, world: ToyWorld) -> dict[str, Any]:
    """Checks the first (for a greedy evaluation, the only) chain of every question in a predictions file.

    Args:
        path: A `predictions_<split>.jsonl` of the world's questions.
        world: The toy world the questions come from.

    Returns:
        `questions`; per check, the share of chains that pass it (None when the stage type lacks its stage);
        and the accuracy of the chains whose analysis verdicts are right and of those whose are wrong.
    """
    checks = [check_chain(row["chains"][0], row["answer"], world.truth(row["id"]), world.categories)
              for row in _read_rows(path)]

    def share(values: list[bool]) -> Optional[float]:
        return sum(values) / len(values) if values else None

    result: dict[str, Any] = {"questions": len(checks)}
    for name in CHECKS:
        values = [getattr(check, name) for check in checks]
        result[name] = None if None in values else share(values)
    for verdicts, key in ((True, "correct_when_verdicts_right"), (False, "correct_when_verdicts_wrong")):
        result[key] = share([check.correct for check in checks if check.verdicts is verdicts])
    return result


def _pair_text_right(stage: str, prompt: str, text: str, truth: Truth) -> bool:
    if stage == "recall":
        return _states_value(text, truth)
    option = re.search(r"For option ([A-Z]),$", prompt)  # `formats.analyze_input`'s end
    if option is None:
        raise ValueError(f"an analyze pair's prompt names no option: {prompt!r}")
    return _verdict_right(text, option.group(1), truth)


def check_pairs(pairs_dir: str, world: ToyWorld) -> dict[str, dict[str, Any]]:
    """Checks the preference pairs of one self-reflection iteration against the facts.

    A recall is right when it states the true value; an analysis when its verdict on the option of its prompt
    (`... For option X,`) is right.

    Args:
        pairs_dir: The iteration's `pairs/` directory (`recall_pairs.jsonl`, `analyze_pairs.jsonl`).
        world: The toy world the questions come from.

    Returns:
        Per kind of pair: `pairs`; the shares of pairs whose chosen and whose rejected text is right; the share
        whose chosen and rejected texts are the same, which give DPO nothing to learn; and for analyze pairs the
        share whose chosen analysis says its option fits (the verdict DPO is taught to prefer). Shares are None
        without pairs.
    """
    result = {}
    for stage in ("recall", "analyze"):
        rows = _read_rows(sampling.pairs_path(pairs_dir, stage))
        counts = {"chosen_right": 0, "rejected_right": 0, "same_texts": 0,
                  **({"chosen_fits": 0} if stage == "analyze" else {})}
        for row in rows:
            truth = world.truth(row["id"])
            counts["chosen_right"] += _pair_text_right(stage, row["prompt"], row["chosen"], truth)
            counts["rejected_right"] += _pair_text_right(stage, row["prompt"], row["rejected"], truth)
            counts["same_texts"] += row["chosen"] == row["rejected"]
            if stage == "analyze":
                counts["chosen_fits"] += _says_fits(row["chosen"])
        result[stage] = {"pairs": len(rows), **{key: count / len(rows) if rows else None
                                                for key, count in counts.items()}}
    return result
