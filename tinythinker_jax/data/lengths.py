"""Feature lengths from the data: every example whole by default, and every cut counted.

The official TinyThinker code truncates no input or target (its `max_length 200` limits generation only),
and a CSQA summarize input with five analyses runs to 260 T5 tokens. So a stream is as wide as its
longest example, rounded up to its shape bucket. A length the user sets explicitly (`TASK_FEATURE_LENGTHS`)
that is shorter than an example cuts it as seqio's `append_eos_after_trim` would (the first length - 1
tokens, then EOS), and the cut is counted: runs write the counts to `data_stats.json` and print them.

Examples come from a seqio task read with `sequence_length=None` (tokenised, EOS appended, nothing
trimmed); `encoder_decoder_arrays` lays them out as `seqio.EncDecFeatureConverter(pack=False)` does.
"""

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

from tinythinker_jax.models import batching

FeatureLengths = Optional[Mapping[str, Optional[int]]]  # None (or a missing key): from the data


@dataclasses.dataclass(frozen=True)
class FittedFeature:
    """One feature of every example, padded to one width, and what fitting it cost."""

    tokens: np.ndarray  # [examples, width] int32, 0-padded
    max_tokens: int  # the longest example before any cut, EOS included
    buckets: dict[int, int]  # examples per shape bucket of their uncut length
    cut_rows: np.ndarray  # [examples] bool: this example was cut
    tokens_cut: int


def read_task_features(task_name: str, features: Sequence[str], split: str = "train",
                       scalars: Sequence[str] = ()) -> dict[str, list]:
    """Every example of a task, whole: each of `features` as a list of int32 token arrays (EOS included),
    each of `scalars` as a list of numbers, in the source's order."""
    # Imported here: the layout helpers below also serve benchmarks on images without seqio or TensorFlow.
    import seqio

    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, seed=0)
    dataset = dataset.map(lambda example: {name: example[name] for name in (*features, *scalars)})
    columns: dict[str, list] = {name: [] for name in (*features, *scalars)}
    # Ragged batches (numpy object arrays of rows): one host transfer per 8192 examples instead of one per
    # example (CSQA's analyze stream has some 340,000).
    for batch in dataset.ragged_batch(8192).as_numpy_iterator():
        for name in features:
            columns[name] += [row.astype(np.int32) for row in batch[name]]
        for name in scalars:
            columns[name] += list(batch[name])
    return columns


def fit_feature(sequences: Sequence[np.ndarray], requested: Optional[int], eos_id: int = 1) -> FittedFeature:
    """Pads `sequences` to the bucket of the longest, or cuts them to `requested` when that is shorter.

    Args:
      sequences: token ids per example, each ending in EOS.
      requested: the user's explicit length, or None to take every example whole.
      eos_id: the id a cut sequence ends with.

    Returns:
      The padded [examples, width] array and the length statistics. The width is the bucket of the
      longest (cut) example, and never more than `requested`.
    """
    lengths = np.array([len(s) for s in sequences], np.int64)
    if requested is not None and requested < 2:
        raise ValueError(f"a feature length of {requested} leaves no room for a token and EOS")
    limit = int(lengths.max(initial=1)) if requested is None else requested
    cut_rows = lengths > limit
    width = batching.bucket_length(int(np.minimum(lengths, limit).max(initial=1)))
    if requested is not None:
        width = min(width, requested)
    tokens = np.zeros((len(sequences), width), np.int32)
    for row, sequence in enumerate(sequences):
        if cut_rows[row]:
            sequence = np.append(sequence[: limit - 1], np.int32(eos_id))
        tokens[row, : len(sequence)] = sequence
    buckets: dict[int, int] = {}
    for length in lengths:
        bucket = batching.bucket_length(int(length))
        buckets[bucket] = buckets.get(bucket, 0) + 1
    return FittedFeature(tokens, int(lengths.max(initial=0)), dict(sorted(buckets.items())), cut_rows,
                         int((lengths - limit)[cut_rows].sum()))


def encoder_decoder_arrays(inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of `seqio.EncDecFeatureConverter(pack=False)`: the decoder reads the targets shifted
    right by one, starting from 0 (T5's decoder start id), and every real target token has weight 1."""
    decoder_inputs = np.zeros_like(targets)
    decoder_inputs[:, 1:] = targets[:, :-1]
    return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": targets, "decoder_loss_weights": (targets != 0).astype(np.int32)}


def stream_stats(inputs: FittedFeature, targets: Sequence[FittedFeature],
                 requested: FeatureLengths) -> dict:
    """One stream's entry in `data_stats.json`; `targets` is one feature, or chosen and rejected for pairs."""
    cut = inputs.cut_rows.copy()
    for target in targets:
        cut |= target.cut_rows
    return {
        "examples": int(len(cut)),
        "max_input_tokens": inputs.max_tokens,
        "max_target_tokens": max(target.max_tokens for target in targets),
        "input_length": int(inputs.tokens.shape[1]),
        "target_length": max(int(target.tokens.shape[1]) for target in targets),
        "input_buckets": {str(bucket): count for bucket, count in inputs.buckets.items()},
        "examples_cut": int(cut.sum()),
        "tokens_cut": inputs.tokens_cut + sum(target.tokens_cut for target in targets),
        "requested_lengths": dict(requested) if requested else None,
    }


def requested_length(lengths: FeatureLengths, feature: str) -> Optional[int]:
    """The user's explicit length for a feature (`inputs` or `targets`), or None: from the data."""
    return None if not lengths else lengths.get(feature)


def describe_cuts(name: str, stats: Mapping[str, dict]) -> list[str]:
    """One line per stream whose examples were cut, for the run's log."""
    return [f"{name} {stream}: {entry['examples_cut']} of {entry['examples']} examples cut "
            f"({entry['tokens_cut']} tokens) by TASK_FEATURE_LENGTHS={entry['requested_lengths']}; "
            f"the longest input is {entry['max_input_tokens']} tokens, the longest target "
            f"{entry['max_target_tokens']}"
            for stream, entry in stats.items() if entry["examples_cut"]]
