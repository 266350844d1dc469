"""Preference pairs from sampled three-stage chains (issue 5, steps 2-4 and 6-7).

Recall pairs come from the N chains sampled per question; analyze pairs from the chains sampled per
(question, chosen recall). Each row is `{"prompt", "chosen", "rejected"}`, JSON-able for `write_jsonl`.
Every prompt comes from `formats`. Every text is closed with `formats.close_sentence` before the chosen
and rejected sets are formed, as the official code reads its texts back from prompts built with that
rule: a text is what the next stage read, an empty sample becomes ".", and texts that differ only by
the closing `.` are one text.

All randomness comes from the `random.Random` passed in, and every set is sorted before it is sampled,
so the rows are a function of the chains and the seed.
"""

import random
from typing import Mapping, Sequence, TypeVar

from tinythinker_jax import formats
from tinythinker_jax.chains import Chain
from tinythinker_jax.data.records import Question, Rationale

# A closed text, or a tuple of closed analyses (one per option): hashable and sortable.
T = TypeVar("T", str, tuple[str, ...])


def _recall(chain: Chain) -> str:
    """A sampled chain's recall; the chains here ran every stage, so each has one."""
    assert chain.recall is not None, "a chain that skipped the recall stage"
    return chain.recall


def _analyses(chain: Chain) -> dict[str, str]:
    """A sampled chain's analyses by option label; the chains here ran every stage, so each has them."""
    assert chain.analyses is not None, "a chain that skipped the analyze stage"
    return chain.analyses


def _top_up(chosen: list[T], rejected: list[T], candidates: Sequence[T], rng: random.Random) -> list[T]:
    """Chosen items grown towards len(rejected) with candidates: fresh ones first, then repeats if needed.

    A candidate equal to a rejected item is never used: that pair would ask the model to prefer a text
    to itself.
    """
    missing = len(rejected) - len(chosen)
    usable = sorted(set(candidates) - set(rejected))
    if missing <= 0 or not usable:
        return chosen
    already_chosen = set(chosen)
    fresh = [c for c in usable if c not in already_chosen]
    if missing <= len(fresh):
        return chosen + rng.sample(fresh, missing)
    return chosen + fresh + rng.choices(usable, k=missing - len(fresh))


def balanced_pairs(chosen: set[T], rejected: set[T], top_up: Sequence[T], rng: random.Random) -> list[tuple[T, T]]:
    """Steps 3-4: overlap removed; no rejected -> no pairs; the shorter side grown to the longer; paired 1:1.

    More chosen: rejected resampled with replacement. More rejected: chosen topped up from `top_up` (the
    teacher's texts); if even that leaves too few chosen, the surplus rejected are dropped at random.

    Args:
        chosen: The distinct texts (or analysis tuples) that led to the gold answer.
        rejected: The distinct ones that did not.
        top_up: Where extra chosen items come from when rejected ones outnumber them.
        rng: The only source of randomness.

    Returns:
        (chosen, rejected) pairs.
    """
    both = chosen & rejected
    chosen_list, rejected_list = sorted(chosen - both), sorted(rejected - both)
    if not rejected_list:
        return []
    chosen_list = _top_up(chosen_list, rejected_list, top_up, rng)
    if len(rejected_list) < len(chosen_list):
        rejected_list += rng.choices(rejected_list, k=len(chosen_list) - len(rejected_list))
    elif len(rejected_list) > len(chosen_list):
        rejected_list = rng.sample(rejected_list, len(chosen_list))
    # Shuffled so which chosen meets which rejected does not follow their sort order.
    rng.shuffle(rejected_list)
    return list(zip(chosen_list, rejected_list))


