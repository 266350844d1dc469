"""The client against a real local OpenAI-compatible server: bodies, retries, backoff, limits, cache."""

import asyncio
import json
import time

import pytest

from tinythinker_jax.data.records import make_question
from tinythinker_jax.teacher import client
from tinythinker_jax.teacher.cache import ResponseCache
from tinythinker_jax.teacher.fake_server import Reply, ScriptedServer
from tinythinker_jax.teacher.prompts import TeacherSampling, plan_requests

QUESTIONS = [
    make_question(f"q{i}", f"Question {i}?", [("A", "one"), ("B", "two")], "AB"[i % 2]) for i in range(4)
]
SAMPLING = TeacherSampling(model="local-model", samples=2, choices_per_request=2)


def _requests(questions=QUESTIONS):
    return [r for q in questions for r in plan_requests(q, 2, 0, "SYSTEM", SAMPLING)]


def _send(server, requests, cache, **settings):
    defaults = dict(base_url=server.base_url, backoff_base=0.01, request_timeout=5.0)
    return client.send_requests(requests, cache, client.ClientSettings(**{**defaults, **settings}), "local-model",
                                progress=False)


def _arrival_gaps(times):
    return [later - earlier for earlier, later in zip(times, times[1:])]


def test_request_bodies_and_key_reach_the_server_and_responses_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-test-secret")
    requests = _requests()
    with ScriptedServer() as server, ResponseCache(str(tmp_path / "cache.jsonl")) as cache:
        stats = _send(server, requests, cache, api_key_env="MY_TEACHER_KEY")
    def canonical(body):
        return json.dumps(body, sort_keys=True)

    assert sorted(map(canonical, server.requests)) == sorted(canonical(r.body) for r in requests)
    assert server.requests[0].keys() == {"model", "messages", "temperature", "max_tokens", "n", "seed"}
    assert all(h["authorization"] == "Bearer sk-test-secret" for h in server.headers)
    assert (stats.done, stats.failed, stats.retried) == (4, 0, 0)
    reopened = ResponseCache(str(tmp_path / "cache.jsonl"))
    assert len(reopened) == 4
    response = reopened.get(requests[0].key)
    assert [c["finish_reason"] for c in response["choices"]] == ["stop", "stop"]
    assert response["choices"][0]["text"].startswith("Key Information:")
    assert response["usage"]["prompt_tokens"] > 0
    assert "sk-test-secret" not in (tmp_path / "cache.jsonl").read_text()


def test_429_and_500_are_retried_with_exponential_backoff(tmp_path):
    times = []

    def script(body, number):
        times.append(time.monotonic())
        return Reply(status=[429, 500, 503, 200][number])

    with ScriptedServer(script) as server, ResponseCache(str(tmp_path / "c.jsonl")) as cache:
        stats = _send(server, _requests()[:1], cache, backoff_base=0.05)
        assert _requests()[0].key in cache
    assert (stats.done, stats.retried, stats.failed) == (1, 3, 0)
    gaps = _arrival_gaps(times)
    # Jittered waits lie in [0.5, 1] x 0.05 x 2^attempt.
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05 and gaps[2] >= 0.1


def test_retry_after_header_is_honoured(tmp_path):
    times = []

    def script(body, number):
        times.append(time.monotonic())
        return Reply(status=429, headers={"Retry-After": "0.4"}) if number == 0 else Reply()

    with ScriptedServer(script) as server, ResponseCache(str(tmp_path / "c.jsonl")) as cache:
        stats = _send(server, _requests()[:1], cache, backoff_base=0.001)
    assert stats.done == 1 and _arrival_gaps(times)[0] >= 0.4


def test_timeouts_are_retried(tmp_path):
    def script(body, number):
        return Reply(delay=4.0) if number == 0 else Reply()

    # A 1 s timeout: a loaded machine (the suite runs on two workers) can take 0.3 s to answer the fast reply.
    with ScriptedServer(script) as server, ResponseCache(str(tmp_path / "c.jsonl")) as cache:
        started = time.monotonic()
        stats = _send(server, _requests()[:1], cache, request_timeout=1.0)
        assert time.monotonic() - started < 3.0  # the slow attempt was abandoned, not waited for
    assert (stats.done, stats.retried) == (1, 1)
    assert len(server.requests) == 2


@pytest.mark.parametrize("raw", [b'{"choices": [{"index": 0, "mess', b'{"object": "chat.completion"}'])
def test_malformed_response_body_is_retried(tmp_path, raw):
    def script(body, number):
        return Reply(raw=raw) if number == 0 else Reply()

    with ScriptedServer(script) as server, ResponseCache(str(tmp_path / "c.jsonl")) as cache:
        stats = _send(server, _requests()[:1], cache)
    assert (stats.done, stats.retried, stats.failed) == (1, 1, 0)


