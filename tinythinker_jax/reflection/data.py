"""Preference-pair files as training arrays, and the frozen reference's log-likelihoods of them.

A pair file is JSONL, one `{"id", "prompt", "chosen", "rejected"}` per line; once the reference has
scored it, each line also carries `reference_chosen` and `reference_rejected` (summed log-likelihoods).
SeqIO tasks (`tinythinker_tasks.register_pair_task`) tokenise the files; this module turns a task into
fixed-shape arrays and scores them in one sharded pass.
"""

import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from tinythinker_jax import partitioning
from tinythinker_jax.data import lengths
from tinythinker_jax.data.records import DataError, JsonFields, iter_json_lines, write_jsonl
from tinythinker_jax.models import compiled
from tinythinker_jax.models.t5 import T5Transformer
from tinythinker_jax.reflection import losses

REFERENCE_FIELDS = ("reference_chosen", "reference_rejected")


def read_pairs(path: str, scored: bool = False) -> list[dict]:
    """The rows of a pair file, at least one, checked; `scored` also requires the reference log-likelihoods.

    Raises:
        DataError: naming the file (line and field) of a missing, empty, binary or cut-off file or a bad row.
    """
    rows = []
    for line, obj in iter_json_lines(path, allow_empty=False):  # a stage without pairs has no task, so no file read
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


def load_pair_arrays(task_name: str,
                     feature_lengths: lengths.FeatureLengths = None) -> tuple[dict[str, np.ndarray], dict]:
    """Every pair of a task, whole unless `feature_lengths` cuts it (the `targets` length applies to chosen
    and rejected): prompt, chosen and rejected token ids, the reference scores (NaN before scoring), a
    weight of 1 per real pair; and the pair set's length statistics (`lengths.stream_stats`)."""
    columns = lengths.read_task_features(task_name, ("inputs", "chosen", "rejected"), scalars=REFERENCE_FIELDS)
    inputs = lengths.fit_feature(columns["inputs"], lengths.requested_length(feature_lengths, "inputs"))
    targets = {key: lengths.fit_feature(columns[key], lengths.requested_length(feature_lengths, "targets"))
               for key in ("chosen", "rejected")}
    arrays = {
        "encoder_input_tokens": inputs.tokens,
        "chosen_targets": targets["chosen"].tokens,
        "rejected_targets": targets["rejected"].tokens,
        "pair_weights": np.ones(len(columns["inputs"]), np.float32),
    }
    for key in REFERENCE_FIELDS:
        arrays[key] = np.array(columns[key], np.float32)
    return arrays, lengths.stream_stats(inputs, list(targets.values()), feature_lengths)


_compiled_pair_log_likelihoods = compiled.jit_on_state(losses.pair_log_likelihoods)


def score_pairs(model: T5Transformer, arrays: dict[str, np.ndarray], batch_size: int,
                partitioner: partitioning.Partitioner) -> np.ndarray:
    """[pairs, 2] reference log-likelihoods, in file order: one pass, batches split over `data`.

    Every process holds all the arrays and feeds its own rows of each global batch.
    """
    graphdef, state = nnx.split(model)
    num_pairs = len(arrays["pair_weights"])
    mine = partitioner.local_rows(batch_size)
    scores = np.zeros((num_pairs, 2), np.float32)
    names = ("encoder_input_tokens", "chosen_targets", "rejected_targets")
    for start in tqdm(range(0, num_pairs, batch_size), desc="reference scoring", unit="batch",
                      disable=jax.process_index() != 0):
        rows = np.arange(start, start + batch_size) % num_pairs  # the last batch is topped up with repeats
        local = {name: arrays[name][rows][mine] for name in names}
        real = min(batch_size, num_pairs - start)
        likelihoods = _compiled_pair_log_likelihoods(graphdef, state, partitioner.global_batch(local))
        scores[start:start + real] = partitioner.to_host(likelihoods)[:real]
    return scores
