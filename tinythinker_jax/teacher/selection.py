"""A question's label and kept rationales, chosen from its teacher samples that passed the format filters.

By default the label is the gold answer, samples judging another option correct are dropped, and
the first `samples` distinct rationales, in arrival order, are kept. Two steps of the official
post-processing (`extract_answer_reasoning` and `select_candidate`, cell 36 of the authors'
`datasets/Prompt Engineering.ipynb`) are options:

relabel_by_teacher_vote   the label is the teacher's most frequent answer, replacing the gold answer
                          when they differ (this changes a training label)
diversity_pick            rationales whose key information is more than 10 edits (Levenshtein) away
                          from every other's come first; the rest top up the pick at random
"""

import collections
import dataclasses
import itertools
import random
from typing import Optional, Sequence

from tinythinker_jax.data.records import Question, Rationale

LEVENSHTEIN_THRESHOLD = 10  # select_candidate's `threshold`: farther than this counts as diverse


@dataclasses.dataclass(frozen=True)
class Sample:
    answer: Optional[str]  # the one option the sample judges correct; None when none or several
    rationale: Rationale


@dataclasses.dataclass(frozen=True)
class Selection:
    relabel_by_teacher_vote: bool = False
    diversity_pick: bool = False


@dataclasses.dataclass(frozen=True)
class Choice:
    label: str  # the gold answer, or the teacher's vote when relabelling
    consistent: list[Rationale]  # distinct rationales of samples that agree with the label, in arrival order
    contradicting: int  # samples that judge another option, or no single option, correct
    duplicates: int  # agreeing samples identical to an earlier one


def teacher_vote(samples: Sequence[Sample]) -> Optional[str]:
    """The answer the samples give most often, or None when none gives one.

    As the notebook's `Counter(answers).most_common(1)`: a plurality wins (its comment says "> 50%",
    its code does not check), and a tie goes to the answer that was sampled first.
    """
    votes = collections.Counter(s.answer for s in samples if s.answer is not None)
    return votes.most_common(1)[0][0] if votes else None


def choose(question: Question, samples: Sequence[Sample], relabel_by_teacher_vote: bool) -> Choice:
    """The question's label and the distinct rationales that agree with it.

    Args:
        question: the question, with its gold answer.
        samples: its format-valid samples, in arrival order.
        relabel_by_teacher_vote: take the teacher's vote as the label (the gold answer when nothing votes).

    Returns:
        The label, the agreeing distinct rationales, and counts of contradicting and duplicate samples.
    """
    label = (teacher_vote(samples) if relabel_by_teacher_vote else None) or question.answer
    consistent, seen, duplicates = [], set(), 0
    for sample in samples:
        if sample.answer != label:
            continue
        identity = (sample.rationale.recall, tuple(sample.rationale.analyze.items()))
        if identity in seen:
            duplicates += 1
        else:
            seen.add(identity)
            consistent.append(sample.rationale)
    contradicting = sum(sample.answer != label for sample in samples)
    return Choice(label, consistent, contradicting, duplicates)


def levenshtein(a: str, b: str, limit: Optional[int] = None) -> int:
    """The edit distance (insertions, deletions, substitutions of one character each).

    Args:
        a, b: the strings.
        limit: when given, any distance above it is returned as `limit + 1`, and found sooner: only
            cells within `limit` of the diagonal can hold a smaller value, and a row whose smallest
            value exceeds the limit bounds the distance, since every edit path crosses every row.
    """
    if len(a) < len(b):
        a, b = b, a
    limit = len(a) if limit is None else limit
    beyond = limit + 1
    if len(a) - len(b) > limit:
        return beyond
    previous = [min(j, beyond) for j in range(len(b) + 1)]
    for i, char_a in enumerate(a, 1):
        low, high = max(1, i - limit), min(len(b), i + limit)
        current = [beyond] * (len(b) + 1)
        current[0] = min(i, beyond)
        for j in range(low, high + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != b[j - 1]))
        if min(current[low - 1:high + 1]) > limit:
            return beyond
        previous = current
    return min(previous[-1], beyond)


def diversity_pick(rationales: Sequence[Rationale], k: int, rng: random.Random) -> list[Rationale]:
    """The notebook's `select_candidate`: up to k rationales, the diverse ones first.

    A rationale is diverse when its key information (recall) is more than LEVENSHTEIN_THRESHOLD
    edits from every other's. The first k diverse ones, in order, are picked; if that is fewer than
    k, `rng.sample` tops the pick up from the others, as the notebook did with `random.sample`.
    """
    texts = [r.recall for r in rationales]
    near: set[int] = set()
    for i, j in itertools.combinations(range(len(texts)), 2):
        if levenshtein(texts[i], texts[j], LEVENSHTEIN_THRESHOLD) <= LEVENSHTEIN_THRESHOLD:
            near.update((i, j))
    picked = [i for i in range(len(texts)) if i not in near][:k]
    rest = [r for i, r in enumerate(rationales) if i not in picked]
    return [rationales[i] for i in picked] + rng.sample(rest, min(k - len(picked), len(rest)))


def keep(choice: Choice, wanted: int, selection: Selection, rng: random.Random) -> list[Rationale]:
    """The rationales kept for a question: `wanted` of its consistent ones, picked as `selection` says."""
    if selection.diversity_pick:
        return diversity_pick(choice.consistent, wanted, rng)
    return choice.consistent[:wanted]
