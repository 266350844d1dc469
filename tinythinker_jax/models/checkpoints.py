"""Model checkpoints: a directory holding everything needed to rebuild, tokenize for and run the model.

    CKPT_DIR/
      t5_config.json   the T5Config fields
      spiece.model     the SentencePiece model the embedding was trained with (100 extra ids on top)
      params/          Orbax (StandardCheckpointer) tree of the float32 parameters, shaped like
                       `nnx.to_pure_dict(nnx.state(model))`

Both HF import and export go through this format, and it is what a trainer starts from
(`INITIAL_CHECKPOINT_PATH`): `restore_params` fills an abstract, possibly sharded, state.
"""

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from tinythinker_jax import partitioning
from tinythinker_jax.models.t5 import T5Config, T5Transformer, abstract_model

CONFIG_FILE = "t5_config.json"
VOCAB_FILE = "spiece.model"
PARAMS_DIR = "params"
EXTRA_IDS = 100  # T5's sentinel tokens, appended after the SentencePiece pieces


class CheckpointError(ValueError):
    """A model checkpoint directory that cannot be read or written as asked."""


def check_vocab_fits(num_pieces: int, config: T5Config, vocab_path: str) -> None:
    """The embedding may have spare rows (t5 pads 32100 ids to 32128), never too few."""
    needed = num_pieces + EXTRA_IDS
    if needed > config.vocab_size:
        raise CheckpointError(
            f"{vocab_path} defines {num_pieces} pieces + {EXTRA_IDS} extra ids = {needed} token ids, "
            f"but the model's embedding has only {config.vocab_size} rows"
        )


def sentencepiece_size(vocab_path: str) -> int:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=vocab_path).get_piece_size()


def save_checkpoint(ckpt_dir: str, params: Any, config: T5Config, vocab_path: str) -> None:
    """Writes `params` (an nnx.State or its pure dict) with `config` and a copy of `vocab_path`.

    Refuses to overwrite an existing checkpoint.
    """
    ckpt_dir = os.path.abspath(ckpt_dir)
    if os.path.exists(os.path.join(ckpt_dir, PARAMS_DIR)):
        raise CheckpointError(f"{ckpt_dir} already holds a checkpoint; choose an empty directory")
    check_vocab_fits(sentencepiece_size(vocab_path), config, vocab_path)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    os.makedirs(ckpt_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(ckpt_dir, PARAMS_DIR), params)
    if jax.process_index() == 0:  # one writer per file in a multi-host save
        with open(os.path.join(ckpt_dir, CONFIG_FILE), "w") as f:
            json.dump(config.to_json_dict(), f, indent=2)
        shutil.copyfile(vocab_path, os.path.join(ckpt_dir, VOCAB_FILE))


def load_config(ckpt_dir: str) -> T5Config:
    path = os.path.join(ckpt_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"{ckpt_dir} is not a model checkpoint: {CONFIG_FILE} is missing")
    with open(path) as f:
        return T5Config.from_json_dict(json.load(f))


def vocab_path(ckpt_dir: str) -> str:
    return os.path.join(ckpt_dir, VOCAB_FILE)


def load_vocabulary(ckpt_dir: str):
    """The checkpoint's `seqio.SentencePieceVocabulary`, checked against the embedding size."""
    import seqio

    vocabulary = seqio.SentencePieceVocabulary(vocab_path(ckpt_dir), extra_ids=EXTRA_IDS)
    check_vocab_fits(vocabulary.vocab_size - EXTRA_IDS, load_config(ckpt_dir), vocab_path(ckpt_dir))
    return vocabulary


def restore_params(ckpt_dir: str, target: nnx.State) -> nnx.State:
    """Fills `target` (an abstract or concrete state, possibly sharded) in place from the checkpoint."""

    def restore_as(x: Any) -> jax.ShapeDtypeStruct:
        # Without a target sharding Orbax would reuse the saving run's devices, which a checkpoint written by
        # a multi-host job does not have here: unsharded targets land on this host's first device.
        sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    abstract = jax.tree.map(restore_as, nnx.to_pure_dict(target))
    params_dir = os.path.join(os.path.abspath(ckpt_dir), PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{ckpt_dir} is not a model checkpoint: {PARAMS_DIR}/ is missing")
    with ocp.StandardCheckpointer() as checkpointer:
        _check_tree_matches(checkpointer.metadata(params_dir).item_metadata.tree, abstract, ckpt_dir)
        nnx.replace_by_pure_dict(target, checkpointer.restore(params_dir, abstract))
    return target


def _check_tree_matches(saved: Any, expected: Any, ckpt_dir: str) -> None:
    def by_name(tree: Any) -> dict[str, tuple[int, ...]]:
        leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
        return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape) for path, leaf in leaves}

    saved_shapes, expected_shapes = by_name(saved), by_name(expected)
    problems = [f"missing {name}" for name in sorted(set(expected_shapes) - set(saved_shapes))]
    problems += [f"unexpected {name}" for name in sorted(set(saved_shapes) - set(expected_shapes))]
    problems += [
        f"{name}: checkpoint has shape {saved_shapes[name]}, model expects {shape}"
        for name, shape in sorted(expected_shapes.items())
        if name in saved_shapes and saved_shapes[name] != shape
    ]
    if problems:
        raise CheckpointError(f"{ckpt_dir} does not match its {CONFIG_FILE}: " + "; ".join(problems))


def load_model(
    ckpt_dir: str, *, dtype: str | None = None, mesh: Mesh | None = None,
    rules: partitioning.LogicalRules | None = None,
) -> T5Transformer:
    """The checkpoint's model, computing in `dtype` (default: as saved), sharded over `mesh` when given."""
    config = load_config(ckpt_dir)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    graphdef, target = nnx.split(abstract_model(config))
    if mesh is not None:
        shardings = partitioning.param_shardings(target, mesh, rules or partitioning.standard_logical_axis_rules())
        target = jax.tree.map(
            lambda s, v: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)), shardings, target,
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        )
    return nnx.merge(graphdef, restore_params(ckpt_dir, target))


def load_params_numpy(ckpt_dir: str) -> tuple[T5Config, dict[str, Any]]:
    """The config and the parameters as a pure dict of host numpy arrays (for export)."""
    config = load_config(ckpt_dir)
    state = restore_params(ckpt_dir, nnx.state(abstract_model(config)))
    return config, jax.tree.map(np.asarray, nnx.to_pure_dict(state))
