"""The OpenAI Batch API path: requests out as a batch input JSONL, results in as cache entries.

A batch output line is `{"custom_id", "response": {"status_code", "body": <chat completion>}, "error"}`;
the custom_id is the request's cache key, so imported answers land exactly where a live run
would have put them, and the next export holds only what is still missing (the next round).
"""

import collections
from typing import Any, Sequence

from tinythinker_jax.data.records import DataError, iter_json_lines, write_jsonl
from tinythinker_jax.teacher.cache import ResponseCache, normalize_completion
from tinythinker_jax.teacher.prompts import Request

ENDPOINT = "/v1/chat/completions"


def export_batch(path: str, requests: Sequence[Request]) -> None:
    write_jsonl(path, ({"custom_id": r.key, "method": "POST", "url": ENDPOINT, "body": r.body} for r in requests))


def import_batch(path: str, cache: ResponseCache) -> dict[str, Any]:
    """Stores every successful result; returns counts, with failed results by error code.

    Raises:
        DataError: the file is missing, empty, binary or cut off, or a line is not a batch output line.
    """
    counts = collections.Counter(imported=0, already_cached=0, failed=0)
    errors: collections.Counter[str] = collections.Counter()
    for line, entry in iter_json_lines(path, allow_empty=False):
        if not isinstance(entry, dict) or not isinstance(entry.get("custom_id"), str):
            raise DataError(path, line, "custom_id", "missing: not a batch output line")
        if "response" not in entry and "error" not in entry:
            raise DataError(path, line, "response", "missing: not a batch output line (pass the output file the "
                                                    "Batch API returned, not the input file export-batch wrote)")
        response, error = entry.get("response") or {}, entry.get("error") or {}
        if not isinstance(response, dict) or not isinstance(error, dict):
            raise DataError(path, line, "response" if not isinstance(response, dict) else "error",
                            "expected an object or null")
        if error or response.get("status_code") != 200:
            counts["failed"] += 1
            errors[str(error.get("code") or response.get("status_code"))] += 1
            continue
        if entry["custom_id"] in cache:
            counts["already_cached"] += 1
            continue
        body = response.get("body") or {}
        if not isinstance(body, dict):
            raise DataError(path, line, "response.body", "expected a chat completion object")
        try:
            cache.put(entry["custom_id"], normalize_completion(body))
        except ValueError as e:
            raise DataError(path, line, "response.body", str(e)) from None
        counts["imported"] += 1
    return {**counts, "errors": dict(errors)}
