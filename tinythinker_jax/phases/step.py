"""One optimisation step, jitted once: the loss's gradient, the optimizer update, donated buffers.

Kept apart from `loop` (which adds data, checkpoints and metrics writers) so that anything needing only
the step, a benchmark on a bare accelerator machine say, imports nothing beyond jax, flax and optax.
"""

import functools
from typing import Callable

import jax
import optax
from flax import nnx

from tinythinker_jax.models.t5 import T5Transformer

# loss_fn(model, batch, dropout_rng) -> (loss, device metrics); a "tokens" metric is summed for tokens/s.
LossFn = Callable[[T5Transformer, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def make_train_step(graphdef: nnx.GraphDef, rest: nnx.State, transform: optax.GradientTransformation, loss_fn: LossFn):
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, batch, step, rng):
        dropout_rng = jax.random.fold_in(rng, step)

        def loss_of(params):
            return loss_fn(nnx.merge(graphdef, params, rest), batch, dropout_rng)

        (loss, values), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = transform.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {**values, "loss": loss, "grad_norm": optax.tree.norm(grads)}

    return train_step

