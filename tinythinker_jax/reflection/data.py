"""Preference-pair files as training arrays, and the frozen reference's log-likelihoods of them.

A pair file is JSONL, one `{"id", "prompt", "chosen", "rejected"}` per line; once the reference has
scored it, each line also carries `reference_chosen` and `reference_rejected` (summed log-likelihoods).
SeqIO tasks (`tinythinker_tasks.register_pair_task`) tokenise the files; this module turns a task into
fixed-shape arrays and scores them in one sharded pass.
"""

import functools
import math
from typing import Sequence

import jax
import numpy as np
import seqio
from flax import nnx
from tqdm import tqdm

from tinythinker_jax import partitioning
from tinythinker_jax.data.records import DataError, JsonFields, iter_json_lines, write_jsonl
from tinythinker_jax.models import batching
from tinythinker_jax.models.t5 import T5Transformer
from tinythinker_jax.reflection import losses

REFERENCE_FIELDS = ("reference_chosen", "reference_rejected")


def read_pairs(path: str, scored: bool = False) -> list[dict]:
    """The rows of a pair file, checked; `scored` also requires the reference log-likelihoods."""
    rows = []
    for line, obj in iter_json_lines(path):
        fields = JsonFields(obj, path, line)
        row = {key: fields.get(key, str) for key in ("id", "prompt")}
        for key in ("chosen", "rejected"):  # a sampled text may be empty: the student wrote only EOS
            row[key] = fields.get(key, str) if fields.obj.get(key) != "" else ""
        if scored:
            for key in REFERENCE_FIELDS:
                value = fields.get(key, float)
                if not math.isfinite(value):
                    raise fields.error(key, f"is {value}; a reference log-likelihood must be finite")
                row[key] = float(value)
        rows.append(row)
    return rows


def write_scored_pairs(path: str, rows: Sequence[dict], reference: np.ndarray) -> None:
    if len(rows) != len(reference):
        raise DataError(path, None, None, f"{len(rows)} pairs but {len(reference)} reference scores")
    write_jsonl(path, [{**row, "reference_chosen": float(c), "reference_rejected": float(r)}
                       for row, (c, r) in zip(rows, reference)])


def _padded(sequences: Sequence[np.ndarray], limit: int) -> np.ndarray:
    """[n, bucket] int32, the bucket of the longest sequence (sequences are already cut to `limit`)."""
    length = min(batching.bucket_length(max((len(s) for s in sequences), default=1)), limit)
    padded = np.zeros((len(sequences), length), np.int32)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
    return padded


def load_pair_arrays(task_name: str, feature_lengths: dict[str, int]) -> dict[str, np.ndarray]:
    """Every pair of a task: prompt, chosen and rejected token ids (cut as in SFT: EOS kept), the reference
    scores when the file has them, and a weight of 1 per real pair."""
    task = seqio.get_mixture_or_task(task_name)
    lengths = {"inputs": feature_lengths["inputs"], "chosen": feature_lengths["targets"],
               "rejected": feature_lengths["targets"]}
    examples = list(task.get_dataset(sequence_length=lengths, split="train", shuffle=False).as_numpy_iterator())
    arrays = {
        "encoder_input_tokens": _padded([e["inputs"] for e in examples], lengths["inputs"]),
        "chosen_targets": _padded([e["chosen"] for e in examples], lengths["chosen"]),
        "rejected_targets": _padded([e["rejected"] for e in examples], lengths["rejected"]),
        "pair_weights": np.ones(len(examples), np.float32),
    }
    for key in REFERENCE_FIELDS:
        arrays[key] = np.array([e[key] for e in examples], np.float32)
    return arrays


@functools.partial(jax.jit, static_argnums=0)
def _jitted_pair_log_likelihoods(graphdef, state, batch):
    return losses.pair_log_likelihoods(nnx.merge(graphdef, state), batch)


def score_pairs(model: T5Transformer, arrays: dict[str, np.ndarray], batch_size: int, mesh, rules) -> np.ndarray:
    """[pairs, 2] reference log-likelihoods, in file order: one pass, batches split over `data`.

    Every process holds all the arrays and feeds its own rows of each global batch.
    """
    graphdef, state = nnx.split(model)
    num_pairs = len(arrays["pair_weights"])
    per_process = batch_size // jax.process_count()
    mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    scores = np.zeros((num_pairs, 2), np.float32)
    names = ("encoder_input_tokens", "chosen_targets", "rejected_targets")
    for start in tqdm(range(0, num_pairs, batch_size), desc="reference scoring", unit="batch",
                      disable=jax.process_index() != 0):
        rows = np.arange(start, start + batch_size) % num_pairs  # the last batch is topped up with repeats
        local = {name: arrays[name][rows][mine] for name in names}
        batch = {name: jax.make_array_from_process_local_data(partitioning.batch_sharding(mesh, rules), value)
                 for name, value in local.items()}
        real = min(batch_size, num_pairs - start)
        scores[start:start + real] = partitioning.to_host(_jitted_pair_log_likelihoods(graphdef, state, batch))[:real]
    return scores
