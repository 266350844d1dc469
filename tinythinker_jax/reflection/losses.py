"""The self-reflection objective: DPO's sigmoid loss plus RPO's NLL on the chosen targets.

Matches TRL 0.28's `DPOTrainer` with `loss_type="sigmoid"` and `rpo_alpha`: the NLL is the token mean
over every chosen target token in the batch (TRL's `cross_entropy` over the flattened chosen labels),
not a mean of per-pair means. Since a chosen sequence's summed log-likelihood is minus its summed
token NLL, the term needs only the chosen lengths.

Batches are padded with filler rows to a fixed shape; `weights` (1 real, 0 filler) keeps them out of
the loss and of every metric.
"""

from typing import Optional

import jax
import jax.numpy as jnp


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    total = jnp.sum(weights)
    return jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0)


def dpo_rpo_loss(
    policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
    reference_chosen_logps: jax.Array, reference_rejected_logps: jax.Array,
    chosen_lengths: jax.Array, weights: Optional[jax.Array] = None, beta: float = 0.5, alpha: float = 0.5,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean over real pairs of `-log sigmoid(beta * margin)`, plus `alpha *` the chosen token-mean NLL.

    Log-probabilities are summed over each target sequence, shape [batch]; `chosen_lengths` counts the
    target tokens of each chosen sequence (the ones its log-probability sums over).
    """
    if weights is None:
        weights = jnp.ones_like(policy_chosen_logps)
    weights = weights.astype(policy_chosen_logps.dtype)
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)
    margins = chosen_rewards - rejected_rewards
    dpo_loss = _weighted_mean(-jax.nn.log_sigmoid(margins), weights)
    chosen_tokens = jnp.sum(chosen_lengths * weights)
    nll = -jnp.sum(policy_chosen_logps * weights) / jnp.where(chosen_tokens > 0, chosen_tokens, 1.0)
    loss = dpo_loss + alpha * nll
    metrics = {
        "loss": loss,
        "dpo_loss": dpo_loss,
        "nll": nll,
        "rewards/chosen": _weighted_mean(chosen_rewards, weights),
        "rewards/rejected": _weighted_mean(rejected_rewards, weights),
        "rewards/accuracy": _weighted_mean((chosen_rewards > rejected_rewards).astype(weights.dtype), weights),
        "rewards/margin": _weighted_mean(margins, weights),
    }
    return loss, metrics
