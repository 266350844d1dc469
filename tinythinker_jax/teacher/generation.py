"""The teacher rounds: plan requests, send what the cache lacks, parse and filter the samples, and
give questions still short of valid samples another round.

Retry rounds follow the project's rule (ask for the missing samples, with new seeds and a warmer
temperature) or, with `TeacherSampling.paper_retry`, the notebook's (ask for as many samples as failed,
doubling max_tokens after a truncated one). The label and the kept rationales are chosen by
`selection`, from every format-valid sample a question got.

Everything a round sends follows from the questions, the settings and the cache, so a re-run (after
a kill, or after importing a batch) re-plans the same requests and sends only what is missing.
"""

import collections
import dataclasses
import random
from typing import Any, Callable, Optional, Sequence

from tinythinker_jax.data.records import Question, TeacherRecord
from tinythinker_jax.teacher import parsing, pricing, selection
from tinythinker_jax.teacher.cache import ResponseCache
from tinythinker_jax.teacher.client import SendStats
from tinythinker_jax.teacher.prompts import Request, TeacherSampling, plan_requests

DUPLICATE = "duplicate"  # the same rationale as an earlier sample of the question
SURPLUS = "surplus"  # valid, but the question already has all the samples it wants
FILTER_REASONS = parsing.REASONS + (DUPLICATE, SURPLUS)

Send = Callable[[Sequence[Request]], SendStats]


@dataclasses.dataclass
class Outcome:
    records: list[TeacherRecord]
    report: dict[str, Any]
    pending: list[Request]  # planned but unanswered; only when there was nothing to send them with


@dataclasses.dataclass
class _State:
    """One question's format-valid samples, and how its latest round went (for the paper's retry rule)."""

    question: Question
    max_tokens: int
    samples: list[selection.Sample] = dataclasses.field(default_factory=list)
    failed: int = 0  # samples asked in the latest round that gave no answer: filtered, or never received
    truncated: bool = False  # a sample of the latest round was cut off


class _Tally:
    def __init__(self, questions: Sequence[Question], sampling: TeacherSampling, options: selection.Selection):
        self.sampling, self.options = sampling, options
        self.states = [_State(q, sampling.max_tokens) for q in questions]
        self.filtered = collections.Counter(dict.fromkeys(parsing.FORMAT_REASONS, 0))
        self.tokens = collections.Counter(prompt=0, completion=0)

    def choice(self, state: _State) -> selection.Choice:
        return selection.choose(state.question, state.samples, self.options.relabel_by_teacher_vote)

    def asks(self, state: _State, round_index: int) -> int:
        """How many samples the question's requests ask for this round; 0 when it asks nothing."""
        if round_index == 0:
            return self.sampling.first_round_samples
        missing = self.sampling.samples - len(self.choice(state).consistent)
        if missing <= 0:
            return 0
        return state.failed if self.sampling.paper_retry else missing

    def start_round(self, state: _State, asked: int) -> None:
        if self.sampling.paper_retry and state.truncated:
            state.max_tokens *= 2
        state.failed, state.truncated = asked, False  # each answered sample takes one off

    def add_response(self, state: _State, response: dict[str, Any]) -> None:
        self.tokens["prompt"] += response["usage"]["prompt_tokens"]
        self.tokens["completion"] += response["usage"]["completion_tokens"]
        for choice in response["choices"]:
            try:
                answer, rationale = parsing.read_sample(choice["text"], choice["finish_reason"], state.question)
            except parsing.Rejected as rejected:
                self.filtered[rejected.reason] += 1
                state.truncated |= rejected.reason == parsing.TRUNCATED
                continue
            state.samples.append(selection.Sample(answer, rationale))
            if answer is not None:  # as in the notebook, a sample naming one answer is no failure, whatever the label
                state.failed -= 1


def _records(tally: _Tally, seed: int) -> tuple[list[TeacherRecord], collections.Counter, list[dict[str, str]]]:
    """The records, the filter counts the choice adds, and the relabelled questions."""
    counts = collections.Counter({parsing.CONTRADICTS_GOLD: 0, DUPLICATE: 0, SURPLUS: 0})
    records, relabelled = [], []
    for state in tally.states:
        question, choice = state.question, tally.choice(state)
        rng = random.Random(f"{seed}:{question.id}")  # the diversity pick's top-up; the same on every re-run
        kept = selection.keep(choice, tally.sampling.samples, tally.options, rng)
        counts.update({parsing.CONTRADICTS_GOLD: choice.contradicting, DUPLICATE: choice.duplicates,
                       SURPLUS: len(choice.consistent) - len(kept)})
        if choice.label != question.answer:
            relabelled.append({"id": question.id, "gold": question.answer, "teacher": choice.label})
            question = dataclasses.replace(question, answer=choice.label)
        if kept:
            records.append(TeacherRecord(question, tuple(kept)))
    return records, counts, relabelled


