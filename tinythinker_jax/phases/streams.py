"""Training streams: one seqio task's examples as fixed-shape arrays, shuffled per epoch, batched by position.

Materialising the tokenised examples once makes the data position two integers
(epoch, batch index): checkpointing it is trivial, a resumed run gets exactly the next batch, and every
process of a multi-host run computes the same order and takes its own rows of each global batch.
"""

from typing import Optional

import numpy as np

from tinythinker_jax.data import lengths


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
    `weight_field` is 0, which every loss ignores."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int,
                 weight_field: str = "decoder_loss_weights"):
        self.arrays, self.batch_size, self.seed, self.weight_field = arrays, batch_size, seed, weight_field
        self.num_examples = len(arrays["encoder_input_tokens"])
        self._order_epoch: Optional[int] = None
        self._order: Optional[np.ndarray] = None

    @property
    def num_batches(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            # numpy's PCG64 stream for a given seed is fixed across platforms and numpy versions.
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            self._order_epoch = epoch
        assert self._order is not None  # set whenever _order_epoch is, and no epoch equals the initial None
        return self._order

    def batch(self, epoch: int, index: int, rows_of_batch: slice = slice(None)) -> dict[str, np.ndarray]:
        """Global batch `index` of `epoch`, or its rows `rows_of_batch` (a process's, `Partitioner.local_rows`)."""
        rows = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        real = len(rows)
        rows = np.concatenate([rows, np.zeros(self.batch_size - real, rows.dtype)])
        batch = {name: array[rows] for name, array in self.arrays.items()}
        batch[self.weight_field][real:] = 0  # filler rows: shapes stay fixed, the loss ignores them
        return {name: array[rows_of_batch] for name, array in batch.items()}
