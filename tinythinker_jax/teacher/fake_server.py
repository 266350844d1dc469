"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and offline runs.

`script(body, number)` decides each reply: well-formed samples by default, or given texts, a
finish reason, an HTTP error status, a delay (to trip client timeouts) or a raw malformed body.
`paper_length_reply` is a script whose replies are as long as the paper's exemplars.
"""

import dataclasses
import hashlib
import http.server
import json
import random
import re
import threading
import time
from typing import Any, Callable, Optional

# A pre-filled verdict line; in the paper's user message the first one follows `Explanations: `.
_VERDICT_LINE_RE = re.compile(r"^(?:Explanations: )?([A-Z]) is (correct|incorrect)\. Because$", re.MULTILINE)


@dataclasses.dataclass
class Reply:
    texts: Optional[list[str]] = None  # one per choice; None: well-formed samples for all n choices
    finish_reason: str | list[str] = "stop"  # one for all choices, or one per choice
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    raw: Optional[bytes] = None  # sent as the body instead of a chat completion


Script = Callable[[dict[str, Any], int], Reply]


def verdicts(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """The (label, correct) verdicts pre-filled in a request's user message."""
    user = body["messages"][-1]["content"]
    return [(label, verdict == "correct") for label, verdict in _VERDICT_LINE_RE.findall(user)]


def well_formed_text(body: dict[str, Any], choice: int) -> str:
    """A reply that passes every filter, distinct per seed and choice."""
    tag = f"{body.get('seed')}-{choice}"
    lines = [f"Key Information: The fact that settles the question, variant {tag}.", "Explanations:"]
    lines += [f"{label} is {'correct' if ok else 'incorrect'}. Because reason {tag} for option {label}"
              for label, ok in verdicts(body)]
    return "\n".join(lines)


# Words per `Key Information` and per explanation (verdict and "Because" left out) in the official
# exemplars, `datasets/<dataset>/prompt/<dataset>_cot.json` of github.com/shengminp/TinyThinker:
# (mean, standard deviation, min, max), keyed by the number of options (csqa 5, obqa 4, strategyqa 2).
PAPER_WORDS = {
    5: {"key_information": (21.12, 4.68, 14, 29), "explanation": (18.27, 4.16, 10, 32)},
    4: {"key_information": (21.29, 4.30, 16, 28), "explanation": (19.25, 3.57, 11, 28)},
    2: {"key_information": (17.88, 6.49, 11, 27), "explanation": (17.62, 3.62, 11, 25)},
}
# Words drawn at random: common words and some rarer ones, so that text made of them has about the
# exemplars' 1.3-1.5 T5 tokens per word. None is a verdict word ("correct", "because").
_WORDS = """the the of of to and and is is not with in in for by from as or an on be their its it that
at than but are while this can may might would which more less they them has being within near
people water home food place area location context setting role purpose features conditions environment
surface earth weather heat light energy life ground ocean forest trees flowers animals tools equipment
devices storage services state feelings distance population development survival instincts connection
specific natural typical seasonal emotional physical harmful consistent unrelated related broader
aquatic digital clinical geological atomic colder extra excess moisture intensity formation navigation
typically fully directly intentionally commonly usually often used making absorbing storing moving
focusing reflecting aligning contradicting increasing warming needing require absorb match refers
ignores impacts approaches transition replaced imbalance refrigerator blotter inkwell pollinators nectar
craters gestation commencement headlights checkout depression entertainment discontent divorce hydrogen
moss grapes hamsters predators habitat biodiversity interconnectedness calligrapher acidity spoilage""".split()


def _sentence(rng: random.Random, lengths: tuple[float, float, int, int]) -> str:
    """Lower-case words, as many as drawn from a normal distribution clipped to the exemplars' range."""
    mean, deviation, low, high = lengths
    count = min(high, max(low, round(rng.gauss(mean, deviation))))
    return " ".join(rng.choice(_WORDS) for _ in range(count)) + "."


def paper_length_text(body: dict[str, Any], choice: int) -> str:
    """A well-formed reply in the paper's layout, with the official exemplars' lengths.

    The key information and each explanation get a word count drawn from the exemplars' mean and
    spread for the question's number of options (`PAPER_WORDS`), filled with common words. The
    reply depends only on the request body and the choice index, so a re-run gets the same text;
    a request identical to an earlier one (same body) gets the same replies.

    Args:
        body: the request, whose user message holds the verdicts to explain (either prompt mode).
        choice: the index of the choice within the reply.

    Returns:
        `Key Information: ...` then `Explanations: <gold> is correct. Because ...` and one
        `<label> is incorrect. Because ...` line per other option, in the request's order.
    """
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False)
    rng = random.Random(hashlib.sha256(f"{canonical}\n{choice}".encode()).digest())
    labelled = verdicts(body)
    lengths = PAPER_WORDS.get(len(labelled), PAPER_WORDS[5])
    lines = [f"Key Information: {_sentence(rng, lengths['key_information']).capitalize()}"]
    for index, (label, correct) in enumerate(labelled):
        prefix = "Explanations: " if index == 0 else ""
        verdict = "correct" if correct else "incorrect"
        lines.append(f"{prefix}{label} is {verdict}. Because {_sentence(rng, lengths['explanation'])}")
    return "\n".join(lines)


def paper_length_reply(body: dict[str, Any], number: int) -> Reply:
    """A Script: every choice is a `paper_length_text`."""
    return Reply(texts=[paper_length_text(body, choice) for choice in range(body.get("n", 1))])


class ScriptedServer:
    def __init__(self, script: Optional[Script] = None):
        self.script = script or (lambda body, number: Reply())
        self.requests: list[dict[str, Any]] = []  # request bodies, in arrival order
        self.headers: list[dict[str, str]] = []  # their HTTP headers, in the same order
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)  # quick shutdown

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _record(self, body: dict[str, Any], headers: dict[str, str]) -> int:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            return len(self.requests) - 1

    def _completion(self, body: dict[str, Any], reply: Reply) -> bytes:
        texts = reply.texts if reply.texts is not None else [well_formed_text(body, i) for i in range(body.get("n", 1))]
        reasons = reply.finish_reason if isinstance(reply.finish_reason, list) else [reply.finish_reason] * len(texts)
        prompt_chars = sum(len(m["content"]) for m in body["messages"])
        return json.dumps({
            "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                for i, (text, reason) in enumerate(zip(texts, reasons))
            ],
            "usage": {
                "prompt_tokens": prompt_chars // 4,
                "completion_tokens": sum(len(t) // 4 for t in texts),
                "total_tokens": prompt_chars // 4 + sum(len(t) // 4 for t in texts),
            },
        }).encode()

    def _handler_class(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass  # keep test output clean

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, json.dumps({"error": {"message": "not found"}}).encode(), {})
                reply = server.script(body, server._record(body, {k.lower(): v for k, v in self.headers.items()}))
                time.sleep(reply.delay)
                if reply.raw is not None:
                    payload = reply.raw
                elif reply.status != 200:
                    payload = json.dumps({"error": {"message": f"scripted {reply.status}", "type": "scripted",
                                                    "code": str(reply.status)}}).encode()
                else:
                    payload = server._completion(body, reply)
                self._send(reply.status, payload, reply.headers)

            def _send(self, status, payload, headers):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test); nothing to answer

        return Handler
