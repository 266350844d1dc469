"""Model checkpoints: a directory holding everything needed to rebuild, tokenize for and run the model.

    CKPT_DIR/
      t5_config.json   the T5Config fields
      spiece.model     the SentencePiece model the embedding was trained with (100 extra ids on top)
      params/          Orbax (StandardCheckpointer) tree of the float32 parameters, shaped like
                       `nnx.to_pure_dict(nnx.state(model))` of an unscanned model (`layers/<i>/...`),
                       also when the model trained with `scan_layers`

Both HF import and export go through this format, and it is what a trainer starts from
(`INITIAL_CHECKPOINT_PATH`): `restore_params` fills an abstract, possibly sharded, state.
"""

import dataclasses
import json
import os
from typing import Any, cast

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from tinythinker_jax import partitioning
from tinythinker_jax.data import locations
from tinythinker_jax.errors import UserError
from tinythinker_jax.models.t5 import T5Config, T5Transformer, abstract_model, unstack_layers, with_scan_layers

CONFIG_FILE = "t5_config.json"
VOCAB_FILE = "spiece.model"
PARAMS_DIR = "params"


class CheckpointError(UserError, ValueError):
    """A model checkpoint directory, or a vocabulary for one, that cannot be read or written as asked."""


def error_summary(error: BaseException) -> str:
    """A library error's innermost cause on one short line: Orbax wraps TensorStore's reason (the file and
    what is wrong with it) in a page of its store's spec."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_vocab_fits(num_pieces: int, config: T5Config, vocab_path: str) -> None:
    """The embedding may have spare rows (t5 pads 32100 ids to 32128), never too few."""
    needed = num_pieces + locations.EXTRA_IDS
    if needed > config.vocab_size:
        raise CheckpointError(
            f"{vocab_path} defines {num_pieces} pieces + {locations.EXTRA_IDS} extra ids = {needed} token ids, "
            f"but the model's embedding has only {config.vocab_size} rows"
        )


def read_vocabulary(vocab_path: str) -> bytes:
    """The bytes of a SentencePiece model file, local or at a URL (T5's own lives on gs://)."""
    if not locations.is_url(vocab_path):
        if not os.path.isfile(vocab_path):
            raise CheckpointError(f"{vocab_path}: vocabulary file not found")
        with open(vocab_path, "rb") as f:
            return f.read()
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(vocab_path, "rb") as f:
            return f.read()
    except Exception as e:  # tf.errors.OpError and the file systems' own: the URL cannot be read
        raise locations.VocabularyError(vocab_path, f"cannot be read ({error_summary(e)})") from e


def _sentencepiece(vocab_path: str):
    """The loaded SentencePiece model; a file that is not one is an error naming it."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(read_vocabulary(vocab_path))
    except RuntimeError as e:
        raise CheckpointError(f"{vocab_path} is not a SentencePiece model ({error_summary(e)}); the file is "
                              f"damaged or another kind of file") from e
    return processor


def sentencepiece_size(vocab_path: str) -> int:
    """The number of pieces of a SentencePiece model file; a file that is not one is an error naming it."""
    return _sentencepiece(vocab_path).get_piece_size()


def _tokenization(vocab_path: str) -> list[tuple[str, float]]:
    """What decides how a vocabulary splits text and what its ids mean: every piece and its score, by id.
    Two files can differ in bytes (the trainer's settings they record) and still tokenise alike."""
    processor = _sentencepiece(vocab_path)
    return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]


def check_checkpoint_vocabulary(ckpt_dir: str, vocabulary: str, setting: str) -> None:
    """Refuses a vocabulary given for a checkpoint that does not tokenise as the checkpoint's own
    `spiece.model` (the same pieces with the same scores) or that its embedding cannot cover: the model would
    read and write token ids it was never trained on, which decode to `⁇` without a word.

    Args:
        ckpt_dir: the model checkpoint.
        vocabulary: the SentencePiece model file given with it.
        setting: the flag or gin macro that gave `vocabulary`, for the message.

    Raises:
        CheckpointError: naming both files.
    """
    own = checked_vocab_path(ckpt_dir)  # which fits the embedding
    if _tokenization(vocabulary) != _tokenization(own):
        raise CheckpointError(
            f"{setting} {vocabulary} is not the vocabulary of {ckpt_dir} (it differs from {own}): the model "
            f"would read token ids it was not trained on and write '⁇'; point it at {own}")


def save_checkpoint(ckpt_dir: str, params: Any, config: T5Config, vocab_path: str) -> None:
    """Writes `params` (an nnx.State or its pure dict, in `config`'s layout) with `config` and a copy of
    `vocab_path`; scanned layers are written unstacked.

    Refuses to overwrite an existing checkpoint.
    """
    ckpt_dir = os.path.abspath(ckpt_dir)
    if os.path.exists(os.path.join(ckpt_dir, PARAMS_DIR)):
        raise CheckpointError(f"{ckpt_dir} already holds a checkpoint; choose an empty directory")
    vocabulary = read_vocabulary(vocab_path)
    check_vocab_fits(sentencepiece_size(vocab_path), config, vocab_path)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    if config.scan_layers:
        params = unstack_layers(params)
    os.makedirs(ckpt_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(ckpt_dir, PARAMS_DIR), params)
    if jax.process_index() == 0:  # one writer per file in a multi-host save
        with open(os.path.join(ckpt_dir, CONFIG_FILE), "w") as f:
            json.dump(config.to_json_dict(), f, indent=2)
        with open(os.path.join(ckpt_dir, VOCAB_FILE), "wb") as f:
            f.write(vocabulary)


def read_json_object(path: str, error: type[Exception], damaged: str = "") -> dict:
    """A config file's JSON object; anything else raises `error` naming the file (`damaged` ends the message)."""
    try:
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({error_summary(e)}){damaged}") from None
    if not isinstance(fields, dict):
        raise error(f"{path}: expected a JSON object")
    return fields


def load_config(ckpt_dir: str) -> T5Config:
    """The checkpoint's `T5Config`; a missing or damaged `t5_config.json` is an error naming it."""
    path = os.path.join(ckpt_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{ckpt_dir} is not a model checkpoint: {CONFIG_FILE} is missing")
    fields = read_json_object(path, CheckpointError, ": the checkpoint is damaged")
    _check_config_types(fields, path)
    try:
        return T5Config.from_json_dict(fields)
    except (TypeError, ValueError) as e:  # unknown or missing fields, an unknown feed_forward_proj or dtype
        raise CheckpointError(f"{path}: {e}") from None


def _check_config_types(fields: dict[str, Any], path: str) -> None:
    # JSON types per field type: a number in quotes would only fail deep inside the model's construction.
    accepted = {int: ((int,), "an integer"), float: ((int, float), "a number"), str: ((str,), "a string"),
                bool: ((bool,), "true or false")}
    for field in dataclasses.fields(T5Config):
        # t5.py does not postpone annotations, so each field's type is the class itself, never its name.
        value, (types, name) = fields.get(field.name), accepted[cast(type, field.type)]
        if value is not None and not isinstance(value, types):
            raise CheckpointError(f"{path}: {field.name} is {value!r}, expected {name}")


def vocab_path(ckpt_dir: str) -> str:
    return os.path.join(ckpt_dir, VOCAB_FILE)


def checked_vocab_path(ckpt_dir: str) -> str:
    """The checkpoint's `spiece.model`, checked to be there, to be a SentencePiece model and to fit the
    embedding: a vocabulary with more ids than the embedding has rows would decode to `⁇`."""
    path = vocab_path(ckpt_dir)
    if not os.path.isfile(path):
        raise CheckpointError(f"{ckpt_dir} is not a complete model checkpoint: {VOCAB_FILE} is missing; copy in "
                              f"the spiece.model the model was trained with")
    check_vocab_fits(sentencepiece_size(path), load_config(ckpt_dir), path)
    return path


def load_vocabulary(ckpt_dir: str):
    """The checkpoint's `seqio.SentencePieceVocabulary`, checked as `checked_vocab_path` checks it."""
    import seqio

    return seqio.SentencePieceVocabulary(checked_vocab_path(ckpt_dir), extra_ids=locations.EXTRA_IDS)


def restore_params(ckpt_dir: str, target: nnx.State) -> nnx.State:
    """Fills `target` (an abstract or concrete state of an unscanned model, possibly sharded) in place from the
    checkpoint."""
    abstract = partitioning.restore_target(nnx.to_pure_dict(target))
    params_dir = os.path.join(os.path.abspath(ckpt_dir), PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{ckpt_dir} is not a model checkpoint: {PARAMS_DIR}/ is missing")
    with ocp.StandardCheckpointer() as checkpointer:
        saved = _read_params(lambda: checkpointer.metadata(params_dir).item_metadata.tree, params_dir)
        _check_tree_matches(saved, abstract, ckpt_dir)
        nnx.replace_by_pure_dict(target, _read_params(lambda: checkpointer.restore(params_dir, abstract), params_dir))
    return target


def _read_params(read, params_dir: str) -> Any:
    try:
        return read()
    except Exception as e:  # Orbax raises bare Exceptions for a truncated or missing array file
        raise CheckpointError(f"{params_dir} cannot be read ({error_summary(e)}): the checkpoint is damaged or "
                              f"incomplete; copy or convert it again") from e


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
    ckpt_dir: str, *, dtype: str | None = None, config: T5Config | None = None, mesh: Mesh | None = None,
    rules: partitioning.LogicalRules | None = None,
) -> T5Transformer:
    """The checkpoint's model, sharded over `mesh` when given.

    Args:
        ckpt_dir: The model checkpoint.
        dtype: The compute dtype (default: as saved); ignored when `config` is given.
        config: How the model runs (dtype, dropout, remat, scan_layers): its shape must be the checkpoint's
            (default: the checkpoint's own config).
        mesh: The mesh to lay the parameters out on.
        rules: The logical-axis rules for `mesh` (default: the standard ones).

    Raises:
        CheckpointError: When the checkpoint cannot be read or `config` has another shape.
    """
    saved = load_config(ckpt_dir)
    if config is None:
        config = saved if dtype is None else saved.replace(dtype=dtype)
    elif config.shape() != saved.shape():
        raise CheckpointError(f"{ckpt_dir} holds a model of another shape: {saved}, not {config}")
    rules = rules or partitioning.standard_logical_axis_rules()
    graphdef, target = nnx.split(abstract_model(config.replace(scan_layers=False)))
    if mesh is not None:
        target = partitioning.abstract_sharded(target, mesh, rules)
    model = with_scan_layers(nnx.merge(graphdef, restore_params(ckpt_dir, target)), config.scan_layers)
    if mesh is not None and config.scan_layers:  # the stacked parameters laid out by their own logical axes
        partitioning.shard_model(model, mesh, rules)
    return model


def load_params_numpy(ckpt_dir: str) -> tuple[T5Config, dict[str, Any]]:
    """The config and the (unstacked) parameters as a pure dict of host numpy arrays (for export)."""
    config = load_config(ckpt_dir)
    state = restore_params(ckpt_dir, nnx.state(abstract_model(config.replace(scan_layers=False))))
    return config, jax.tree.map(np.asarray, nnx.to_pure_dict(state))
