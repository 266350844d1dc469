"""Log-likelihoods of targets under the model: token-level for losses, summed per sequence for scoring and
DPO, and one encoder pass shared by many candidate targets of the same input.

Targets follow the T5 convention: token ids ending in EOS, padded with 0, which never counts.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tinythinker_jax import partitioning
from tinythinker_jax.models import batching, compiled
from tinythinker_jax.models.t5 import T5Transformer


def shift_right(targets: jax.Array, start_id: int = 0) -> jax.Array:
    """Teacher-forcing decoder inputs: the start token, then the targets without their last position."""
    start = jnp.full(targets.shape[:-1] + (1,), start_id, targets.dtype)
    return jnp.concatenate([start, targets[..., :-1]], axis=-1)


def token_log_likelihoods(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target token) at every position, float32."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def _summed(model: T5Transformer, logits: jax.Array, targets: jax.Array, weights: jax.Array | None) -> jax.Array:
    if weights is None:
        weights = targets != model.config.pad_id
    return jnp.sum(token_log_likelihoods(logits, targets) * weights, axis=-1)


def sequence_log_likelihood(
    model: T5Transformer, encoder_input_tokens: jax.Array, decoder_target_tokens: jax.Array,
    decoder_loss_weights: jax.Array | None = None, *, dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """[batch] summed log p(targets | inputs) over positions with weight (default: non-padding)."""
    decoder_input_tokens = shift_right(decoder_target_tokens, model.config.decoder_start_id)
    logits = model(encoder_input_tokens, decoder_input_tokens, dropout_rng=dropout_rng)
    return _summed(model, logits, decoder_target_tokens, decoder_loss_weights)


def candidates_log_likelihood(
    model: T5Transformer, encoder_input_tokens: jax.Array, candidate_targets: jax.Array,
    candidate_weights: jax.Array | None = None,
) -> jax.Array:
    """[batch, candidates] log-likelihoods of `candidate_targets` [batch, candidates, length], encoding each
    input once."""
    batch, candidates, length = candidate_targets.shape
    encoded = model.encode(encoder_input_tokens)

    def per_candidate(x: jax.Array) -> jax.Array:
        return jnp.repeat(x, candidates, axis=0)

    targets = candidate_targets.reshape(batch * candidates, length)
    logits = model.decode(
        per_candidate(encoded), per_candidate(encoder_input_tokens),
        shift_right(targets, model.config.decoder_start_id),
    )
    weights = None if candidate_weights is None else candidate_weights.reshape(batch * candidates, length)
    return _summed(model, logits, targets, weights).reshape(batch, candidates)


_compiled_sequence_log_likelihood = compiled.jit_on_state(sequence_log_likelihood)


def score(
    model: T5Transformer, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
    batch_size: int = 32, max_input_length: int | None = None, max_target_length: int | None = None,
) -> np.ndarray:
    """Summed target log-likelihood of each (input, target) token-id pair (teacher forcing).

    Pairs are grouped by length and padded to shape buckets, so a file compiles a handful of times.

    Args:
        model: The T5 model.
        inputs: Encoder token ids per pair.
        targets: Target token ids per pair (the decoder reads them shifted right).
        batch_size: Pairs per call.
        max_input_length: The longest input the caller ever sends, the largest input bucket.
        max_target_length: The same for targets.

    Returns:
        float32 numpy, one log-likelihood per pair, in order.

    Raises:
        ValueError: When `inputs` and `targets` differ in length.
    """
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    graphdef, state = nnx.split(model)
    scores = np.zeros(len(inputs), np.float32)
    for chunk in batching.by_length(len(inputs), lambda i: (len(inputs[i]), len(targets[i])), batch_size):
        encoder_input_tokens = batching.bucketed([inputs[i] for i in chunk], max_length=max_input_length)
        decoder_target_tokens = batching.bucketed([targets[i] for i in chunk], max_length=max_target_length)
        chunk_scores = _compiled_sequence_log_likelihood(graphdef, state, encoder_input_tokens, decoder_target_tokens)
        scores[chunk] = partitioning.to_host(chunk_scores)[: len(chunk)]
    return scores
