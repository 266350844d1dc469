"""Training losses."""

import jax
import jax.numpy as jnp
import optax


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross entropy over the weighted target tokens (as the paper's HF Trainer), and the token count.

    Logits may be wider than the vocabulary (T5 pads its embedding); those ids are never targets.
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    weights = weights.astype(jnp.float32)
    num_tokens = jnp.sum(weights)
    return jnp.sum(losses * weights) / jnp.maximum(num_tokens, 1.0), num_tokens