def recall_pairs(question: Question, chains: Sequence[Chain], teacher_recalls: Sequence[str],
                 rng: random.Random) -> list[dict[str, str]]:
    """Steps 2-4 for one question's sampled chains; an unparseable summary counts as wrong.

    Args:
        question: The question the chains answered.
        chains: Its sampled chains.
        teacher_recalls: The teacher's recalls for it, the top-up of the chosen side.
        rng: The only source of randomness.

    Returns:
        Rows `{"prompt", "chosen", "rejected"}` with closed recall texts.
    """
    chosen = {formats.close_sentence(_recall(chain)) for chain in chains if chain.prediction == question.answer}
    rejected = {formats.close_sentence(_recall(chain)) for chain in chains if chain.prediction != question.answer}
    teacher = [formats.close_sentence(recall) for recall in teacher_recalls]
    prompt = formats.recall_input(question)
    return [{"prompt": prompt, "chosen": good, "rejected": bad}
            for good, bad in balanced_pairs(chosen, rejected, teacher, rng)]


def recalls_to_analyze(rows: Sequence[Mapping[str, str]]) -> list[str]:
    """Step 5's recalls: the chosen side of every one of a question's recall-pair rows, repeats included.

    The official analyze pass has one entry per recall-pair row, so a recall chosen in k rows is sampled
    k times as often as one chosen once.

    Args:
        rows: One question's recall-pair rows.

    Returns:
        Their chosen recalls, in row order.
    """
    return [row["chosen"] for row in rows]


def fallback_analyses(question: Question, recall: str, chains: Sequence[Chain],
                      teacher_rationales: Sequence[Rationale]) -> list[dict[str, str]]:
    """The analyses that went with `recall` in step 1 and reached the gold answer, else the teacher's for it.

    Args:
        question: The question.
        recall: A chosen recall, closed (as the pair rows hold it).
        chains: The question's step-1 chains.
        teacher_rationales: The teacher's rationales for the question.

    Returns:
        Analyses by option label, as they were generated or written.
    """
    recall = formats.close_sentence(recall)
    student = [dict(_analyses(chain)) for chain in chains
               if formats.close_sentence(_recall(chain)) == recall and chain.prediction == question.answer]
    if student:
        return student
    return [dict(rationale.analyze) for rationale in teacher_rationales
            if formats.close_sentence(rationale.recall) == recall]


def _analysis_tuple(question: Question, analyses: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(formats.close_sentence(analyses[label]) for label in question.labels)


def analyze_pairs(question: Question, recall: str, chains: Sequence[Chain],
                  fallback: Sequence[Mapping[str, str]], rng: random.Random) -> list[dict[str, str]]:
    """Steps 6-7 for one (question, recall): two examples per pair, for the gold option and the wrong pick.

    Chains whose summary names no option of this question are dropped: they have no wrong pick to analyse.

    Args:
        question: The question.
        recall: The chosen recall every chain started from.
        chains: Every chain sampled from it (all of its recall-pair rows' chains, pooled).
        fallback: Analyses that topped up the chosen side (`fallback_analyses`).
        rng: The only source of randomness.

    Returns:
        Rows `{"prompt", "chosen", "rejected"}` with closed analysis texts.
    """
    parsed = [chain for chain in chains if chain.prediction in question.labels]
    chosen = {_analysis_tuple(question, _analyses(c)) for c in parsed if c.prediction == question.answer}
    # The option a rejected tuple led to; the first chain wins, though with greedy summaries equal
    # tuples always lead to the same option.
    wrong_pick: dict[tuple[str, ...], str] = {}
    for chain in parsed:
        if chain.prediction != question.answer:
            assert chain.prediction is not None  # `parsed` holds only chains that name an option
            wrong_pick.setdefault(_analysis_tuple(question, _analyses(chain)), chain.prediction)
    top_up = [_analysis_tuple(question, analyses) for analyses in fallback]
    gold_index = question.labels.index(question.answer)
    rows = []
    for good, bad in balanced_pairs(chosen, set(wrong_pick), top_up, rng):
        wrong = wrong_pick[bad]
        wrong_index = question.labels.index(wrong)
        rows.append({"prompt": formats.analyze_input(question, recall, question.answer),
                     "chosen": good[gold_index], "rejected": bad[gold_index]})
        rows.append({"prompt": formats.analyze_input(question, recall, wrong),
                     "chosen": good[wrong_index], "rejected": bad[wrong_index]})
    return rows
