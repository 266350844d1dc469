"""Training streams: one seqio task's examples as fixed-shape arrays, shuffled per epoch, batched by position.

Materialising the tokenised examples once makes the data position two integers
(epoch, batch index): checkpointing it is trivial, a resumed run gets exactly the next batch, and every
process of a multi-host run computes the same order and takes its own rows of each global batch.
A packed stream (`data/packing.py`) packs each epoch's order into rows the same way in every process, so
its position is the same two integers; only its number of batches differs from epoch to epoch.
"""

from typing import Any, Optional

import numpy as np

from tinythinker_jax.data import lengths, packing


def load_task_arrays(task_name: str, feature_lengths: lengths.FeatureLengths = None,
                     split: str = "train") -> tuple[dict[str, np.ndarray], dict]:
    """Every example of a task as [num_examples, width] arrays, laid out as `seqio.EncDecFeatureConverter`
    does, and the stream's length statistics (`lengths.stream_stats`).

    Each feature is as wide as its longest example needs, rounded up to a shape bucket: stages differ a lot
    in length (a recall prompt is a fraction of a summarize prompt), so each stream compiles the step once
    for its own bucket. `feature_lengths` may cut examples; the statistics count what was cut.
    """
    columns = lengths.read_task_features(task_name, ("inputs", "targets"), split)
    if not columns["inputs"]:
        raise ValueError(f"task {task_name!r} has no {split} examples")
    inputs = lengths.fit_feature(columns["inputs"], lengths.requested_length(feature_lengths, "inputs"))
    targets = lengths.fit_feature(columns["targets"], lengths.requested_length(feature_lengths, "targets"))
    return (lengths.encoder_decoder_arrays(inputs.tokens, targets.tokens),
            lengths.stream_stats(inputs, [targets], feature_lengths))


class Stream:
    """Batches of one stream's examples; the last batch of an epoch is filled with rows whose
    `weight_field` is 0, which every loss ignores.

    With `pack`, a batch is `batch_size` rows of the epoch's examples packed in order (`packing`), with
    segment ids, and the filler rows are all zeros.
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int,
                 weight_field: str = "decoder_loss_weights", pack: bool = False):
        self.arrays, self.batch_size, self.seed, self.weight_field = arrays, batch_size, seed, weight_field
        self.num_examples = len(arrays["encoder_input_tokens"])
        self._order_epoch: Optional[int] = None
        self._order: Optional[np.ndarray] = None
        self._lengths = packing.example_lengths(arrays) if pack else None
        self._starts_epoch: Optional[int] = None
        self._starts: Optional[np.ndarray] = None

    def layout(self) -> dict[str, Any]:
        """What decides which examples a (epoch, batch) position holds: a resumed run must have the same."""
        return {"examples": self.num_examples, "batch_size": self.batch_size, "seed": self.seed,
                "pack": self._lengths is not None}

    def num_rows(self, epoch: int) -> int:
        """Rows of `epoch`: one per example, or the packed rows of its order."""
        return self.num_examples if self._lengths is None else len(self.row_starts(epoch)) - 1

    def num_batches(self, epoch: int) -> int:
        """Batches in `epoch` (the same in every epoch unless the stream packs)."""
        return -(-self.num_rows(epoch) // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            # numpy's PCG64 stream for a given seed is fixed across platforms and numpy versions.
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            self._order_epoch = epoch
        assert self._order is not None  # set whenever _order_epoch is, and no epoch equals the initial None
        return self._order

    def row_starts(self, epoch: int) -> np.ndarray:
        """A packed stream's rows in `epoch`: where each begins in `order(epoch)` (`packing.row_starts`)."""
        assert self._lengths is not None, "only a packed stream has row starts"
        if self._starts_epoch != epoch:
            order = self.order(epoch)
            self._starts = packing.row_starts(self._lengths[0][order], self._lengths[1][order],
                                              self.arrays["encoder_input_tokens"].shape[1],
                                              self.arrays["decoder_target_tokens"].shape[1])
            self._starts_epoch = epoch
        assert self._starts is not None  # as for _order
        return self._starts

    def batch(self, epoch: int, index: int, rows_of_batch: slice = slice(None)) -> dict[str, np.ndarray]:
        """Global batch `index` of `epoch`, or its rows `rows_of_batch` (a process's, `Partitioner.local_rows`)."""
        if self._lengths is not None:
            batch = self._packed_batch(epoch, index)
        else:
            rows = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
            real = len(rows)
            rows = np.concatenate([rows, np.zeros(self.batch_size - real, rows.dtype)])
            batch = {name: array[rows] for name, array in self.arrays.items()}
            batch[self.weight_field][real:] = 0  # filler rows: shapes stay fixed, the loss ignores them
        return {name: array[rows_of_batch] for name, array in batch.items()}

    def _packed_batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        assert self._lengths is not None
        starts = self.row_starts(epoch)
        first, last = index * self.batch_size, min((index + 1) * self.batch_size, len(starts) - 1)
        examples = self.order(epoch)[starts[first]:starts[last]]
        return packing.pack_rows(self.arrays, self._lengths, examples, starts[first:last + 1] - starts[first],
                                 self.batch_size)