def test_client_errors_fail_at_once_and_exhausted_retries_fail(tmp_path):
    def script(body, number):
        return Reply(status=400) if body["messages"][1]["content"].startswith("Q: Question 0?") else Reply(status=500)

    with ScriptedServer(script) as server, ResponseCache(str(tmp_path / "c.jsonl")) as cache:
        stats = _send(server, _requests(QUESTIONS[:2]), cache, max_retries=2)
        assert len(cache) == 0
    assert (stats.done, stats.failed, stats.retried) == (0, 2, 2)
    assert stats.errors == {"BadRequestError 400": 1, "InternalServerError 500": 1}
    assert len(server.requests) == 1 + 3


def test_concurrency_limit(tmp_path):
    times = []

    def script(body, number):
        times.append(time.monotonic())
        return Reply(delay=0.5)

    with ScriptedServer(script) as server, ResponseCache(str(tmp_path / "c.jsonl")) as cache:
        stats = _send(server, _requests(), cache, concurrency=2)
    times.sort()
    assert stats.done == 4
    assert times[1] - times[0] < 0.4 and times[2] - times[0] >= 0.45


def test_rate_limiter_caps_requests_and_tokens_per_window():
    async def timed(limiter, token_counts):
        started = time.monotonic()
        for tokens in token_counts:
            await limiter.acquire(tokens)
        return time.monotonic() - started

    assert asyncio.run(timed(client.RateLimiter(2, None, window=0.4), [1] * 5)) >= 0.8
    assert asyncio.run(timed(client.RateLimiter(None, 100, window=0.4), [60, 60, 60])) >= 0.8
    # Too big for the budget: it goes alone.
    assert asyncio.run(timed(client.RateLimiter(None, 100, window=0.4), [500])) < 0.3
    assert asyncio.run(timed(client.RateLimiter(10, 1000, window=0.4), [60] * 5)) < 0.3


def test_missing_key_is_an_error_for_openai_but_not_for_a_local_server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(client.MissingApiKey, match="OPENAI_API_KEY"):
        client.api_key(client.ClientSettings())
    assert client.api_key(client.ClientSettings(base_url="http://127.0.0.1:9/v1"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert client.api_key(client.ClientSettings()) == "sk-x"


def test_cache_cuts_a_torn_last_line_and_keeps_appending(tmp_path):
    path = tmp_path / "c.jsonl"
    with ResponseCache(str(path)) as cache:
        cache.put("k1", {"v": 1})
        cache.put("k2", {"v": 2})
    with open(path, "a") as f:
        f.write('{"key": "k3", "respo')  # a kill in the middle of a write
    with ResponseCache(str(path)) as cache:
        assert len(cache) == 2 and "k3" not in cache
        cache.put("k3", {"v": 3})
    with ResponseCache(str(path)) as cache:
        assert [cache.get(k) for k in ("k1", "k2", "k3")] == [{"v": 1}, {"v": 2}, {"v": 3}]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_wrong_key_model_or_address_stops_sending_at_once(tmp_path, status):
    with ScriptedServer(lambda body, number: Reply(status=status)) as server, \
            ResponseCache(str(tmp_path / "c.jsonl")) as cache:
        stats = _send(server, _requests(), cache, concurrency=1)
    assert len(server.requests) == 1 and (stats.failed, stats.retried) == (1, 0)
    assert stats.stopped.startswith(f"the teacher server {server.base_url} answered {status} (scripted {status})")


def test_failures_in_a_row_stop_sending_and_an_answer_resets_the_count(tmp_path):
    questions = [make_question(f"q{i}", f"Question {i}?", [("A", "one"), ("B", "two")], "A") for i in range(12)]
    with ScriptedServer(lambda body, number: Reply(raw=b"<html>")) as server, \
            ResponseCache(str(tmp_path / "c.jsonl")) as cache:
        stats = _send(server, _requests(questions), cache, concurrency=1, max_retries=1, max_consecutive_failures=3)
    assert (stats.failed, len(server.requests)) == (3, 3 * 2)
    assert "failed 3 requests in a row with no answer in between (JSONDecodeError x3" in stats.stopped

    # Every other request answered: never 3 failures in a row, so every request is tried.
    alternating = lambda body, number: Reply(raw=b"<html>") if number % 2 == 0 else Reply()
    with ScriptedServer(alternating) as server, ResponseCache(str(tmp_path / "d.jsonl")) as cache:
        stats = _send(server, _requests(questions), cache, concurrency=1, max_retries=0, max_consecutive_failures=2)
    assert (stats.done, stats.failed, stats.stopped) == (6, 6, None)
