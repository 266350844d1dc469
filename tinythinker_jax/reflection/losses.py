"""The self-reflection objective: DPO's sigmoid loss plus RPO's NLL on the chosen targets.

Matches TRL 0.28's `DPOTrainer` with `loss_type="sigmoid"` and `rpo_alpha`: the NLL is the token mean
over every chosen target token in the batch (TRL's `cross_entropy` over the flattened chosen labels),
not a mean of per-pair means. Since a chosen sequence's summed log-likelihood is minus its summed
token NLL, the term needs only the chosen lengths.

Batches are padded with filler rows to a fixed shape; `weights` (1 real, 0 filler) keeps them out of
the loss and of every metric. `dpo_loss_fn` is the objective as the train step takes it, over the policy's
log-likelihoods of a batch of pairs and the reference's, stored with the pairs.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from tinythinker_jax.models import scoring
from tinythinker_jax.models.t5 import T5Transformer
from tinythinker_jax.phases.step import LossFn


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


def pair_log_likelihoods(model: T5Transformer, batch: dict[str, jax.Array]) -> jax.Array:
    """[batch, 2] summed log-likelihoods of (chosen, rejected), the prompt encoded once for both."""
    chosen, rejected = batch["chosen_targets"], batch["rejected_targets"]
    length = max(chosen.shape[1], rejected.shape[1])
    pad = lambda x: jnp.pad(x, ((0, 0), (0, length - x.shape[1])))  # noqa: E731
    return scoring.candidates_log_likelihood(model, batch["encoder_input_tokens"],
                                             jnp.stack([pad(chosen), pad(rejected)], axis=1))


def dpo_loss_fn(beta: float, alpha: float) -> LossFn:
    """DPO+RPO on a batch of scored pairs; dropout stays off, as in the paper's DPO runs."""
    def loss_fn(model, batch, dropout_rng):
        del dropout_rng
        logps = pair_log_likelihoods(model, batch)
        chosen_lengths = jnp.sum(batch["chosen_targets"] != model.config.pad_id, axis=-1)
        loss, values = dpo_rpo_loss(
            logps[:, 0], logps[:, 1], batch["reference_chosen"], batch["reference_rejected"],
            chosen_lengths, batch["pair_weights"], beta=beta, alpha=alpha)
        del values["loss"]
        return loss, {**values, "tokens": jnp.sum(chosen_lengths * batch["pair_weights"])}
    return loss_fn
