"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and offline runs.

`script(body, number)` decides each reply: well-formed samples by default, or given texts, a
finish reason, an HTTP error status, a delay (to trip client timeouts) or a raw malformed body.
"""

import dataclasses
import http.server
import json
import re
import threading
import time
from typing import Any, Callable, Optional

_VERDICT_LINE_RE = re.compile(r"^([A-Z]) is (correct|incorrect)\. Because$", re.MULTILINE)


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