def generate(
    questions: Sequence[Question], sampling: TeacherSampling, system: str, cache: ResponseCache,
    send: Optional[Send] = None, prices: Optional[tuple[float, float]] = None,
    options: selection.Selection = selection.Selection(),
) -> Outcome:
    """Runs up to `sampling.rounds` rounds and chooses each question's label and rationales.

    Args:
        questions: the questions, with their gold answers.
        sampling: the request settings and the retry rule.
        system: the system message.
        cache: the response cache; what it holds is not sent again.
        send: sends requests and caches their responses. Without it, the rounds stop at the first
            one with unanswered requests, which come back as `pending` (what export-batch writes out).
        prices: USD per million input and output tokens, for the report's cost.
        options: the optional post-processing steps of the paper.

    Returns:
        The records (questions with at least one kept rationale), the report and the pending requests.
    """
    tally = _Tally(questions, sampling, options)
    stats, pending = SendStats(), []
    planned_count = cached_count = rounds_used = 0
    for round_index in range(sampling.rounds):
        asking = [(state, n) for state in tally.states if (n := tally.asks(state, round_index)) > 0]
        if not asking:
            break
        rounds_used += 1
        planned = []
        for state, n in asking:
            tally.start_round(state, n)
            planned.append((state, plan_requests(state.question, n, round_index, system, sampling, state.max_tokens)))
        requests = [r for _, rs in planned for r in rs]
        missing = [r for r in requests if r.key not in cache]
        planned_count += len(requests)
        cached_count += len(requests) - len(missing)
        if missing and send is not None:
            stats.add(send(missing))
        for state, state_requests in planned:
            for request in state_requests:
                if (response := cache.get(request.key)) is not None:  # the cache holds no None responses
                    tally.add_response(state, response)
        if send is None and missing:
            pending = missing
            break
        if stats.stopped:
            break  # a wrong key or a dead server: later rounds would fail alike

    records, choice_counts, relabelled = _records(tally, sampling.seed)
    filtered = tally.filtered + choice_counts
    kept = {r.question.id: len(r.rationales) for r in records}
    report = {
        "model": sampling.model,
        "prompt_mode": sampling.prompt_mode,
        "post_processing": {"paper_retry": sampling.paper_retry, **dataclasses.asdict(options)},
        "questions": len(questions),
        "records": len(records),
        "samples_wanted": sampling.samples,
        "samples_kept": sum(kept.values()),
        "rounds": rounds_used,
        "filtered": {reason: filtered[reason] for reason in FILTER_REASONS},
        "requests": {
            "planned": planned_count,
            "from_cache": cached_count,
            "answered_now": stats.done,
            "failed": stats.failed,
            "retries": stats.retried,
            "pending": len(pending),
            "errors": dict(stats.errors),
            "stopped": stats.stopped,
        },
        "tokens": dict(tally.tokens),  # every response used, cached or new
        "cost_usd": pricing.cost_usd(prices, tally.tokens["prompt"], tally.tokens["completion"]),
        "relabelled": len(relabelled),  # questions whose training label is the teacher's vote, not the gold answer
        "relabelled_questions": relabelled,
        "failed_questions": [q.id for q in questions if q.id not in kept],
        "short_questions": [
            {"id": q.id, "samples": kept[q.id]} for q in questions if 0 < kept.get(q.id, 0) < sampling.samples
        ],
    }
    return Outcome(records, report, pending)


def shortfall(report: dict[str, Any], min_records_share: float) -> Optional[str]:
    """Why a run's records are not enough to train on, in one line; None when they are.

    A run falls short when sending stopped early (a wrong key, a dead server), when no question got a
    record, or when fewer than `min_records_share` of the questions did. The line gives the counts per
    failure reason: failed requests by error, and dropped samples by filter.
    """
    records, questions, requests = report["records"], report["questions"], report["requests"]
    got = f"{records}/{questions} questions got teacher records"
    if requests["stopped"]:
        why = f"{requests['stopped']}; {got}"
    elif records == 0 or records < min_records_share * questions:
        why = f"{got}, fewer than --min_records_share {min_records_share:g} asks"
    else:
        return None
    failed = ", ".join(f"{error} x{count}" for error, count in sorted(requests["errors"].items())) or "none"
    dropped = ", ".join(f"{reason} x{count}" for reason, count in report["filtered"].items() if count) or "none"
    return f"{why}; failed requests: {failed}; dropped samples: {dropped}"
