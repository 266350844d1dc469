"""Sends chat-completion requests to any OpenAI-compatible server, storing each answer on arrival.

Concurrency, requests-per-minute and tokens-per-minute limits keep within a provider's quota;
429, 408, 5xx, timeouts, dropped connections and bodies that are not a chat completion are retried with
exponential backoff (honouring Retry-After); other errors (a bad request) fail that request at once.

Two kinds of failure stop the whole run instead, since every other request would fail alike and a
CSQA-sized run sends 25,000: an answer that the key or the address is wrong (401, 403, 404, at the
first one), and `max_consecutive_failures` requests in a row that failed (after their retries) with no
answer in between. The sender then lets the requests in flight finish, sends nothing more, and says
why in `SendStats.stopped`; everything answered before is in the cache.
"""

import asyncio
import collections
import dataclasses
import logging
import os
import random
import time
from typing import Optional, Sequence

from tinythinker_jax.errors import UserError
from tinythinker_jax.teacher.cache import ResponseCache, normalize_completion
from tinythinker_jax.teacher.prompts import Request
from tinythinker_jax.teacher.tokens import TokenCounter

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}  # plus every 5xx
# Statuses that say the key, the model or the address is wrong: every later request would get the same.
FATAL_STATUS = {
    401: "the API key was refused; check {key_env}",
    403: "the API key may not use this model or endpoint; check {key_env} and --model",
    404: "no such model or endpoint; check --model and --base_url (an OpenAI-compatible server's /v1 address)",
}
MAX_CONSECUTIVE_FAILURES = 20
NOT_A_COMPLETION_HINT = "its replies are not chat completions; is --base_url an OpenAI-compatible /v1 address?"
OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    base_url: Optional[str] = None  # None: OpenAI itself
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    requests_per_minute: Optional[int] = None
    tokens_per_minute: Optional[int] = None
    max_retries: int = 6
    backoff_base: float = 1.0  # seconds before the first retry; doubled for each later one
    backoff_max: float = 60.0
    request_timeout: float = 120.0  # the deadline of one attempt
    max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES  # failed requests in a row that stop the run

    @property
    def server(self) -> str:
        return self.base_url or OPENAI_BASE_URL


@dataclasses.dataclass
class SendStats:
    done: int = 0
    failed: int = 0
    retried: int = 0
    tokens: int = 0
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    stopped: Optional[str] = None  # why sending stopped before every request was tried, in one line

    def add(self, other: "SendStats") -> None:
        for field in ("done", "failed", "retried", "tokens"):
            setattr(self, field, getattr(self, field) + getattr(other, field))
        self.errors.update(other.errors)
        self.stopped = self.stopped or other.stopped


class MissingApiKey(UserError):
    """No API key in the environment for a server that needs one."""


def api_key(settings: ClientSettings) -> str:
    """The key from the environment; a local server (any base_url) may run without one."""
    key = os.environ.get(settings.api_key_env)
    if key:
        return key
    if settings.base_url is None or settings.base_url.rstrip("/") == OPENAI_BASE_URL:
        raise MissingApiKey(f"set {settings.api_key_env} to your OpenAI API key "
                            "(or pass --base_url for a local server)")
    return "no-key"  # the SDK insists on a non-empty key; local servers ignore it


class RateLimiter:
    """At most `requests` requests and `tokens` tokens in any sliding window of `window` seconds."""

    def __init__(self, requests: Optional[int], tokens: Optional[int], window: float = 60.0):
        self.requests, self.tokens, self.window = requests, tokens, window
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = asyncio.Lock()

    def _fits(self, tokens: int) -> bool:
        if self.requests is not None and len(self._events) >= self.requests:
            return False
        used = sum(t for _, t in self._events)
        # A lone request larger than the whole budget still goes, or it would wait forever.
        return self.tokens is None or not self._events or used + tokens <= self.tokens

    async def acquire(self, tokens: int) -> None:
        async with self._lock:  # waiters are served in order
            while True:
                now = time.monotonic()
                while self._events and self._events[0][0] <= now - self.window:
                    self._events.popleft()
                if self._fits(tokens):
                    self._events.append((now, tokens))
                    return
                await asyncio.sleep(self._events[0][0] + self.window - now)


def retry_delay(error: Exception, attempt: int, settings: ClientSettings) -> Optional[float]:
    """Seconds to wait before retrying after `error`, or None when retrying cannot help."""
    import openai

    retry_after = 0.0
    if isinstance(error, openai.APIStatusError):
        if error.status_code not in RETRYABLE_STATUS and error.status_code < 500:
            return None
        try:
            retry_after = float(error.response.headers.get("retry-after", 0))
        except ValueError:
            pass  # an HTTP-date form: fall back to our own backoff
    elif not isinstance(error, (openai.APIConnectionError, openai.APIResponseValidationError, ValueError)):
        return None  # APITimeoutError is an APIConnectionError; ValueError is a garbled body
    backoff = settings.backoff_base * 2 ** attempt * random.uniform(0.5, 1.0)  # jitter spreads out retries
    return min(settings.backoff_max, max(backoff, retry_after))


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__} {status}" if status else type(error).__name__


