"""Training streams: one seqio task's examples as fixed-shape arrays, shuffled per epoch, batched by position.

Materialising the (tokenised, length-trimmed) examples once makes the data position two integers
(epoch, batch index): checkpointing it is trivial, a resumed run gets exactly the next batch, and every
process of a multi-host run computes the same order and takes its own rows of each global batch.
"""

import numpy as np
import seqio

from tinythinker_jax.models import batching

FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


def load_task_arrays(task_name: str, feature_lengths: dict[str, int], split: str = "train") -> dict[str, np.ndarray]:
    """Every example of a task, through `seqio.EncDecFeatureConverter`, as [num_examples, length] arrays."""
    task = seqio.get_mixture_or_task(task_name)
    dataset = task.get_dataset(sequence_length=feature_lengths, split=split, shuffle=False, seed=0)
    converted = seqio.EncDecFeatureConverter(pack=False)(dataset, feature_lengths)
    chunks = list(converted.batch(8192).as_numpy_iterator())
    if not chunks:
        raise ValueError(f"task {task_name!r} has no {split} examples")
    return _trim_to_bucket({name: np.concatenate([chunk[name] for chunk in chunks]).astype(np.int32)
                            for name in FEATURES})


def _trim_to_bucket(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cuts padding columns no example uses, down to a shape bucket.

    Stages differ a lot in length (a recall prompt is a fraction of a summarize prompt), so each stream
    compiles the step once for its own bucket instead of paying for the longest stage's padding.
    """
    encoder_length = batching.bucket_length(int((arrays["encoder_input_tokens"] != 0).sum(axis=1).max()))
    decoder_length = batching.bucket_length(int((arrays["decoder_loss_weights"] != 0).sum(axis=1).max()))
    trimmed = {}
    for name, array in arrays.items():
        length = encoder_length if name == "encoder_input_tokens" else decoder_length
        trimmed[name] = np.ascontiguousarray(array[:, : min(length, array.shape[1])])
    return trimmed


class Stream:
    """Batches of one stream's examples; the last batch of an epoch is filled with rows whose
    `weight_field` is 0, which every loss ignores."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int,
                 weight_field: str = "decoder_loss_weights"):
        self.arrays, self.batch_size, self.seed, self.weight_field = arrays, batch_size, seed, weight_field
        self.num_examples = len(arrays["encoder_input_tokens"])
        self._order_epoch, self._order = None, None

    @property
    def num_batches(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            # numpy's PCG64 stream for a given seed is fixed across platforms and numpy versions.
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            self._order_epoch = epoch
        return self._order

    def batch(self, epoch: int, index: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
        """This process's rows of global batch `index` of `epoch`."""
        if self.batch_size % process_count:
            raise ValueError(f"batch size {self.batch_size} is not divisible by {process_count} processes")
        rows = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        real = len(rows)
        rows = np.concatenate([rows, np.zeros(self.batch_size - real, rows.dtype)])
        batch = {name: array[rows] for name, array in self.arrays.items()}
        batch[self.weight_field][real:] = 0  # filler rows: shapes stay fixed, the loss ignores them
        per_process = self.batch_size // process_count
        mine = slice(process_index * per_process, (process_index + 1) * per_process)
        return {name: array[mine] for name, array in batch.items()}
