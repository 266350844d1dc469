"""Token counts for the estimate and the tokens-per-minute limit.

tiktoken gives exact counts for OpenAI models, but only when it is installed and its encoding file
is already in its local cache (TIKTOKEN_CACHE_DIR): it would otherwise download the file, and this
code never reaches the network. Without it, counts use OpenAI's rule of thumb of about four
characters per token of English text, plus the chat format's few tokens per message.
"""

import contextlib
from typing import Any, Mapping, Sequence

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators around each chat message
TOKENS_PER_REPLY = 3  # the assistant turn's priming


@contextlib.contextmanager
def _no_downloads(tiktoken_load):
    def refuse(blobpath):
        raise OSError(f"not in the tiktoken cache, and downloads are off: {blobpath}")

    original = tiktoken_load.read_file
    tiktoken_load.read_file = refuse
    try:
        yield
    finally:
        tiktoken_load.read_file = original


def _cached_encoding(model: str):
    try:
        import tiktoken
        import tiktoken.load
        import tiktoken.model
    except ImportError:
        return None
    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return None  # not an OpenAI model: a local model has its own tokenizer
    with _no_downloads(tiktoken.load):
        try:
            return tiktoken.get_encoding(name)
        except Exception:  # a missing cache file, or a tiktoken whose internals moved
            return None


class TokenCounter:
    def __init__(self, model: str):
        self._encoding = _cached_encoding(model)
        self.method = (f"tiktoken:{self._encoding.name}" if self._encoding
                       else f"approximate:{CHARS_PER_TOKEN}_chars_per_token")

    def count_text(self, text: str) -> int:
        if self._encoding is not None:
            return len(self._encoding.encode(text, disallowed_special=()))
        return -(-len(text) // CHARS_PER_TOKEN)

    def count_messages(self, messages: Sequence[Mapping[str, Any]]) -> int:
        return sum(TOKENS_PER_MESSAGE + self.count_text(m["content"]) for m in messages) + TOKENS_PER_REPLY
