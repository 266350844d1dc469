"""Training losses."""

import jax
import jax.numpy as jnp
import optax

from tinythinker_jax.models import t5


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross entropy over the weighted target tokens (as the paper's HF Trainer), and the token count.

    Logits may be wider than the vocabulary (T5 pads its embedding); those ids are never targets.
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    weights = weights.astype(jnp.float32)
    num_tokens = jnp.sum(weights)
    return jnp.sum(losses * weights) / jnp.maximum(num_tokens, 1.0), num_tokens


def sft_loss(model: t5.T5Transformer, batch: dict[str, jax.Array], dropout_rng: jax.Array):
    """Token-mean cross entropy of the targets, with T5's dropout.

    A packed batch (with `encoder_segment_ids` and `decoder_segment_ids`) keeps each example's attention
    within itself; its metrics also count the examples and the rows that hold any.
    """
    packed = "decoder_segment_ids" in batch
    segments = {name: batch[name] for name in ("encoder_segment_ids", "decoder_segment_ids")} if packed else {}
    logits = model(batch["encoder_input_tokens"], batch["decoder_input_tokens"], dropout_rng=dropout_rng, **segments)
    loss, num_tokens = token_cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])
    if not packed:
        return loss, {"tokens": num_tokens}
    examples_in_row = jnp.max(batch["decoder_segment_ids"], axis=1)  # segment ids count up from 1 in each row
    return loss, {"tokens": num_tokens, "examples": jnp.sum(examples_in_row), "rows": jnp.sum(examples_in_row > 0)}
