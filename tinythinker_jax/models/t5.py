"""The T5 student: encoder-decoder Transformer in Flax NNX.

Covers T5 1.0 (ReLU MLP, input embedding reused as the output layer with a 1/sqrt(d_model) scale) and
T5 1.1 / Flan-T5 (gated-GELU MLP, separate logits layer); both use pre-norm RMS layer norms without bias
and bucketed relative position biases shared by all layers of a stack. Numerics follow the reference
implementation (Mesh TensorFlow, as ported to PyTorch by `transformers`): no 1/sqrt(d_kv) scaling of
attention scores (it is folded into the query initialisation), softmax and layer-norm statistics in float32.

Parameters are float32; `T5Config.dtype` sets the compute dtype (bfloat16 on accelerators). Every parameter
carries `logical_axes` metadata and the main activations are constrained by logical axis names, so
`tinythinker_jax.partitioning` can lay the model out on any ('data', 'model') mesh.
"""

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional, TypeVar, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from tinythinker_jax import partitioning
from tinythinker_jax.models.dropout import Dropout
from tinythinker_jax.partitioning import with_logical_constraint

FEED_FORWARD_PROJS = ("relu", "gated-gelu")
# What a layer keeps for the backward pass (`T5Config.remat`): everything ("none"), only its matmuls' outputs
# (the rest, norms, softmax, activations and dropout, is recomputed), or only its input (all recomputed).
REMAT_POLICIES = {
    "none": None,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}
NEG_INF = -1e10  # Finite, so a row with every key masked (a padding row) stays NaN-free.
EMBED_AXES = ("batch", "length", "embed")
ModuleT = TypeVar("ModuleT", bound=nnx.Module)


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    num_heads: int
    d_kv: int
    d_ff: int
    num_encoder_layers: int
    num_decoder_layers: int
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"  # compute dtype; parameters are always float32
    remat: str = "none"  # a key of REMAT_POLICIES: memory for recomputation in training, numerically neutral
    # One layer's program run by `jax.lax.scan` over parameters stacked on a leading `layers` axis: compiles
    # in time independent of depth; numerically neutral, and checkpoints keep the unstacked layout.
    scan_layers: bool = False
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0

    def __post_init__(self):
        if self.feed_forward_proj not in FEED_FORWARD_PROJS:
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r} is not supported; use one of {FEED_FORWARD_PROJS}"
            )
        jnp.dtype(self.dtype)  # fails early on a misspelt dtype
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r} is not supported; use one of {tuple(REMAT_POLICIES)}")

    def shape(self) -> "T5Config":
        """The config with how it computes (dtype, dropout, remat, scan) at their defaults: what fixes the
        parameters (in the checkpoints' unstacked layout)."""
        return dataclasses.replace(self, dtype="float32", dropout_rate=0.1, remat="none", scan_layers=False)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> "T5Config":
        return dataclasses.replace(self, **changes)

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, fields: dict[str, Any]) -> "T5Config":
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown T5Config fields: {unknown}")
        return cls(**fields)


def _t5_1_0(d_model, num_heads, d_kv, d_ff, num_layers, vocab_size=32128) -> T5Config:
    return T5Config(vocab_size, d_model, num_heads, d_kv, d_ff, num_layers, num_layers)


def _t5_1_1(d_model, num_heads, d_kv, d_ff, num_layers, vocab_size=32128) -> T5Config:
    return T5Config(
        vocab_size, d_model, num_heads, d_kv, d_ff, num_layers, num_layers,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    )


