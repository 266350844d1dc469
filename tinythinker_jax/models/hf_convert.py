"""Hugging Face T5 directories <-> model checkpoints.

An HF directory holds `config.json`, the weights (`model.safetensors`, `pytorch_model.bin`, or their sharded
`*.index.json` forms) and `spiece.model`: what `google-t5/t5-*` and `google/flan-t5-*` ship and what
`T5ForConditionalGeneration.save_pretrained` writes. Import reads it without `transformers`; export writes
safetensors that `T5ForConditionalGeneration.from_pretrained` loads without missing keys.

HF stores linear layers as [out, in] matrices with heads flattened; we keep [in, out] kernels with
explicit head axes, so the mapping below transposes and reshapes, and nothing else.
"""

import json
import os
import re
import shutil
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import numpy as np
from flax import traverse_util

from tinythinker_jax.errors import UserError, in_brief
from tinythinker_jax.models import checkpoints
from tinythinker_jax.models.t5 import FEED_FORWARD_PROJS, T5Config

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
# Tensors some HF checkpoints carry that T5ForConditionalGeneration itself ignores or ties.
IGNORED_TENSORS = re.compile(
    r"(encoder|decoder)\.embed_tokens\.weight|decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight"
)


class ConversionError(UserError, ValueError):
    """A Hugging Face T5 directory this converter cannot turn into a checkpoint, or back."""


def config_from_hf(hf: Mapping[str, Any], path: str = "config.json") -> T5Config:
    """Our config from an HF `config.json`'s fields; errors start with `path`."""
    if hf.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ConversionError(f"{path}: model_type {hf.get('model_type')!r} is not one of {SUPPORTED_MODEL_TYPES}")
    if not hf.get("is_encoder_decoder", True):
        raise ConversionError(f"{path}: only encoder-decoder T5 models are supported")
    feed_forward_proj = hf.get("feed_forward_proj", "relu")
    if feed_forward_proj not in FEED_FORWARD_PROJS:
        raise ConversionError(
            f"{path}: feed_forward_proj {feed_forward_proj!r} is not supported; use one of {FEED_FORWARD_PROJS}"
        )
    sizes = ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_layers")
    missing = [key for key in sizes if key not in hf]
    if missing:
        raise ConversionError(f"{path} lacks {missing}")
    wrong = [f"{key}={hf[key]!r}" for key in sizes if not isinstance(hf[key], int) or hf[key] < 1]
    if wrong:
        raise ConversionError(f"{path}: {', '.join(wrong)}; expected positive integers")
    return T5Config(
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        num_heads=hf["num_heads"],
        d_kv=hf["d_kv"],
        d_ff=hf["d_ff"],
        num_encoder_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        feed_forward_proj=feed_forward_proj,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout_rate=hf.get("dropout_rate", 0.1),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        pad_id=hf.get("pad_token_id", 0),
        eos_id=hf.get("eos_token_id", 1),
        decoder_start_id=hf.get("decoder_start_token_id", 0),
    )


def config_to_hf(config: T5Config) -> dict[str, Any]:
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "num_heads": config.num_heads,
        "d_kv": config.d_kv,
        "d_ff": config.d_ff,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "feed_forward_proj": config.feed_forward_proj,
        "tie_word_embeddings": config.tie_word_embeddings,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_factor": 1.0,
        "pad_token_id": config.pad_id,
        "eos_token_id": config.eos_id,
        "decoder_start_token_id": config.decoder_start_id,
        "use_cache": True,
    }


class _Mapping(NamedTuple):
    """One parameter: our path, the HF tensor name, and how the layouts differ."""

    path: tuple
    hf_name: str
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: tuple[int, ...]


