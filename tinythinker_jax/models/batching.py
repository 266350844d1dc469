"""Shape buckets: pad batch size and lengths to a few sizes so jitted functions compile a few times, not
once per batch.

Lengths step by factors of 1.5 and 4/3 (8, 12, 16, 24, 32, 48, ...), so padding wastes at most a third
of a sequence; batch sizes are powers of two.
"""

from typing import Any, Callable, Iterator, Sequence

import numpy as np

MIN_LENGTH = 8


def bucket_length(length: int) -> int:
    bucket = MIN_LENGTH
    while bucket < length:
        bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket * 4 // 3
    return bucket


def bucket_batch_size(batch_size: int) -> int:
    return 1 << max(batch_size - 1, 0).bit_length()


def pad_sequences(sequences: Sequence[Sequence[int]], length: int, batch_size: int, pad_id: int = 0) -> np.ndarray:
    """[batch_size, length] int32: each sequence left-aligned, rows beyond `sequences` all padding."""
    if len(sequences) > batch_size:
        raise ValueError(f"{len(sequences)} sequences do not fit a batch of {batch_size}")
    padded = np.full((batch_size, length), pad_id, np.int32)
    for row, sequence in enumerate(sequences):
        if len(sequence) > length:
            raise ValueError(f"sequence of length {len(sequence)} does not fit length {length}")
        padded[row, : len(sequence)] = sequence
    return padded


def bucketed(sequences: Sequence[Sequence[int]], pad_id: int = 0, max_length: int | None = None) -> np.ndarray:
    """`sequences` padded to the bucket of their count and of their longest length.

    `max_length`, the longest a caller ever sends (e.g. inputs cut at 200), caps the length bucket: a batch
    at the cap pads to it rather than to the next bucket (256), which would cost a quarter more work."""
    longest = max((len(s) for s in sequences), default=1)
    length = bucket_length(longest)
    if max_length is not None:
        if longest > max_length:
            raise ValueError(f"sequence of length {longest} is longer than max_length={max_length}")
        length = min(length, max_length)
    return pad_sequences(sequences, length, bucket_batch_size(len(sequences)), pad_id)


def by_length(count: int, length_of: Callable[[int], Any], batch_size: int) -> Iterator[list[int]]:
    """The indices 0..count-1 in batches of `batch_size` (the last may be smaller), sorted by `length_of`, so
    each batch pads to a tight shape bucket; callers put each batch's results back at its indices."""
    order = sorted(range(count), key=length_of)
    for start in range(0, count, batch_size):
        yield order[start:start + batch_size]
