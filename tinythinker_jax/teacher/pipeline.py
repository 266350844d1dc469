"""The teacher rounds: plan requests, send what the cache lacks, parse and filter the samples, and
give questions still short of valid samples another round with new seeds and a warmer temperature.

Everything a round sends follows from the questions, the settings and the cache, so a re-run (after
a kill, or after importing a batch) re-plans the same requests and sends only what is missing.
"""

import collections
import dataclasses
from typing import Any, Callable, Optional, Sequence

from tinythinker_jax.data.records import Question, Rationale, TeacherRecord
from tinythinker_jax.teacher import parsing, pricing
from tinythinker_jax.teacher.cache import ResponseCache
from tinythinker_jax.teacher.client import SendStats
from tinythinker_jax.teacher.prompts import Request, Sampling, plan_requests

DUPLICATE = "duplicate"  # the same rationale as an earlier sample of the question
SURPLUS = "surplus"  # valid, but the question already has all the samples it wants
FILTER_REASONS = parsing.REASONS + (DUPLICATE, SURPLUS)

Send = Callable[[Sequence[Request]], SendStats]


@dataclasses.dataclass
class Outcome:
    records: list[TeacherRecord]
    report: dict[str, Any]
    pending: list[Request]  # planned but unanswered; only when there was nothing to send them with


class _Tally:
    def __init__(self, questions: Sequence[Question], wanted: int):
        self.wanted = wanted
        self.kept: dict[str, list[Rationale]] = {q.id: [] for q in questions}
        self.seen: dict[str, set] = {q.id: set() for q in questions}
        self.filtered = collections.Counter({reason: 0 for reason in FILTER_REASONS})
        self.tokens = collections.Counter(prompt=0, completion=0)

    def short(self, questions: Sequence[Question]) -> list[Question]:
        return [q for q in questions if len(self.kept[q.id]) < self.wanted]

    def add_response(self, question: Question, response: dict[str, Any]) -> None:
        self.tokens["prompt"] += response["usage"]["prompt_tokens"]
        self.tokens["completion"] += response["usage"]["completion_tokens"]
        for choice in response["choices"]:
            try:
                rationale = parsing.parse_sample(choice["text"], choice["finish_reason"], question)
            except parsing.Rejected as rejected:
                self.filtered[rejected.reason] += 1
                continue
            identity = (rationale.recall, tuple(rationale.analyze.items()))
            if identity in self.seen[question.id]:
                self.filtered[DUPLICATE] += 1
            elif len(self.kept[question.id]) >= self.wanted:
                self.filtered[SURPLUS] += 1
            else:
                self.seen[question.id].add(identity)
                self.kept[question.id].append(rationale)


def generate(
    questions: Sequence[Question], sampling: Sampling, system: str, cache: ResponseCache,
    send: Optional[Send] = None, prices: Optional[tuple[float, float]] = None,
) -> Outcome:
    """Runs up to `sampling.rounds` rounds. Without `send`, it stops at the first round with
    unanswered requests and returns them as `pending` (what export-batch writes out)."""
    tally = _Tally(questions, sampling.samples)
    stats, pending = SendStats(), []
    planned_count = cached_count = rounds_used = 0
    for round_index in range(sampling.rounds):
        short = tally.short(questions)
        if not short:
            break
        rounds_used += 1
        planned = {q.id: plan_requests(q, sampling.samples - len(tally.kept[q.id]), round_index, system, sampling)
                   for q in short}
        requests = [r for rs in planned.values() for r in rs]
        missing = [r for r in requests if r.key not in cache]
        planned_count += len(requests)
        cached_count += len(requests) - len(missing)
        if missing and send is not None:
            stats.add(send(missing))
        for question in short:
            for request in planned[question.id]:
                if request.key in cache:
                    tally.add_response(question, cache.get(request.key))
        if send is None and missing:
            pending = missing
            break

    records = [TeacherRecord(q, tuple(tally.kept[q.id])) for q in questions if tally.kept[q.id]]
    report = {
        "model": sampling.model,
        "questions": len(questions),
        "records": len(records),
        "samples_wanted": sampling.samples,
        "samples_kept": sum(len(k) for k in tally.kept.values()),
        "rounds": rounds_used,
        "filtered": dict(tally.filtered),
        "requests": {
            "planned": planned_count,
            "from_cache": cached_count,
            "answered_now": stats.done,
            "failed": stats.failed,
            "retries": stats.retried,
            "pending": len(pending),
            "errors": dict(stats.errors),
        },
        "tokens": dict(tally.tokens),  # every response used, cached or new
        "cost_usd": pricing.cost_usd(prices, tally.tokens["prompt"], tally.tokens["completion"]),
        "failed_questions": [q.id for q in questions if not tally.kept[q.id]],
        "short_questions": [
            {"id": q.id, "samples": len(tally.kept[q.id])}
            for q in questions if 0 < len(tally.kept[q.id]) < sampling.samples
        ],
    }
    return Outcome(records, report, pending)
