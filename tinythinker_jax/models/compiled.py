"""A model function compiled once per shape: the model's graph is a static argument, its state a traced one.

`nnx.jit` walks the model's graph on every call; splitting the model once and passing the graph as a
(hashable, static) argument keeps each call to a dictionary look-up, which matters in the decoding and
scoring loops that call the same function thousands of times.
"""

from typing import Any, Callable

import jax
from flax import nnx


def jit_on_state(fn: Callable[..., Any], **jit_kwargs: Any) -> jax.stages.Wrapped:
    """`fn(model, *args, **kwargs)` as a jitted `compiled(graphdef, state, *args, **kwargs)`.

    Args:
        fn: A function of a model and arrays.
        **jit_kwargs: Passed to `jax.jit`, e.g. `static_argnames` for `fn`'s settings.

    Returns:
        The compiled function; call it with `nnx.split(model)`'s graph and state, then `fn`'s arguments. It is
        named after `fn` in traces and profiles.
    """

    def compiled(graphdef: nnx.GraphDef, state: nnx.State, *args: Any, **kwargs: Any) -> Any:
        return fn(nnx.merge(graphdef, state), *args, **kwargs)

    # Named after `fn` (not wrapped: jax would read `fn`'s signature for the static arguments).
    compiled.__name__ = compiled.__qualname__ = fn.__name__
    return jax.jit(compiled, static_argnums=0, **jit_kwargs)
