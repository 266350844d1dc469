"""The response cache: an append-only JSONL file, one `{"key", "response"}` line per answered request.

Each line goes out in a single `write` on an O_APPEND descriptor, so a killed process leaves whole
lines plus, at worst, one torn last line, which the next open cuts off. Nothing is held back in
memory, so a kill loses only the requests still in flight.
"""

import json
import os
from typing import Any, Mapping, Optional


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
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            self._load()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        whole = data[:data.rfind(b"\n") + 1]
        if len(whole) < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(len(whole))  # the torn tail of a write cut short by a kill
        for line in whole.splitlines():
            if line.strip():
                entry = json.loads(line)
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
