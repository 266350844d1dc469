"""Incremental decoding with a KV cache: greedy, temperature, top-k and top-p sampling, several samples per
input, each row stopping at its EOS.

`decode` is the pure, jittable loop over fixed shapes; `generate` feeds it token-id lists from the host,
padded to shape buckets so it compiles once per (batch, input length, cache length) bucket and sampling
setting. Randomness is derived per sample from the RNG key and the example's position in the caller's
list, so results do not depend on batching or padding.
"""

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tinythinker_jax import partitioning
from tinythinker_jax.models import batching, compiled
from tinythinker_jax.models.scoring import token_log_likelihoods
from tinythinker_jax.models.t5 import DecodingCache, T5Transformer


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 decodes greedily
    top_k: int = 0  # 0 keeps every token
    top_p: float = 1.0  # 1 keeps every token

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"invalid sampling settings {self}: need temperature >= 0, top_k >= 0, 0 < top_p <= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class DecodeResult(NamedTuple):
    """Device arrays from `decode`, numpy arrays (on the host) from `generate`."""

    tokens: jax.Array | np.ndarray  # [batch, num_decodes, length] generated ids, EOS included, padding (0) after it
    # [batch, num_decodes] summed log p of the generated tokens (temperature 1, unfiltered)
    log_likelihood: jax.Array | np.ndarray


class _LoopState(NamedTuple):
    step: jax.Array
    last_tokens: jax.Array
    cache: DecodingCache
    tokens: jax.Array
    done: jax.Array
    log_likelihood: jax.Array


def _nucleus(probs: jax.Array, top_p: float) -> jax.Array:
    """Mask of the nucleus: the likeliest tokens whose mass first reaches `top_p`.

    Finds the smallest kept probability by bisection over float32 bit patterns (ordered like the values,
    which are non-negative): 32 masked sums instead of a vocabulary-wide sort, which XLA:CPU does slowly.
    """
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)

    def narrow(_, bounds):
        enough_at, too_little_at = bounds  # the mass of tokens with bits >= these is >= top_p, < top_p
        middle = enough_at + (too_little_at - enough_at) // 2
        enough = jnp.sum(jnp.where(bits >= middle[:, None], probs, 0.0), axis=-1) >= top_p
        return jnp.where(enough, middle, enough_at), jnp.where(enough, too_little_at, middle)

    bounds = (jnp.zeros(bits.shape[:1], jnp.int32), jnp.max(bits, axis=-1) + 1)
    smallest_kept, _ = jax.lax.fori_loop(0, 32, narrow, bounds)
    return bits >= smallest_kept[:, None]


def _candidates(logits: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array | None]:
    """What sampling draws from: tempered logits, -inf outside the nucleus; with top-k only the k likeliest
    tokens, and their ids. Temperature, top-k, top-p, in the order `transformers` applies them."""
    # Shifted so the largest logit is 0: a tiny temperature then sends the rest to -inf, never the best
    # one to +inf, whose softmax would be NaN.
    logits = (logits - jnp.max(logits, axis=-1, keepdims=True)) / sampling.temperature
    ids = None
    if sampling.top_k:
        logits, ids = jax.lax.top_k(logits, sampling.top_k)
    if sampling.top_p < 1.0:
        logits = jnp.where(_nucleus(jax.nn.softmax(logits, axis=-1), sampling.top_p), logits, -jnp.inf)
    return logits, ids


def _argmax(logits: jax.Array) -> jax.Array:
    """`jnp.argmax` over the last axis (the first maximum, or the first NaN), as a max and a min: XLA:CPU
    runs argmax's paired reduction several times slower over a vocabulary."""
    best = jnp.max(logits, axis=-1, keepdims=True)
    hit = (logits == best) | jnp.isnan(logits)
    ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(hit, ids, logits.shape[-1]), axis=-1)


def _select(logits: jax.Array, keys: jax.Array, sampling: SamplingConfig) -> jax.Array:
    if sampling.greedy:
        return _argmax(logits)
    candidate_logits, ids = _candidates(logits, sampling)
    choice = jax.vmap(jax.random.categorical)(keys, candidate_logits).astype(jnp.int32)
    return choice if ids is None else jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]