def _mappings(config: T5Config) -> Iterator[_Mapping]:
    d, h, k, f, v = config.d_model, config.num_heads, config.d_kv, config.d_ff, config.vocab_size

    def same(path, name, shape):
        return _Mapping(path, name, lambda x: x, lambda x: x, shape)

    def dense(path, name, shape_in_out):
        return _Mapping(path, name, lambda x: x.T, lambda x: x.T, shape_in_out[::-1])

    def attention(path, name):
        for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v")):
            yield _Mapping(
                path + (ours,), f"{name}.{theirs}.weight",
                lambda x: x.T.reshape(d, h, k), lambda x: x.reshape(d, h * k).T, (h * k, d),
            )
        yield _Mapping(
            path + ("out",), f"{name}.o.weight", lambda x: x.T.reshape(h, k, d), lambda x: x.reshape(h * k, d).T,
            (d, h * k),
        )

    def mlp(path, name):
        gated = config.feed_forward_proj == "gated-gelu"
        for wi in ("wi_0", "wi_1") if gated else ("wi",):
            yield dense(path + (wi,), f"{name}.DenseReluDense.{wi}.weight", (d, f))
        yield dense(path + ("wo",), f"{name}.DenseReluDense.wo.weight", (f, d))

    def norm(path, name):
        return same(path + ("scale",), f"{name}.weight", (d,))

    yield same(("token_embedder",), "shared.weight", (v, d))
    for stack, num_layers in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
        yield same(
            (stack, "relative_bias", "embedding"),
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (config.relative_attention_num_buckets, h),
        )
        for i in range(num_layers):
            ours, theirs = (stack, "layers", i), f"{stack}.block.{i}.layer"
            self_attention = "attention" if stack == "encoder" else "self_attention"
            pre_self_attention = "pre_attention_layer_norm" if stack == "encoder" else "pre_self_attention_layer_norm"
            yield norm(ours + (pre_self_attention,), f"{theirs}.0.layer_norm")
            yield from attention(ours + (self_attention,), f"{theirs}.0.SelfAttention")
            if stack == "decoder":
                yield norm(ours + ("pre_cross_attention_layer_norm",), f"{theirs}.1.layer_norm")
                yield from attention(ours + ("encoder_decoder_attention",), f"{theirs}.1.EncDecAttention")
            mlp_layer = 1 if stack == "encoder" else 2
            yield norm(ours + ("pre_mlp_layer_norm",), f"{theirs}.{mlp_layer}.layer_norm")
            yield from mlp(ours + ("mlp",), f"{theirs}.{mlp_layer}")
        yield norm((stack, "final_layer_norm"), f"{stack}.final_layer_norm")
    if not config.tie_word_embeddings:
        yield dense(("logits_dense",), "lm_head.weight", (d, v))


def params_from_hf(tensors: Mapping[str, np.ndarray], config: T5Config) -> dict[str, Any]:
    """Our nested parameter dict from HF tensors; errors name every missing, misshapen or unknown tensor."""
    flat, missing, mismatched, used = {}, [], [], set()
    for mapping in _mappings(config):
        tensor = tensors.get(mapping.hf_name)
        if tensor is None and mapping.hf_name == "shared.weight":
            tensor = tensors.get("encoder.embed_tokens.weight")
        if tensor is None:
            missing.append(mapping.hf_name)
        elif tuple(tensor.shape) != mapping.hf_shape:
            mismatched.append(f"{mapping.hf_name}: expected shape {mapping.hf_shape}, found {tuple(tensor.shape)}")
        else:
            flat[mapping.path] = np.asarray(mapping.to_ours(np.asarray(tensor, np.float32)))
        used.add(mapping.hf_name)
    unexpected = sorted(
        name for name in tensors
        if name not in used and not IGNORED_TENSORS.fullmatch(name)
        and not (name == "lm_head.weight" and config.tie_word_embeddings)
    )
    problems = []
    if missing:
        problems.append(f"missing tensors {in_brief(missing, 12)}")
    if mismatched:
        problems.append(f"mismatched tensors {in_brief(mismatched, 12)}")
    if unexpected:
        problems.append(f"unexpected tensors (is config.json right for these weights?) {in_brief(unexpected, 12)}")
    if any(name.startswith("shared.weight") for name in mismatched):
        problems.append(f"config.json says vocab_size={config.vocab_size}")
    if problems:
        raise ConversionError("; ".join(problems))
    return traverse_util.unflatten_dict(flat)


def params_to_hf(params: Mapping[str, Any], config: T5Config) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(params)
    return {
        mapping.hf_name: np.ascontiguousarray(mapping.to_hf(np.asarray(flat[mapping.path], np.float32)))
        for mapping in _mappings(config)
    }


def weights_path(hf_dir: str) -> str:
    """The directory's weights file, or the index of its shards."""
    for weights_name in ("model.safetensors", "pytorch_model.bin"):
        for path in (os.path.join(hf_dir, weights_name), os.path.join(hf_dir, weights_name + ".index.json")):
            if os.path.exists(path):
                return path
    raise ConversionError(
        f"{hf_dir} holds no weights: expected model.safetensors, pytorch_model.bin or their .index.json"
    )