# The published shapes (Flan-T5 shares T5 1.1's); the tiny ones are for tests.
CONFIGS: dict[str, T5Config] = {
    "t5_1_0_tiny": _t5_1_0(d_model=64, num_heads=4, d_kv=16, d_ff=128, num_layers=2),
    "t5_1_0_mini": _t5_1_0(d_model=128, num_heads=4, d_kv=32, d_ff=512, num_layers=4),  # learns the toy world
    "t5_1_0_small": _t5_1_0(d_model=512, num_heads=8, d_kv=64, d_ff=2048, num_layers=6),
    "t5_1_0_base": _t5_1_0(d_model=768, num_heads=12, d_kv=64, d_ff=3072, num_layers=12),
    "t5_1_0_large": _t5_1_0(d_model=1024, num_heads=16, d_kv=64, d_ff=4096, num_layers=24),
    "t5_1_0_3b": _t5_1_0(d_model=1024, num_heads=32, d_kv=128, d_ff=16384, num_layers=24),
    "t5_1_0_11b": _t5_1_0(d_model=1024, num_heads=128, d_kv=128, d_ff=65536, num_layers=24),
    "t5_1_1_tiny": _t5_1_1(d_model=64, num_heads=4, d_kv=16, d_ff=128, num_layers=2),
    "t5_1_1_small": _t5_1_1(d_model=512, num_heads=6, d_kv=64, d_ff=1024, num_layers=8),
    "t5_1_1_base": _t5_1_1(d_model=768, num_heads=12, d_kv=64, d_ff=2048, num_layers=12),
    "t5_1_1_large": _t5_1_1(d_model=1024, num_heads=16, d_kv=64, d_ff=2816, num_layers=24),
    "t5_1_1_xl": _t5_1_1(d_model=2048, num_heads=32, d_kv=64, d_ff=5120, num_layers=24),
    "t5_1_1_xxl": _t5_1_1(d_model=4096, num_heads=64, d_kv=64, d_ff=10240, num_layers=24),
}


