"""Optimizers and learning-rate schedules, chosen in gin."""

from typing import Any, Callable, Mapping, NamedTuple

import jax
import optax

from tinythinker_jax.models import t5


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
        transform = per_layer(optax.adafactor(lr), t5.is_stacked_layer_path)
    else:
        raise ValueError(f"unknown optimizer {name!r}; use 'adamw' or 'adafactor'")
    if max_grad_norm:
        transform = optax.chain(optax.clip_by_global_norm(max_grad_norm), transform)
    settings = {"optimizer": name, "learning_rate": learning_rate, "warmup_fraction": warmup_fraction,
                "schedule": schedule, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm}
    return Optimizer(transform, lr, settings)


def per_layer(inner: optax.GradientTransformation,
              is_stacked: Callable[[tuple[Any, ...]], bool]) -> optax.GradientTransformation:
    """`inner` with every stacked parameter (`is_stacked(path)`: scanned layers, the layer on its leading axis)
    updated layer by layer, as if the layers were separate parameters.

    Adafactor's statistics are per parameter (its update clipping by root mean square, its scaling by the
    parameter's own), so over a stack of layers they would mix the layers. With nothing stacked the state is
    exactly `inner`'s, so unscanned runs and their checkpoints are unchanged.
    """

    def labels(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(lambda path, _: "stacked" if is_stacked(path) else "other", params)

    split = optax.multi_transform({"stacked": _vmapped(inner), "other": inner}, labels)

    def has_stacked(params: Any) -> bool:
        return any(is_stacked(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0])

    def init(params: Any) -> Any:
        return split.init(params) if has_stacked(params) else inner.init(params)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return split.update(updates, state, params) if has_stacked(updates) else inner.update(updates, state, params)

    return optax.GradientTransformation(init, update)


def _vmapped(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` mapped over the leading axis of every parameter (none at all: `inner` itself, which
    `multi_transform` asks for when a partition is empty)."""

    def init(params: Any) -> Any:
        return jax.vmap(inner.init)(params) if jax.tree.leaves(params) else inner.init(params)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        if not jax.tree.leaves(updates):
            return inner.update(updates, state, params)
        return jax.vmap(inner.update)(updates, state, params)

    return optax.GradientTransformation(init, update)