def read_hf_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """Every tensor of the directory's weights, as float32 numpy."""
    path = weights_path(hf_dir)
    reader = _read_safetensors if ".safetensors" in os.path.basename(path) else _read_torch
    if not path.endswith(".index.json"):
        return reader(path)
    tensors = {}
    for shard in _shards(path):
        shard_path = os.path.join(hf_dir, shard)
        if not os.path.isfile(shard_path):
            raise ConversionError(f"{shard_path} is missing: {os.path.basename(path)} lists it as a shard")
        tensors.update(reader(shard_path))
    return tensors


def _shards(index_path: str) -> list[str]:
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{index_path} is not valid JSON ({checkpoints.error_summary(e)})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ConversionError(f"{index_path}: expected a 'weight_map' of tensor names to shard files")
    return sorted(set(weight_map.values()))


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        # The flax reader understands bfloat16, which numpy alone does not.
        with safe_open(path, framework="flax") as f:
            return {name: np.asarray(f.get_tensor(name).astype(np.float32)) for name in f.keys()}
    except Exception as e:  # safetensors' own SafetensorError, or an OSError: the file is damaged or cut off
        raise ConversionError(f"{path} cannot be read as safetensors ({checkpoints.error_summary(e)}): the "
                              f"download is damaged or incomplete; download it again") from e


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ConversionError(f"reading {path} needs torch; install it or convert the weights to safetensors") from e
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip or pickle: torch raises RuntimeError, UnpicklingError, EOFError
        raise ConversionError(f"{path} cannot be read as PyTorch weights ({checkpoints.error_summary(e)}): the "
                              f"download is damaged or incomplete; download it again") from e
    return {name: tensor.float().numpy() for name, tensor in state_dict.items()}


def read_hf_config(hf_dir: str) -> T5Config:
    """Our config from the directory's `config.json`; a missing or damaged one is an error naming it."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConversionError(f"{hf_dir} is not a Hugging Face T5 directory: config.json is missing")
    return config_from_hf(checkpoints.read_json_object(path, ConversionError), path)


def import_hf(hf_dir: str, ckpt_dir: str) -> T5Config:
    """Converts an HF T5 directory into a model checkpoint at `ckpt_dir`."""
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"{hf_dir} is not a directory; expected a Hugging Face T5 model directory")
    config = read_hf_config(hf_dir)
    vocab_path = os.path.join(hf_dir, checkpoints.VOCAB_FILE)
    if not os.path.isfile(vocab_path):
        raise ConversionError(f"{hf_dir} is not a Hugging Face T5 directory: {checkpoints.VOCAB_FILE} is missing")
    checkpoints.check_vocab_fits(checkpoints.sentencepiece_size(vocab_path), config, vocab_path)
    tensors = read_hf_tensors(hf_dir)
    try:
        params = params_from_hf(tensors, config)
    except ConversionError as e:  # name the files that disagree
        config_path = os.path.join(hf_dir, "config.json")
        raise ConversionError(f"{weights_path(hf_dir)} does not fit {config_path}: {e}") from None
    checkpoints.save_checkpoint(ckpt_dir, params, config, vocab_path)
    return config


def export_hf(ckpt_dir: str, hf_dir: str) -> T5Config:
    """Writes `config.json`, `model.safetensors` and `spiece.model` for `T5ForConditionalGeneration`.

    Refuses a directory that already holds a model, as import refuses to overwrite a checkpoint.
    """
    from safetensors.numpy import save_file

    written = [name for name in ("config.json", "model.safetensors") if os.path.exists(os.path.join(hf_dir, name))]
    if written:
        raise ConversionError(f"{hf_dir} already holds {' and '.join(written)}; choose an empty directory")
    vocab_path = checkpoints.checked_vocab_path(ckpt_dir)
    config, params = checkpoints.load_params_numpy(ckpt_dir)
    os.makedirs(hf_dir, exist_ok=True)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(config_to_hf(config), f, indent=2)
    # transformers only loads safetensors marked as PyTorch-format.
    save_file(params_to_hf(params, config), os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(vocab_path, os.path.join(hf_dir, checkpoints.VOCAB_FILE))
    return config