def model_config(name: str, **overrides: Any) -> T5Config:
    """A named configuration, e.g. `model_config('t5_1_1_base', dtype='bfloat16')`; the gin entry point."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name].replace(**overrides)


def config_name(config: T5Config) -> Optional[str]:
    """The name in `CONFIGS` of `config`'s shape (`T5Config.shape`), with its vocabulary size
    when that differs (e.g. `t5_1_0_mini (vocab_size 768)`), or None for another shape."""
    for name, known in CONFIGS.items():
        if known.replace(vocab_size=config.vocab_size).shape() == config.shape():
            return name if known.vocab_size == config.vocab_size else f"{name} (vocab_size {config.vocab_size})"
    return None


def relative_position_buckets(
    relative_position: np.ndarray, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Bucket of each `key_position - query_position`, as in Mesh TensorFlow.

    Half of the buckets hold one exact distance each, the rest grow logarithmically up to `max_distance`,
    beyond which everything shares the last bucket. Bidirectional attention spends half of the buckets on
    keys after the query. Computed with numpy at trace time: lengths are static.
    """
    relative_position = np.asarray(relative_position, np.int64)
    buckets = np.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0) * num_buckets
        distance = np.abs(relative_position)
    else:
        distance = np.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    # float32 arithmetic, like the reference, so distances on a bucket boundary land on the same side.
    log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
    log_scale = np.float32(math.log(max_distance / max_exact))
    large = max_exact + (log_ratio / log_scale * np.float32(num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(distance < max_exact, distance, large)


def _param(rngs: nnx.Rngs, stddev: float, shape: tuple[int, ...], axes: tuple[str, ...]) -> nnx.Param:
    value = jax.random.normal(rngs.params(), shape, jnp.float32) * stddev
    return nnx.Param(value, logical_axes=axes)


def _mask_bias(mask: ArrayLike) -> jax.Array:
    return jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)


def _same_segment(query_segment_ids: jax.Array, key_segment_ids: jax.Array) -> jax.Array:
    """[batch, query_length, key_length]: the key is in the query's example and not padding (segment 0)."""
    return (query_segment_ids[:, :, None] == key_segment_ids[:, None, :]) & (key_segment_ids[:, None, :] > 0)


class LayerNorm(nnx.Module):
    """T5's RMS norm: a learnt scale, no mean subtraction and no bias; statistics in float32."""

    def __init__(self, config: T5Config):
        self.scale = nnx.Param(jnp.ones((config.d_model,), jnp.float32), logical_axes=("embed",))
        self.epsilon = config.layer_norm_epsilon
        self.dtype = config.compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
        return (x * self.scale[...]).astype(self.dtype)


class MultiHeadAttention(nnx.Module):
    """Attention without score scaling; the caller's float32 bias carries positions and masking."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        d, h, k = config.d_model, config.num_heads, config.d_kv
        # Mesh TensorFlow's initialisation: the 1/sqrt(d_kv) score scaling lives in the query weights.
        self.query = _param(rngs, (d * k) ** -0.5, (d, h, k), ("embed", "heads", "kv"))
        self.key = _param(rngs, d**-0.5, (d, h, k), ("embed", "heads", "kv"))
        self.value = _param(rngs, d**-0.5, (d, h, k), ("embed", "heads", "kv"))
        self.out = _param(rngs, (h * k) ** -0.5, (h, k, d), ("heads", "kv", "embed"))
        self.dropout = Dropout(config.dropout_rate)
        self.dtype = config.compute_dtype

    def _project(self, x: jax.Array, kernel: nnx.Param) -> jax.Array:
        y = jnp.einsum("bld,dhk->blhk", x, kernel[...].astype(self.dtype))
        return with_logical_constraint(y, ("batch", "length", "heads", "kv"))

    def project_query(self, x: jax.Array) -> jax.Array:
        return self._project(x, self.query)

    def project_key_value(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self._project(x, self.key), self._project(x, self.value)

    def attend(
        self, query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array, rngs: nnx.Rngs | None
    ) -> jax.Array:
        """`bias` broadcasts to [batch, heads, query_length, key_length]."""
        scores = jnp.einsum("bqhk,bshk->bhqs", query, key).astype(jnp.float32) + bias
        weights = self.dropout(jax.nn.softmax(scores, axis=-1).astype(self.dtype), rngs)
        # Head-major heads: XLA:CPU then skips a transpose, about halving the encoder's attention time.
        heads = jnp.einsum("bhqs,bshk->bhqk", weights, value)
        out = jnp.einsum("bhqk,hkd->bqd", heads, self.out[...].astype(self.dtype))
        return with_logical_constraint(out, EMBED_AXES)

    def attend_cached(self, query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array) -> jax.Array:
        """`attend` for incremental decoding, with `key` and `value` head-major [batch, heads, length, kv]
        (the layout of `LayerCache`): XLA then multiplies them in place instead of transposing the whole
        cache at every step.

        `key` may hold one row per input while `query` [inputs x samples, 1, heads, kv] holds one per
        sample: the samples of an input then attend to its keys as several queries, so the encoder output's
        keys are stored and read once per input, not once per sample."""
        rows, query_length, num_heads, kv = query.shape
        query = query.reshape(key.shape[0], -1, num_heads, kv)
        scores = jnp.einsum("bqhk,bhsk->bhqs", query, key).astype(jnp.float32) + bias
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        heads = jnp.einsum("bhqs,bhsk->bqhk", weights, value)
        out = jnp.einsum("bqhk,hkd->bqd", heads, self.out[...].astype(self.dtype))
        return with_logical_constraint(out.reshape(rows, query_length, -1), EMBED_AXES)

    def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array, bias: jax.Array, rngs: nnx.Rngs | None):
        return self.attend(self.project_query(inputs_q), *self.project_key_value(inputs_kv), bias, rngs)


class MlpBlock(nnx.Module):
    """ReLU (T5 1.0) or gated-GELU with the tanh approximation (T5 1.1, Flan-T5)."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        d, f = config.d_model, config.d_ff
        self.gated = config.feed_forward_proj == "gated-gelu"
        if self.gated:
            self.wi_0 = _param(rngs, d**-0.5, (d, f), ("embed", "mlp"))
            self.wi_1 = _param(rngs, d**-0.5, (d, f), ("embed", "mlp"))
        else:
            self.wi = _param(rngs, d**-0.5, (d, f), ("embed", "mlp"))
        self.wo = _param(rngs, f**-0.5, (f, d), ("mlp", "embed"))
        self.dropout = Dropout(config.dropout_rate)
        self.dtype = config.compute_dtype

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        def dense(kernel: nnx.Param) -> jax.Array:
            return x @ kernel[...].astype(self.dtype)

        if self.gated:
            hidden = jax.nn.gelu(dense(self.wi_0), approximate=True) * dense(self.wi_1)
        else:
            hidden = jax.nn.relu(dense(self.wi))
        hidden = with_logical_constraint(hidden, ("batch", "length", "mlp"))
        hidden = self.dropout(hidden, rngs)
        return with_logical_constraint(hidden @ self.wo[...].astype(self.dtype), EMBED_AXES)


class RelativePositionBias(nnx.Module):
    """One learnt scalar per (bucket, head), computed once per stack and shared by its layers."""

    def __init__(self, config: T5Config, *, bidirectional: bool, rngs: nnx.Rngs):
        self.embedding = _param(
            rngs, config.d_model**-0.5, (config.relative_attention_num_buckets, config.num_heads),
            ("relpos_buckets", "heads"),
        )
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance

    def buckets(self, query_length: int, key_length: int) -> np.ndarray:
        relative_position = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
        return relative_position_buckets(
            relative_position, bidirectional=self.bidirectional, num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )

    def __call__(self, query_length: int, key_length: int) -> jax.Array:
        """[1, heads, query_length, key_length] float32."""
        values = jnp.take(self.embedding[...], self.buckets(query_length, key_length), axis=0)
        return jnp.transpose(values, (2, 0, 1))[None]

    def for_query(self, query_position: jax.Array, key_length: int) -> jax.Array:
        """[1, heads, 1, key_length]: the bias of one (traced) query position, for incremental decoding."""
        row = jnp.asarray(self.buckets(key_length, key_length), jnp.int32)[query_position]
        return jnp.transpose(jnp.take(self.embedding[...], row, axis=0))[None, :, None, :]


class EncoderLayer(nnx.Module):
    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.pre_attention_layer_norm = LayerNorm(config)
        self.attention = MultiHeadAttention(config, rngs=rngs)
        self.pre_mlp_layer_norm = LayerNorm(config)
        self.mlp = MlpBlock(config, rngs=rngs)
        self.dropout = Dropout(config.dropout_rate)

    def __call__(self, x: jax.Array, bias: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        normed = self.pre_attention_layer_norm(x)
        x = x + self.dropout(self.attention(normed, normed, bias, rngs), rngs)
        x = x + self.dropout(self.mlp(self.pre_mlp_layer_norm(x), rngs), rngs)
        return with_logical_constraint(x, EMBED_AXES)


class LayerCache(NamedTuple):
    """What one decoder layer keeps between decoding steps."""

    # Head-major, so attention reads them without a per-step transpose of the whole cache.
    self_key: jax.Array  # [inputs x samples, heads, cache_length, kv], filled up to the current step
    self_value: jax.Array
    cross_key: jax.Array  # [inputs, heads, input_length, kv], from the encoder output, shared by the samples
    cross_value: jax.Array


# One LayerCache per decoder layer, or for scanned layers one whose arrays stack theirs on a leading axis.
DecodingCache = list[LayerCache] | LayerCache


class DecoderLayer(nnx.Module):
    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.pre_self_attention_layer_norm = LayerNorm(config)
        self.self_attention = MultiHeadAttention(config, rngs=rngs)
        self.pre_cross_attention_layer_norm = LayerNorm(config)
        self.encoder_decoder_attention = MultiHeadAttention(config, rngs=rngs)
        self.pre_mlp_layer_norm = LayerNorm(config)
        self.mlp = MlpBlock(config, rngs=rngs)
        self.dropout = Dropout(config.dropout_rate)

    def __call__(
        self, x: jax.Array, encoded: jax.Array, self_bias: jax.Array, cross_bias: jax.Array,
        rngs: nnx.Rngs | None,
    ) -> jax.Array:
        normed = self.pre_self_attention_layer_norm(x)
        x = x + self.dropout(self.self_attention(normed, normed, self_bias, rngs), rngs)
        normed = self.pre_cross_attention_layer_norm(x)
        x = x + self.dropout(self.encoder_decoder_attention(normed, encoded, cross_bias, rngs), rngs)
        x = x + self.dropout(self.mlp(self.pre_mlp_layer_norm(x), rngs), rngs)
        return with_logical_constraint(x, EMBED_AXES)

    def init_cache(self, encoded: jax.Array, cache_length: int, num_samples: int) -> LayerCache:
        cross_key, cross_value = (
            jnp.swapaxes(y, 1, 2) for y in self.encoder_decoder_attention.project_key_value(encoded)
        )
        batch, heads, _, kv = cross_key.shape
        empty = jnp.zeros((batch * num_samples, heads, cache_length, kv), cross_key.dtype)
        return LayerCache(empty, empty, cross_key, cross_value)

    def decode_step(
        self, x: jax.Array, position: jax.Array, cache: LayerCache, self_bias: jax.Array, cross_bias: jax.Array
    ) -> tuple[jax.Array, LayerCache]:
        """One new position `x` [batch, 1, d_model] at `position`; dropout is off while decoding."""
        normed = self.pre_self_attention_layer_norm(x)
        key, value = (jnp.swapaxes(y, 1, 2) for y in self.self_attention.project_key_value(normed))
        self_key = jax.lax.dynamic_update_slice_in_dim(cache.self_key, key, position, axis=2)
        self_value = jax.lax.dynamic_update_slice_in_dim(cache.self_value, value, position, axis=2)
        query = self.self_attention.project_query(normed)
        x = x + self.self_attention.attend_cached(query, self_key, self_value, self_bias)
        query = self.encoder_decoder_attention.project_query(self.pre_cross_attention_layer_norm(x))
        x = x + self.encoder_decoder_attention.attend_cached(query, cache.cross_key, cache.cross_value, cross_bias)
        x = x + self.mlp(self.pre_mlp_layer_norm(x), None)
        return x, cache._replace(self_key=self_key, self_value=self_value)


def _layer_stack(layers: list[ModuleT], scan: bool) -> ModuleT | nnx.List:
    """The layers as a list, or for a scan as one layer whose every parameter stacks theirs on a new leading
    `layers` axis (made from the same draws, so a seed gives the same weights either way)."""
    if not scan:
        return nnx.List(layers)
    graphdef, first = nnx.split(layers[0])
    rest = [nnx.state(layer) for layer in layers[1:]]

    def stack(first: nnx.Variable, *rest: nnx.Variable) -> nnx.Variable:
        axes = ("layers",) + tuple(first.get_metadata()["logical_axes"])
        return first.replace(jnp.stack([v[...] for v in (first, *rest)]), logical_axes=axes)

    return nnx.merge(graphdef, jax.tree.map(stack, first, *rest, is_leaf=partitioning.is_variable))


def _layer_function(graphdef: nnx.GraphDef, remat: str) -> Callable[..., Any]:
    """`apply(state, dropout_key, x, *args)`: one layer (`graphdef` with `state`) on `x`, with dropout given a
    key; under `jax.checkpoint` with the policy `remat` names, so the backward pass recomputes what the policy
    does not keep. Made at trace time: a function kept on the module would make two equal models' graphs
    unequal (and recompile)."""

    def apply(state: nnx.State, dropout_key: jax.Array | None, x: jax.Array, *args: Any) -> jax.Array:
        rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
        return nnx.merge(graphdef, state)(x, *args, rngs)

    return apply if remat == "none" else jax.checkpoint(apply, policy=REMAT_POLICIES[remat])


def _run_layers(layers: nnx.Module, config: T5Config, x: jax.Array, rngs: nnx.Rngs | None, *args: Any) -> jax.Array:
    """`x` through a stack's layers, each given `args` and, in training, its own dropout key (one draw of
    `rngs` split per layer, so unrolled and scanned stacks drop the same units)."""
    if config.scan_layers:
        graphdef, state = nnx.split(layers)
        keys = None if rngs is None else jax.random.split(rngs.dropout(), jax.tree.leaves(state)[0].shape[0])
        apply = _layer_function(graphdef, config.remat)
        return jax.lax.scan(lambda x, layer: (apply(*layer, x, *args), None), x, (state, keys))[0]
    keys = None if rngs is None else jax.random.split(rngs.dropout(), len(cast(nnx.List, layers)))
    for index, layer in enumerate(cast(nnx.List, layers)):
        graphdef, state = nnx.split(layer)
        x = _layer_function(graphdef, config.remat)(state, None if keys is None else keys[index], x, *args)
    return x


class Encoder(nnx.Module):
    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.relative_bias = RelativePositionBias(config, bidirectional=True, rngs=rngs)
        self.layers = _layer_stack(
            [EncoderLayer(config, rngs=rngs) for _ in range(config.num_encoder_layers)], config.scan_layers)
        self.final_layer_norm = LayerNorm(config)
        self.dropout = Dropout(config.dropout_rate)
        self.config = config

    def __call__(self, embedded: jax.Array, mask: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        """`mask` [batch, 1 or length, length]: which keys each query may attend to."""
        length = embedded.shape[1]
        bias = self.relative_bias(length, length) + _mask_bias(mask)[:, None]
        x = self.dropout(embedded, rngs)
        x = _run_layers(self.layers, self.config, x, rngs, bias)
        return self.dropout(self.final_layer_norm(x), rngs)


class Decoder(nnx.Module):
    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.relative_bias = RelativePositionBias(config, bidirectional=False, rngs=rngs)
        self.layers = _layer_stack(
            [DecoderLayer(config, rngs=rngs) for _ in range(config.num_decoder_layers)], config.scan_layers)
        self.final_layer_norm = LayerNorm(config)
        self.dropout = Dropout(config.dropout_rate)
        self.config = config

    def __call__(
        self, embedded: jax.Array, encoded: jax.Array, self_mask: jax.Array, cross_mask: jax.Array,
        rngs: nnx.Rngs | None,
    ) -> jax.Array:
        """`self_mask` [batch or 1, length, length] and `cross_mask` [batch, 1 or length, input_length]: which
        keys each query may attend to."""
        length = embedded.shape[1]
        self_bias = self.relative_bias(length, length) + _mask_bias(self_mask)[:, None]
        cross_bias = _mask_bias(cross_mask)[:, None]
        x = self.dropout(embedded, rngs)
        x = _run_layers(self.layers, self.config, x, rngs, encoded, self_bias, cross_bias)
        return self.dropout(self.final_layer_norm(x), rngs)

    def init_cache(self, encoded: jax.Array, cache_length: int, num_samples: int) -> DecodingCache:
        if self.config.scan_layers:
            graphdef, state = nnx.split(self.layers)
            return jax.vmap(lambda state: cast(DecoderLayer, nnx.merge(graphdef, state)).init_cache(
                encoded, cache_length, num_samples))(state)
        return [layer.init_cache(encoded, cache_length, num_samples) for layer in cast(nnx.List, self.layers)]

    def decode_step(
        self, embedded: jax.Array, position: jax.Array, cache: DecodingCache, encoder_mask: jax.Array
    ) -> tuple[jax.Array, DecodingCache]:
        cache_length = (cache if isinstance(cache, LayerCache) else cache[0]).self_key.shape[-2]
        visible = jnp.arange(cache_length) <= position
        self_bias = self.relative_bias.for_query(position, cache_length) + _mask_bias(visible)
        cross_bias = _mask_bias(encoder_mask)[:, None]
        if self.config.scan_layers:  # the cache is stacked like the layers (`init_cache`)
            assert isinstance(cache, LayerCache)
            # The self-attention cache is carried whole and each layer writes only its new position into it:
            # scanned over as inputs and outputs, the whole cache would be copied at every step.
            Carry = tuple[jax.Array, jax.Array, jax.Array]

            def write(stacked: jax.Array, layer_cache: jax.Array, index: jax.Array) -> jax.Array:
                new = jax.lax.dynamic_slice_in_dim(layer_cache, position, 1, axis=2)[None]
                return jax.lax.dynamic_update_slice(stacked, new, (index, 0, 0, position, 0))

            def step(carry: Carry, layer: tuple[jax.Array, nnx.State, jax.Array, jax.Array]) -> tuple[Carry, None]:
                x, keys, values = carry
                index, state, cross_key, cross_value = layer
                x, updated = cast(DecoderLayer, nnx.merge(graphdef, state)).decode_step(
                    x, position, LayerCache(keys[index], values[index], cross_key, cross_value), self_bias,
                    cross_bias)
                return (x, write(keys, updated.self_key, index), write(values, updated.self_value, index)), None

            graphdef, state = nnx.split(self.layers)
            layers = jnp.arange(self.config.num_decoder_layers)
            (x, keys, values), _ = jax.lax.scan(step, (embedded, cache.self_key, cache.self_value),
                                                (layers, state, cache.cross_key, cache.cross_value))
            return self.final_layer_norm(x), cache._replace(self_key=keys, self_value=values)
        x, new_cache = embedded, []
        for layer, layer_cache in zip(cast(nnx.List, self.layers), cache):
            x, layer_cache = layer.decode_step(x, position, layer_cache, self_bias, cross_bias)
            new_cache.append(layer_cache)
        return self.final_layer_norm(x), new_cache


class T5Transformer(nnx.Module):
    """The full model. Token id 0 is padding: inputs equal to it are masked out of attention."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.token_embedder = _param(rngs, 1.0, (config.vocab_size, config.d_model), ("vocab", "embed"))
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        if not config.tie_word_embeddings:
            self.logits_dense = _param(
                rngs, config.d_model**-0.5, (config.d_model, config.vocab_size), ("embed", "vocab")
            )

    def _embed(self, tokens: jax.Array) -> jax.Array:
        embedded = jnp.take(self.token_embedder[...], tokens, axis=0).astype(self.config.compute_dtype)
        return with_logical_constraint(embedded, EMBED_AXES)

    def _logits(self, hidden: jax.Array, logits_kernel: jax.Array | None = None) -> jax.Array:
        """float32 logits over the whole embedding (which may exceed the vocabulary: t5 pads it to 32128).

        `logits_kernel`, from `decoding_logits_kernel`, replaces the tied embedding's transpose."""
        dtype = self.config.compute_dtype
        if self.config.tie_word_embeddings:
            # Reusing the input embedding needs the rescaling T5 1.0 was trained with.
            hidden = hidden * (self.config.d_model**-0.5)
            if logits_kernel is None:
                logits = jnp.einsum("...d,vd->...v", hidden, self.token_embedder[...].astype(dtype))
            else:
                logits = hidden @ logits_kernel
        else:
            logits = hidden @ self.logits_dense[...].astype(dtype)
        return logits.astype(jnp.float32)

    def decoding_logits_kernel(self) -> jax.Array | None:
        """The tied embedding transposed to [d_model, vocab] once, for `decode_step`: XLA:CPU multiplies by
        a row-major [d_model, vocab] kernel markedly faster than by the [vocab, d_model] embedding, which it
        would otherwise read transposed at every step. None for an untied logits layer (already laid out so).
        The barrier keeps XLA from folding the transpose back into the loop's matmul."""
        if not self.config.tie_word_embeddings:
            return None
        kernel = self.token_embedder[...].astype(self.config.compute_dtype).T
        return jax.lax.optimization_barrier(kernel)

    def _encode(self, encoder_input_tokens: jax.Array, rngs: nnx.Rngs | None,
                encoder_segment_ids: jax.Array | None = None) -> jax.Array:
        return self.encoder(self._embed(encoder_input_tokens), self._encoder_mask(encoder_input_tokens,
                            encoder_segment_ids), rngs)

    def _encoder_mask(self, encoder_input_tokens: jax.Array, encoder_segment_ids: jax.Array | None) -> jax.Array:
        """[batch, 1 or length, length]: every non-padding key, or in a packed row (`encoder_segment_ids`, 0 for
        padding) the keys of the query's own example."""
        if encoder_segment_ids is None:
            return (encoder_input_tokens != self.config.pad_id)[:, None, :]
        return _same_segment(encoder_segment_ids, encoder_segment_ids)

    def _decode(
        self, encoded: jax.Array, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array,
        rngs: nnx.Rngs | None, encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        length = decoder_input_tokens.shape[1]
        causal = jnp.tril(jnp.ones((1, length, length), bool))
        if decoder_segment_ids is None:
            self_mask, cross_mask = causal, (encoder_input_tokens != self.config.pad_id)[:, None, :]
        else:
            if encoder_segment_ids is None:
                raise ValueError("decoder_segment_ids need the encoder_segment_ids of the same packed rows")
            self_mask = causal & _same_segment(decoder_segment_ids, decoder_segment_ids)
            cross_mask = _same_segment(decoder_segment_ids, encoder_segment_ids)
        hidden = self.decoder(self._embed(decoder_input_tokens), encoded, self_mask, cross_mask, rngs)
        logits = self._logits(hidden)
        return with_logical_constraint(logits, ("batch", "length", "vocab"))

    def encode(self, encoder_input_tokens: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
        """[batch, input_length] token ids -> [batch, input_length, d_model] encoder output."""
        return self._encode(encoder_input_tokens, _dropout_rngs(dropout_rng))

    def decode(
        self, encoded: jax.Array, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array, *,
        dropout_rng: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [batch, target_length, vocab] for teacher-forced `decoder_input_tokens`, given the encoder
        output (whose padding `encoder_input_tokens` marks)."""
        return self._decode(encoded, encoder_input_tokens, decoder_input_tokens, _dropout_rngs(dropout_rng))

    def __call__(
        self, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array, *,
        dropout_rng: jax.Array | None = None, encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Token logits [batch, target_length, vocab], float32. Dropout runs only given `dropout_rng`.

        Rows packed with several examples (`seqio.EncDecFeatureConverter(pack=True)`'s layout) pass both
        segment ids (1, 2, ... per example, 0 for padding): attention then stays within each example, so each
        gets the logits it has alone. Positions need no passing: T5's only position signal is the relative
        bias, whose offsets within an example are the same wherever the example sits in the row."""
        rngs = _dropout_rngs(dropout_rng)
        encoded = self._encode(encoder_input_tokens, rngs, encoder_segment_ids)
        return self._decode(encoded, encoder_input_tokens, decoder_input_tokens, rngs, encoder_segment_ids,
                            decoder_segment_ids)

    def init_decoding_cache(self, encoded: jax.Array, cache_length: int, num_samples: int = 1) -> DecodingCache:
        """Per-layer cache for `cache_length` decoding steps of `num_samples` samples per input,
        cross-attention keys and values precomputed once per input."""
        return self.decoder.init_cache(encoded, cache_length, num_samples)

    def decode_step(
        self, tokens: jax.Array, position: jax.Array, cache: DecodingCache, encoder_input_tokens: jax.Array,
        logits_kernel: jax.Array | None = None,
    ) -> tuple[jax.Array, DecodingCache]:
        """Feeds `tokens` [inputs x samples] (each input's samples adjacent) at decoder `position`; returns
        the next-token logits [inputs x samples, vocab]. `encoder_input_tokens` [inputs, length] is what
        the cache was made from. `logits_kernel`: optionally `decoding_logits_kernel()`, computed once
        outside the decoding loop."""
        encoder_mask = (encoder_input_tokens != self.config.pad_id)[:, None, :]
        hidden, cache = self.decoder.decode_step(self._embed(tokens[:, None]), position, cache, encoder_mask)
        return self._logits(hidden[:, 0], logits_kernel), cache


def _dropout_rngs(dropout_rng: jax.Array | None) -> nnx.Rngs | None:
    return None if dropout_rng is None else nnx.Rngs(dropout=dropout_rng)


def create_model(config: T5Config, *, seed: int = 0) -> T5Transformer:
    return T5Transformer(config, rngs=nnx.Rngs(params=seed))


def abstract_model(config: T5Config) -> T5Transformer:
    """The model with shapes and metadata but no arrays: a restore target costing no memory."""
    return nnx.eval_shape(lambda: create_model(config))


STACKS = ("encoder", "decoder")


def is_stacked_layer_path(path: tuple[Any, ...]) -> bool:
    """Whether a parameter's tree path (`jax.tree_util` keys) is a scanned stack's, `<stack>/layers/<name>`, whose
    leading axis is the layer, rather than one layer's, `<stack>/layers/<index>/<name>`."""
    keys = [getattr(entry, "key", getattr(entry, "name", None)) for entry in path]
    return len(keys) > 2 and keys[0] in STACKS and keys[1] == "layers" and isinstance(keys[2], str)


def unstack_layers(params: dict[str, Any]) -> dict[str, Any]:
    """A scanned model's parameters (`nnx.to_pure_dict`) in the unscanned layout, `<stack>/layers/<i>/...`:
    the layout checkpoints and the HF conversion use, whatever `scan_layers` a model trains with."""
    unstacked = dict(params)
    for stack in STACKS:
        layers = params[stack]["layers"]
        count = jax.tree.leaves(layers)[0].shape[0]
        unstacked[stack] = {**params[stack], "layers": {
            index: jax.tree.map(lambda stacked, index=index: stacked[index], layers) for index in range(count)}}
    return unstacked


def stack_layers(params: dict[str, Any]) -> dict[str, Any]:
    """`unstack_layers` undone: each stack's layer parameters stacked on a leading axis, for `scan_layers`."""
    stacked = dict(params)
    for stack in STACKS:
        layers = params[stack]["layers"]
        in_order = [layers[index] for index in sorted(layers, key=int)]
        stacked[stack] = {**params[stack], "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *in_order)}
    return stacked


def with_scan_layers(model: T5Transformer, scan_layers: bool) -> T5Transformer:
    """`model`'s parameters in a model whose config differs only in `scan_layers` (stacked or unstacked);
    `model` itself when it already has that layout. The stacking copies the layers' parameters once."""
    if model.config.scan_layers == scan_layers:
        return model
    graphdef, target = nnx.split(abstract_model(model.config.replace(scan_layers=scan_layers)))
    params = nnx.to_pure_dict(nnx.state(model))
    nnx.replace_by_pure_dict(target, stack_layers(params) if scan_layers else unstack_layers(params))
    return nnx.merge(graphdef, target)