def _detail(error: Exception) -> str:
    """The server's own words, when it gave any, on one short line."""
    body = getattr(error, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    text = " ".join(str(message or error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def fatal_reason(error: Exception, settings: ClientSettings) -> Optional[str]:
    """Why `error` stops the run (a wrong key, model or address), or None when it concerns one request only."""
    status = getattr(error, "status_code", None)
    if status not in FATAL_STATUS:
        return None
    hint = FATAL_STATUS[status].format(key_env=f"${settings.api_key_env}")
    return f"the teacher server {settings.server} answered {status} ({_detail(error)}): {hint}"


class _Sender:
    def __init__(self, cache: ResponseCache, settings: ClientSettings, model: str, total: int,
                 progress: Optional[bool]):
        import openai
        from tqdm import tqdm

        self.cache, self.settings = cache, settings
        self.client = openai.AsyncOpenAI(
            api_key=api_key(settings), base_url=settings.base_url,
            max_retries=0, timeout=settings.request_timeout,  # retries are ours, to count and log them
        )
        self.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self.semaphore = asyncio.Semaphore(settings.concurrency)
        self.counter = TokenCounter(model)
        self.stats = SendStats()
        # By error, since the last answer.
        self.consecutive_failures: collections.Counter[str] = collections.Counter()
        self.stopping = asyncio.Event()  # wakes requests waiting out a backoff once the run stops
        self.bar = tqdm(total=total, unit="req", desc="teacher", disable=None if progress is None else not progress)

    def _show(self) -> None:
        s = self.stats
        self.bar.set_postfix(done=s.done, failed=s.failed, retried=s.retried, tokens=s.tokens, refresh=False)

    def _stop(self, reason: str) -> None:
        if self.stats.stopped is None:
            self.stats.stopped = reason
            self.stopping.set()

    def _failed(self, request: Request, error: Exception) -> None:
        self.stats.failed += 1
        self.stats.errors[_describe(error)] += 1
        # Counted in the progress bar and the report; a line each would bury the one that says why a run stopped.
        log.info("request for question %s failed: %s", request.question_id, _describe(error))
        fatal = fatal_reason(error, self.settings)
        if fatal:
            self._stop(fatal)
            return
        self.consecutive_failures[_describe(error)] += 1
        if sum(self.consecutive_failures.values()) >= self.settings.max_consecutive_failures:
            errors = ", ".join(f"{name} x{count}" for name, count in self.consecutive_failures.most_common())
            hint = NOT_A_COMPLETION_HINT if isinstance(error, ValueError) else "is the server up?"
            self._stop(f"the teacher server {self.settings.server} failed {self.settings.max_consecutive_failures} "
                       f"requests in a row with no answer in between ({errors}; the last: {_detail(error)}): {hint}")

    def _answered(self, request: Request, response: dict) -> None:
        self.cache.put(request.key, response)
        self.stats.done += 1
        self.stats.tokens += sum(response["usage"].values())
        self.consecutive_failures.clear()

    async def _pause(self, seconds: float) -> None:
        """Waits out a backoff, or less when the run stops meanwhile."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def send(self, request: Request) -> None:
        body = request.body
        budget = self.counter.count_messages(body["messages"]) + body.get("max_tokens", 0) * body.get("n", 1)
        async with self.semaphore:
            for attempt in range(self.settings.max_retries + 1):
                if self.stopping.is_set():
                    break  # not sent: the run is stopping
                await self.limiter.acquire(budget)
                try:
                    completion = await self.client.chat.completions.create(**body)
                    response = normalize_completion(completion.model_dump())
                except Exception as error:  # classified by retry_delay; anything unexpected fails the request
                    delay = retry_delay(error, attempt, self.settings)
                    if delay is None or attempt == self.settings.max_retries:
                        self._failed(request, error)
                        break
                    self.stats.retried += 1
                    self._show()
                    await self._pause(delay)
                    continue
                self._answered(request, response)
                break
        self.bar.update(1)
        self._show()

    async def send_all(self, requests: Sequence[Request]) -> SendStats:
        try:
            await asyncio.gather(*(self.send(r) for r in requests))
        finally:
            self.bar.close()
            await self.client.close()
        return self.stats


def send_requests(
    requests: Sequence[Request], cache: ResponseCache, settings: ClientSettings, model: str,
    progress: Optional[bool] = None,
) -> SendStats:
    """Sends every request and caches each response as it arrives; failures are counted, not raised.

    A wrong key, model or address, or `settings.max_consecutive_failures` failed requests in a row, stop
    the sending early (`SendStats.stopped` says why). `progress=None` shows the bar only on a terminal."""
    async def run():
        return await _Sender(cache, settings, model, len(requests), progress).send_all(requests)

    return asyncio.run(run())
