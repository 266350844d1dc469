"""Subcommands of the `tinythinker` console command, one module each, and the argparse types they share.

The types refuse a bad count, size or sampling value while the command line is parsed, so a mistake is
one line (`cli.ArgumentParser.error`) before anything is loaded.
"""

import argparse
from typing import Callable, TypeVar

# An int for counts and sizes, a float for sampling values: each type's caller gets back what it asked for.
_Number = TypeVar("_Number", int, float)


def _number(text: str, kind: Callable[[str], _Number], what: str, accept: Callable[[_Number], bool]) -> _Number:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count or size: an integer of at least 1."""
    return _number(text, int, "a positive integer", lambda value: value >= 1)


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (e.g. top_k, where 0 keeps every token)."""
    return _number(text, int, "an integer >= 0", lambda value: value >= 0)


def fraction_below_one(text: str) -> float:
    """A share of something: a number in [0, 1)."""
    return _number(text, float, "a number in [0, 1)", lambda value: 0.0 <= value < 1.0)


def positive_int_or_all(text: str) -> int:
    """A mesh axis or process count: a positive integer, or -1 for whatever is left."""
    return _number(text, int, "a positive integer or -1", lambda value: value >= 1 or value == -1)


def non_negative_float(text: str) -> float:
    """A sampling temperature: 0 (greedy) or more."""
    return _number(text, float, "a number >= 0", lambda value: value >= 0)


def fraction(text: str) -> float:
    return _number(text, float, "a number from 0 to 1", lambda value: 0 <= value <= 1)


def probability(text: str) -> float:
    """A nucleus (top_p) mass: more than 0, at most 1."""
    return _number(text, float, "a number in (0, 1]", lambda value: 0 < value <= 1)
