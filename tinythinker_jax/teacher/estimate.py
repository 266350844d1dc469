"""The dry-run estimate: what the first round would send and cost, before anything is sent.

Retry rounds depend on how many samples the filters drop, so they are not included; expected
output per sample is the length of the exemplar replies, which show what a reply looks like.
"""

from typing import Any, Optional, Sequence

from tinythinker_jax.data.records import Question
from tinythinker_jax.teacher import pricing
from tinythinker_jax.teacher.cache import ResponseCache
from tinythinker_jax.teacher.exemplars import Exemplar
from tinythinker_jax.teacher.prompts import TeacherSampling, plan_requests
from tinythinker_jax.teacher.tokens import TokenCounter


def estimate(
    questions: Sequence[Question], sampling: TeacherSampling, system: str, exemplars: Sequence[Exemplar],
    cache: Optional[ResponseCache] = None, prices: Optional[tuple[float, float]] = None,
) -> dict[str, Any]:
    counter = TokenCounter(sampling.model)
    requests = [r for q in questions for r in plan_requests(q, sampling.first_round_samples, 0, system, sampling)]
    to_send = [r for r in requests if cache is None or r.key not in cache]
    input_tokens = sum(counter.count_messages(r.body["messages"]) for r in to_send)
    samples = sum(r.body["n"] for r in to_send)
    reply_tokens = [counter.count_text(e.reply()) for e in exemplars]
    per_sample = sampling.max_tokens
    if exemplars:
        per_sample = min(sampling.max_tokens, round(sum(reply_tokens) / len(reply_tokens)))
    expected_output, max_output = samples * per_sample, samples * sampling.max_tokens
    cost = pricing.cost_usd(prices, input_tokens, expected_output)
    return {
        "model": sampling.model,
        "questions": len(questions),
        "requests": len(requests),
        "requests_cached": len(requests) - len(to_send),
        "requests_to_send": len(to_send),
        "samples_to_request": samples,
        "input_tokens": input_tokens,
        "output_tokens_expected": expected_output,
        "output_tokens_max": max_output,
        "token_count_method": counter.method,
        "price_per_million_usd": list(prices) if prices else None,
        "cost_usd_expected": cost,
        "cost_usd_max": pricing.cost_usd(prices, input_tokens, max_output),
        "cost_usd_expected_batch_api": None if cost is None else round(cost * pricing.BATCH_DISCOUNT, 6),
        "note": "first round only: retry rounds for filtered samples add to this",
    }
