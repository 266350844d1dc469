"""The DPO + RPO loss against TRL 0.28's own code (`DPOTrainer.get_batch_loss_metrics` and `dpo_loss`).

TRL's trainer is driven without a model: a stand-in object carries the attributes those two methods
read, and its `concatenated_forward` returns log-probabilities computed the way TRL computes them for an
encoder-decoder model (masked per-token log-softmax, summed; NLL by `cross_entropy` with pad id 0).
"""

import functools
import os
import types

os.environ.setdefault("USE_TF", "0")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.utils import selective_log_softmax

from tinythinker_jax.reflection.losses import dpo_rpo_loss

BATCH, LENGTH, VOCAB = 6, 9, 17


def _trl_trainer(beta: float, rpo_alpha, model_output: dict) -> types.SimpleNamespace:
    trainer = types.SimpleNamespace(
        beta=beta, label_smoothing=0.0, reference_free=False, f_divergence_type="reverse_kl",
        f_divergence_params=None, loss_type=["sigmoid"], loss_weights=None, use_weighting=False,
        aux_loss_enabled=False,
        args=types.SimpleNamespace(use_liger_kernel=False, rpo_alpha=rpo_alpha),
        accelerator=types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
        concatenated_forward=lambda model, batch: model_output,
    )
    trainer.dpo_loss = functools.partial(DPOTrainer.dpo_loss, trainer)
    return trainer


def _encoder_decoder_output(seed: int) -> tuple[dict, np.ndarray]:
    """TRL's model output for random decoder logits and ragged targets, and the chosen target lengths."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2 * BATCH, LENGTH, VOCAB, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(1, VOCAB, (2 * BATCH, LENGTH), generator=generator)
    # Ragged lengths, the last column always padding: TRL's roll-and-drop of that column is then exact.
    lengths = torch.randint(1, LENGTH, (2 * BATCH,), generator=generator)
    loss_mask = torch.arange(LENGTH)[None, :] < lengths[:, None]
    labels[~loss_mask] = 0
    per_token_logps = selective_log_softmax(logits, labels)
    per_token_logps[~loss_mask] = 0
    all_logps = torch.roll(per_token_logps, shifts=1, dims=1)[:, 1:].sum(-1)
    nll_loss = F.cross_entropy(torch.flatten(logits[:BATCH], end_dim=1), torch.flatten(labels[:BATCH], end_dim=1),
                               ignore_index=0)
    output = {
        "chosen_logps": all_logps[:BATCH], "rejected_logps": all_logps[BATCH:],
        "mean_chosen_logits": logits[:BATCH].mean(), "mean_rejected_logits": logits[BATCH:].mean(),
        "nll_loss": nll_loss,
    }
    return output, lengths[:BATCH].numpy()


def _reference_logps(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 1000)
    return (-20 * torch.rand(BATCH, generator=generator, dtype=torch.float64),
            -20 * torch.rand(BATCH, generator=generator, dtype=torch.float64))


def _ours(model_output, ref_chosen, ref_rejected, lengths, beta, alpha, weights=None):
    with jax.enable_x64(True):
        as_jax = lambda t: jnp.asarray(np.asarray(t), dtype=jnp.float64)
        loss, metrics = dpo_rpo_loss(
            as_jax(model_output["chosen_logps"]), as_jax(model_output["rejected_logps"]),
            as_jax(ref_chosen), as_jax(ref_rejected), as_jax(lengths),
            weights=None if weights is None else as_jax(weights), beta=beta, alpha=alpha,
        )
        return float(loss), {name: float(value) for name, value in metrics.items()}


@pytest.mark.parametrize("seed,beta,alpha", [(0, 0.5, 0.5), (1, 0.1, 1.0), (2, 2.0, 0.0)])
def test_loss_and_metrics_match_trl_with_rpo_alpha(seed, beta, alpha):
    model_output, lengths = _encoder_decoder_output(seed)
    ref_chosen, ref_rejected = _reference_logps(seed)
    batch = {"ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    trainer = _trl_trainer(beta, alpha, model_output)
    trl_loss, trl_metrics = DPOTrainer.get_batch_loss_metrics(trainer, None, batch)

    loss, metrics = _ours(model_output, ref_chosen, ref_rejected, lengths, beta, alpha)

    assert loss == pytest.approx(float(trl_loss), abs=1e-6)
    assert metrics["nll"] == pytest.approx(trl_metrics["nll_loss"], abs=1e-6)
    for ours, theirs in [("rewards/chosen", "rewards/chosen"), ("rewards/rejected", "rewards/rejected"),
                         ("rewards/accuracy", "rewards/accuracies"), ("rewards/margin", "rewards/margins")]:
        assert metrics[ours] == pytest.approx(trl_metrics[theirs], abs=1e-6), ours


def test_per_pair_dpo_term_matches_trl_dpo_loss():
    model_output, lengths = _encoder_decoder_output(3)
    ref_chosen, ref_rejected = _reference_logps(3)
    trainer = _trl_trainer(0.5, None, model_output)
    trl_losses, _, _ = trainer.dpo_loss(model_output["chosen_logps"], model_output["rejected_logps"],
                                        ref_chosen, ref_rejected, "sigmoid")
    for row in range(BATCH):
        only_this_row = np.eye(BATCH)[row]
        _, metrics = _ours(model_output, ref_chosen, ref_rejected, lengths, 0.5, 0.5, weights=only_this_row)
        assert metrics["dpo_loss"] == pytest.approx(float(trl_losses[row]), abs=1e-6)


def test_rpo_term_is_token_mean_nll_of_chosen_targets():
    chosen = jnp.array([-6.0, -2.0])  # 3 and 1 target tokens
    loss, metrics = dpo_rpo_loss(chosen, jnp.array([-5.0, -4.0]), jnp.array([-6.0, -3.0]), jnp.array([-5.0, -3.0]),
                                 jnp.array([3, 1]), beta=0.5, alpha=0.5)
    # Token mean over the batch (8 / 4 tokens), as TRL's cross_entropy, not the mean of per-pair means (1.5).
    assert float(metrics["nll"]) == pytest.approx(2.0)
    margins = np.array([0.5 * (0.0 - 0.0), 0.5 * (1.0 + 1.0)])
    dpo = np.mean(np.log1p(np.exp(-margins)))
    assert float(metrics["dpo_loss"]) == pytest.approx(dpo, rel=1e-6)
    assert float(loss) == pytest.approx(dpo + 0.5 * 2.0, rel=1e-6)
    assert float(metrics["rewards/accuracy"]) == pytest.approx(0.5)  # the tie is not a win


def test_filler_rows_change_neither_loss_nor_metrics():
    rng = np.random.default_rng(0)
    real = [jnp.asarray(-20 * rng.random(4), jnp.float32) for _ in range(4)] + [jnp.array([3, 5, 2, 7])]
    loss, metrics = dpo_rpo_loss(*real)
    filler = [jnp.asarray(-20 * rng.random(3), jnp.float32) for _ in range(4)] + [jnp.array([4, 4, 9])]
    padded = [jnp.concatenate([a, b]) for a, b in zip(real, filler)]
    weights = jnp.array([1, 1, 1, 1, 0, 0, 0], jnp.float32)
    padded_loss, padded_metrics = dpo_rpo_loss(*padded, weights=weights)
    assert float(padded_loss) == pytest.approx(float(loss), rel=1e-6)
    for name in metrics:
        assert float(padded_metrics[name]) == pytest.approx(float(metrics[name]), rel=1e-6, abs=1e-7), name
    gradient = jax.grad(lambda chosen: dpo_rpo_loss(chosen, *padded[1:], weights=weights)[0])(padded[0])
    assert np.all(np.asarray(gradient[4:]) == 0)
    assert np.all(np.asarray(gradient[:4]) != 0)
