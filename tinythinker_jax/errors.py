"""The one error type for mistakes a user can fix: bad input, a wrong flag or setting, a missing file.

Raised where the input is read or the setting is checked, with a message that names the file (line and
field) or the flag, says what is wrong and what to do. The `tinythinker` command catches it once, at its
top, and prints it as one line on stderr with exit code 2; `--debug` (or `TINYTHINKER_DEBUG=1`) shows
the traceback instead. Anything else that escapes is a bug, and keeps its traceback.
"""

DEBUG_ENV = "TINYTHINKER_DEBUG"
EXIT_CODE = 2


class UserError(Exception):
    """A mistake in what the user gave the program, explained in one line."""


def in_brief(names: list[str], limit: int = 5) -> str:
    """Names for a one-line message: the first `limit` of them, then how many more there are."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
