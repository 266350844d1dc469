"""The response cache: an append-only JSONL file, one `{"key", "response"}` line per answered request.

Each line goes out in a single `write` on an O_APPEND descriptor, so a killed process leaves whole
lines plus, at worst, one torn last line, which the next open cuts off. Nothing is held back in
memory, so a kill loses only the requests still in flight.
"""

import json
import os
from typing import Any, Mapping, Optional

from tinythinker_jax.data.records import DataError, decode_text, open_binary

_ENTRY_START = b'{"key"'  # how every line `put` writes begins, so also how a torn one begins
_NOT_A_CACHE = "pass the response cache of a teacher run (--cache), or a new path"


def normalize_completion(completion: Mapping[str, Any]) -> dict[str, Any]:
    """A chat-completion JSON object reduced to what the pipeline reads; raises ValueError if unusable."""
    choices = completion.get("choices")
    if not isinstance(choices, list):
        raise ValueError("chat completion has no 'choices' list")
    usage = completion.get("usage") or {}
    return {
        "model": completion.get("model"),
        "choices": [
            {"text": (choice.get("message") or {}).get("content") or "", "finish_reason": choice.get("finish_reason")}
            for choice in sorted(choices, key=lambda c: c.get("index", 0))
        ],
        "usage": {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
        },
    }


class ResponseCache:
    def __init__(self, path: str):
        self.path = path
        self._responses: dict[str, dict[str, Any]] = {}
        if os.path.exists(path):
            self._load()
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise DataError(path, None, None, f"the response cache cannot be written ({e.strerror})") from None

    def _load(self) -> None:
        """Reads every entry; cuts off a torn last line, but only after every whole line has been read, and only
        when it is the start of an entry, so a file that is not a cache is refused, never shortened."""
        with open_binary(self.path) as f:
            data = f.read()
        if b"\x00" in data:  # JSON escapes NUL, so no cache holds one
            line = data.count(b"\n", 0, data.index(b"\x00")) + 1
            raise DataError(self.path, line, None, f"holds NUL bytes, so it is a binary file; {_NOT_A_CACHE}")
        whole = data[:data.rfind(b"\n") + 1]
        tail = data[len(whole):]
        for number, raw in enumerate(whole.split(b"\n")[:-1], start=1):
            if raw.strip():
                self._add(number, decode_text(self.path, raw, first_line=number))
        if tail:
            line = whole.count(b"\n") + 1
            if not (tail.startswith(_ENTRY_START) or _ENTRY_START.startswith(tail)):
                raise DataError(self.path, line, None, f"not a response cache line; {_NOT_A_CACHE}")
            with open(self.path, "r+b") as f:
                f.truncate(len(whole))  # the torn tail of a write cut short by a kill

    def _add(self, number: int, text: str) -> None:
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(self.path, number, None, f"not valid JSON ({e.msg}); {_NOT_A_CACHE}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or not isinstance(
                entry.get("response"), dict):
            raise DataError(self.path, number, None, f'not a {{"key", "response"}} cache entry; {_NOT_A_CACHE}')
        self._responses[entry["key"]] = entry["response"]

    def __contains__(self, key: str) -> bool:
        return key in self._responses

    def __len__(self) -> int:
        return len(self._responses)

    def get(self, key: str) -> Optional[dict[str, Any]]:
        return self._responses.get(key)

    def put(self, key: str, response: dict[str, Any]) -> None:
        line = json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n"
        data = line.encode("utf-8")
        if os.write(self._fd, data) != len(data):
            raise OSError(f"{self.path}: short write (disk full?)")
        self._responses[key] = response

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