def decode(
    model: T5Transformer, encoder_input_tokens: jax.Array, rng: jax.Array, example_ids: jax.Array,
    max_steps: jax.Array | int, *, cache_length: int, sampling: SamplingConfig = SamplingConfig(),
    num_decodes: int = 1, eos_id: jax.Array | int | None = None,
) -> DecodeResult:
    """Decodes up to `max_steps` (<= `cache_length`) tokens for each input row.

    `example_ids` [batch] names each row for the RNG (its index in the caller's data); rows with a negative
    id are batch padding and are finished from the start. `eos_id` defaults to the model's; pass -1 to
    always decode `max_steps` tokens (benchmarks).
    """
    config = model.config
    eos_id = config.eos_id if eos_id is None else eos_id
    batch = encoder_input_tokens.shape[0]
    rows = batch * num_decodes

    def per_sample(x: jax.Array) -> jax.Array:
        return jnp.repeat(x, num_decodes, axis=0)

    cache = model.init_decoding_cache(model.encode(encoder_input_tokens), cache_length, num_decodes)
    sample_ids = per_sample(example_ids) * num_decodes + jnp.tile(jnp.arange(num_decodes), batch)
    sample_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, sample_ids)
    logits_kernel = model.decoding_logits_kernel()

    def keep_going(state: _LoopState) -> jax.Array:
        return (state.step < max_steps) & ~jnp.all(state.done)

    def step(state: _LoopState) -> _LoopState:
        logits, cache = model.decode_step(
            state.last_tokens, state.step, state.cache, encoder_input_tokens, logits_kernel
        )
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(sample_keys, state.step)
        tokens = jnp.where(state.done, config.pad_id, _select(logits, keys, sampling))
        log_likelihood = state.log_likelihood + jnp.where(state.done, 0.0, token_log_likelihoods(logits, tokens))
        return _LoopState(
            step=state.step + 1,
            last_tokens=tokens,
            cache=cache,
            tokens=jax.lax.dynamic_update_slice_in_dim(state.tokens, tokens[:, None], state.step, axis=1),
            done=state.done | (tokens == eos_id),
            log_likelihood=log_likelihood,
        )

    final = jax.lax.while_loop(
        keep_going,
        step,
        _LoopState(
            step=jnp.zeros((), jnp.int32),
            last_tokens=jnp.full((rows,), config.decoder_start_id, jnp.int32),
            cache=cache,
            tokens=jnp.full((rows, cache_length), config.pad_id, jnp.int32),
            done=per_sample(example_ids < 0),
            log_likelihood=jnp.zeros((rows,), jnp.float32),
        ),
    )
    return DecodeResult(
        final.tokens.reshape(batch, num_decodes, cache_length), final.log_likelihood.reshape(batch, num_decodes)
    )


# `decode` compiled: (graphdef, state, *decode's arguments); `generate` feeds it, the planner lowers it.
compiled_decode = compiled.jit_on_state(decode, static_argnames=("cache_length", "sampling", "num_decodes"))


def generate(
    model: T5Transformer, inputs: Sequence[Sequence[int]], *, max_decode_length: int,
    sampling: SamplingConfig = SamplingConfig(), num_decodes: int = 1, seed: int = 0, batch_size: int = 32,
    eos_id: int | None = None, max_input_length: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> DecodeResult:
    """Decodes every token-id list in `inputs` with the KV cache, in batches of similar lengths.

    Args:
        model: The T5 model (its parameters may be sharded over the active mesh).
        inputs: Encoder token ids per input, each ending with EOS.
        max_decode_length: Tokens generated per row at most; a row stops at EOS.
        sampling: Greedy (the default) or temperature / top-k / top-p sampling.
        num_decodes: Samples per input, which share the input's encoder pass and cross-attention keys.
        seed: The sampling seed; row r of input i always takes the same random stream.
        batch_size: Inputs per call (times `num_decodes` rows).
        eos_id: The end-of-sequence id (default: the model config's).
        max_input_length: The longest input the caller ever sends: the largest input shape bucket.
        on_batch: Called with the number of inputs decoded so far after each batch (its results are on the
            host then), e.g. to move a progress bar.

    Returns:
        numpy `tokens` (inputs, num_decodes, max_decode_length), padded after EOS, and the `log_likelihood` of
        each row, in input order.
    """
    graphdef, state = nnx.split(model)
    rng = jax.random.key(seed)
    cache_length = batching.bucket_length(max_decode_length)
    # One argument type whatever integer type the caller passes, so no call compiles a second time.
    eos = np.int32(model.config.eos_id if eos_id is None else eos_id)
    tokens = np.zeros((len(inputs), num_decodes, max_decode_length), np.int32)
    log_likelihood = np.zeros((len(inputs), num_decodes), np.float32)
    decoded = 0
    for chunk in batching.by_length(len(inputs), lambda i: len(inputs[i]), batch_size):
        encoder_input_tokens = batching.bucketed([inputs[i] for i in chunk], model.config.pad_id, max_input_length)
        example_ids = np.full(encoder_input_tokens.shape[0], -1, np.int32)
        example_ids[: len(chunk)] = chunk
        result = compiled_decode(
            graphdef, state, encoder_input_tokens, rng, example_ids, np.int32(max_decode_length),
            cache_length=cache_length, sampling=sampling, num_decodes=num_decodes, eos_id=eos,
        )
        tokens[chunk] = partitioning.to_host(result.tokens)[: len(chunk), :, :max_decode_length]
        log_likelihood[chunk] = partitioning.to_host(result.log_likelihood)[: len(chunk)]
        decoded += len(chunk)
        if on_batch is not None:
            on_batch(decoded)
    return DecodeResult(tokens, log_likelihood)


def until_eos(tokens: Sequence[int], eos_id: int = 1) -> list[int]:
    """The generated ids before the first EOS."""
    tokens = list(tokens)
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens
