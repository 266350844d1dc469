"""Optimizers and learning-rate schedules, chosen in gin."""

from typing import Any, Mapping, NamedTuple

import optax


class Optimizer(NamedTuple):
    transform: optax.GradientTransformation
    learning_rate: optax.Schedule  # for logging the rate in force at a step
    settings: Mapping[str, Any]  # what built it, for a phase's result and the report


def create_optimizer(
    total_steps: int,
    name: str = "adamw",
    learning_rate: float = 5e-4,
    warmup_fraction: float = 0.1,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
) -> Optimizer:
    """The paper's AdamW (HF Trainer defaults beyond the learning rate), or T5X's Adafactor.

    `schedule`: "cosine" (linear warm-up over `warmup_fraction` of the steps, then cosine decay to 0)
    or "constant".
    """
    warmup_steps = int(warmup_fraction * total_steps)
    if schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1))
    elif schedule == "constant":
        lr = optax.constant_schedule(learning_rate)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'constant'")
    if name == "adamw":
        transform = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)
    elif name == "adafactor":
        transform = optax.adafactor(lr)
    else:
        raise ValueError(f"unknown optimizer {name!r}; use 'adamw' or 'adafactor'")
    if max_grad_norm:
        transform = optax.chain(optax.clip_by_global_norm(max_grad_norm), transform)
    settings = {"optimizer": name, "learning_rate": learning_rate, "warmup_fraction": warmup_fraction,
                "schedule": schedule, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm}
    return Optimizer(transform, lr, settings)
