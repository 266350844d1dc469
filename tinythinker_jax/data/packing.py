"""Packing encoder-decoder examples into rows, as `seqio.EncDecFeatureConverter(pack=True)` packs them.

Examples are taken in the order given (a stream's shuffled epoch order) and each one goes into the current
row while both its input and its target still fit, else it starts the next row: seqio's rule
(`seqio.utils.trim_and_pack_dataset`), so a row holds consecutive examples. Nothing is cut and no example
is split across rows, since every example fits a row of the stream's widths on its own.

A packed example keeps its own tokens, its decoder input included (its targets shifted right from the
start id 0, as `EncDecFeatureConverter` shifts each packed segment), and gets the segment id 1, 2, ... of
its place in the row (0 is padding). The model keeps attention within a segment, and T5's relative position
bias sees only offsets within an example, so each packed example gets exactly the logits it has alone and
no position features are needed.

Only lengths are needed to decide the rows (`row_starts`), so a stream decides an epoch's rows without
copying tokens, and builds only the rows of the batch it is asked for (`pack_rows`).
"""

import numpy as np

ENCODER_FEATURES = ("encoder_input_tokens",)
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
SEGMENT_IDS = {"encoder": "encoder_segment_ids", "decoder": "decoder_segment_ids"}


def example_lengths(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every example's input and target length: its tokens before the padding (a token id is never 0).

    Args:
        arrays: The stream's `EncDecFeatureConverter(pack=False)` arrays, each [num_examples, width].

    Returns:
        The input lengths and the target lengths, each [num_examples].

    Raises:
        ValueError: When `arrays` holds features other than those packing copies (pairs do not pack).
    """
    unknown = set(arrays) - set(ENCODER_FEATURES) - set(DECODER_FEATURES)
    if unknown:
        raise ValueError(f"only encoder-decoder examples pack; these features do not: {sorted(unknown)}")
    return (np.count_nonzero(arrays["encoder_input_tokens"], axis=1),
            np.count_nonzero(arrays["decoder_target_tokens"], axis=1))


def row_starts(input_lengths: np.ndarray, target_lengths: np.ndarray, input_width: int,
               target_width: int) -> np.ndarray:
    """Where each row begins, for examples packed in the given order.

    Args:
        input_lengths: The input length of each example, in packing order.
        target_lengths: The target length of each example, in the same order.
        input_width: The encoder row's width.
        target_width: The decoder row's width.

    Returns:
        [num_rows + 1] positions in that order: row r holds the examples from `starts[r]` to `starts[r + 1]`.

    Raises:
        ValueError: When an example alone is wider than a row (packing never cuts).
    """
    if len(input_lengths) and (input_lengths.max() > input_width or target_lengths.max() > target_width):
        raise ValueError(f"an example is longer than the row it would pack into ({input_width} input, "
                         f"{target_width} target tokens): packing never cuts")
    starts, used_input, used_target = [0], 0, 0
    # One pass in Python over plain ints: some 0.1 s per 100,000 examples, once per epoch.
    for position, (input_length, target_length) in enumerate(zip(input_lengths.tolist(), target_lengths.tolist())):
        if used_input + input_length > input_width or used_target + target_length > target_width:
            starts.append(position)
            used_input, used_target = 0, 0
        used_input += input_length
        used_target += target_length
    starts.append(len(input_lengths))
    return np.array(starts, np.int64)


def pack_rows(arrays: dict[str, np.ndarray], lengths: tuple[np.ndarray, np.ndarray], examples: np.ndarray,
              starts: np.ndarray, num_rows: int) -> dict[str, np.ndarray]:
    """The packed rows holding `examples`, with their segment ids; rows past the last are all zeros.

    Args:
        arrays: The stream's unpacked arrays, [num_examples, width] each.
        lengths: `example_lengths(arrays)`.
        examples: Indices into `arrays` of the examples to pack, in packing order.
        starts: Where each row begins in `examples` (`row_starts` of these examples, from 0).
        num_rows: Rows to return, at least `len(starts) - 1`; the rest are filler rows whose loss weights are 0.

    Returns:
        Every feature of `arrays`, plus `encoder_segment_ids` and `decoder_segment_ids`, each [num_rows, width]
        with the width of its side.
    """
    row_of = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    segment = np.arange(len(examples)) - starts[row_of] + 1
    packed = {}
    for side, features, side_lengths in (("encoder", ENCODER_FEATURES, lengths[0]),
                                         ("decoder", DECODER_FEATURES, lengths[1])):
        example_length = side_lengths[examples]
        before = np.cumsum(example_length) - example_length  # tokens of the examples before, in every row
        offset = before - before[starts[row_of]]  # from the start of the example's own row
        width = arrays[features[0]].shape[1]
        example, column = np.nonzero(np.arange(width)[None, :] < example_length[:, None])
        rows, columns = row_of[example], offset[example] + column
        for name in features:
            packed[name] = np.zeros((num_rows, width), arrays[name].dtype)
            packed[name][rows, columns] = arrays[name][examples[example], column]
        packed[SEGMENT_IDS[side]] = np.zeros((num_rows, width), np.int32)
        packed[SEGMENT_IDS[side]][rows, columns] = segment[example]
    return packed
