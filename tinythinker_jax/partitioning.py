"""Logical axis names to a ('data', 'model') device mesh, T5X-style.

Every parameter carries `logical_axes` metadata (`embed`, `mlp`, `heads`, `kv`, `vocab`, ...) and the model
marks its main activations with `with_logical_constraint`. A list of rules maps those names to mesh axes, so
one model runs on one CPU, fake host devices, a GPU or a TPU slice, with data, model or data+parameter
(FSDP-like) sharding. A `Partitioner`, built once from the run gins (`gin/runs/*.gin`) and passed to every
phase, owns the mesh, the rules and how batches, models and results move between hosts and devices:

    MESH_DATA = -1                   # Partitioner.data: the devices the model axis leaves
    MESH_MODEL = 2                   # Partitioner.model
    PARAMETER_PARTITIONING_DIMS = 2  # Partitioner.parameter_partitioning_dims

Activations are only constrained inside `activate(mesh, rules)`; outside it the model runs unsharded.
"""

import contextlib
import dataclasses
import functools
import threading
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence, TypeVar, cast

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalRules = tuple[tuple[str, str | None], ...]
ModuleT = TypeVar("ModuleT", bound=nnx.Module)
MESH_AXES = ("data", "model")


def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1, parameter_partitioning_dims: int = 1
) -> LogicalRules:
    """T5X's default rules: batch over `data`; heads, mlp and vocab over `model`.

    `parameter_partitioning_dims=2` also splits every parameter's `embed` axis over `data` (FSDP-like:
    the data-parallel replicas hold a slice of each weight). `activation_partitioning_dims=2` splits the
    activations' `embed` axis over `model` as well, which helps when `model` is large.
    A name may appear in several rules: the first one whose mesh axis is still free for the array wins, so
    activations of shape (batch, length, embed) keep `data` for batch even when `embed` -> `data` exists.
    """
    if activation_partitioning_dims not in (1, 2) or parameter_partitioning_dims not in (1, 2):
        raise ValueError("activation_partitioning_dims and parameter_partitioning_dims must be 1 or 2")
    rules: list[tuple[str, str | None]] = [
        ("batch", "data"),
        ("vocab", "model"),
        ("mlp", "model"),
        ("heads", "model"),
        ("kv", None),
        ("length", None),
        ("relpos_buckets", None),
        ("layers", None),  # scanned layers' stacking axis: each device holds a slice of every layer
    ]
    if parameter_partitioning_dims == 2:
        rules.append(("embed", "data"))
    if activation_partitioning_dims == 2:
        rules.append(("embed", "model"))
    rules.append(("embed", None))
    return tuple(rules)


def mesh_shape(data: int, model: int, num_devices: int) -> tuple[int, int]:
    """The (data, model) sizes of a mesh over `num_devices`; -1 on one axis takes the devices the other leaves.

    Raises:
        ValueError: When both axes are -1, or the sizes do not use every device.
    """
    if data == -1 and model == -1:
        raise ValueError("at most one of data, model may be -1")
    if data == -1:
        data = num_devices // model
    if model == -1:
        model = num_devices // data
    if data * model != num_devices:
        raise ValueError(f"mesh data={data} x model={model} does not use all {num_devices} devices")
    return data, model


def create_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'model') mesh; -1 on one axis takes whatever devices the other leaves."""
    devices = list(devices if devices is not None else jax.devices())
    data, model = mesh_shape(data, model, len(devices))
    return jax.make_mesh(
        (data, model),
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=devices,
    )


def logical_to_mesh_axes(logical_axes: Sequence[str | None], rules: LogicalRules) -> PartitionSpec:
    used: set[str] = set()
    mesh_axes = []
    for name in logical_axes:
        chosen = None
        for rule_name, mesh_axis in rules:
            if rule_name == name and (mesh_axis is None or mesh_axis not in used):
                chosen = mesh_axis
                break
        if chosen is not None:
            used.add(chosen)
        mesh_axes.append(chosen)
    return PartitionSpec(*mesh_axes)


class _ActiveRules(threading.local):
    rules: LogicalRules | None = None


_ACTIVE = _ActiveRules()


@contextlib.contextmanager
def activate(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
    """Runs (and traces) the model on `mesh` with activations constrained by `rules`.

    Jitted functions must be traced inside this context to pick up the constraints.
    """
    previous = _ACTIVE.rules
    _ACTIVE.rules = rules
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVE.rules = previous


def with_logical_constraint(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    if _ACTIVE.rules is None or jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_mesh_axes(logical_axes, _ACTIVE.rules))


def is_variable(x: Any) -> bool:
    """`is_leaf` for tree maps over an `nnx.State` that should see its variables (and their metadata)."""
    return isinstance(x, nnx.Variable)


def param_partition_specs(state: nnx.State, rules: LogicalRules) -> Any:
    """The PartitionSpec of every variable in `state`, from its `logical_axes` metadata."""

    def spec(variable: nnx.Variable) -> PartitionSpec:
        axes = variable.get_metadata().get("logical_axes")
        return PartitionSpec() if axes is None else logical_to_mesh_axes(axes, rules)

    return jax.tree.map(spec, state, is_leaf=is_variable)


def param_shardings(state: nnx.State, mesh: Mesh, rules: LogicalRules) -> Any:
    specs = param_partition_specs(state, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def abstract_sharded(state: nnx.State, mesh: Mesh, rules: LogicalRules) -> nnx.State:
    """`state`'s shapes, each with the sharding the rules give it on `mesh`: a restore or compile target that
    allocates nothing."""
    return jax.tree.map(
        lambda s, v: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)), param_shardings(state, mesh, rules),
        state, is_leaf=is_variable)


def shard_model(model: nnx.Module, mesh: Mesh, rules: LogicalRules) -> nnx.Module:
    """Places `model`'s variables on `mesh` following `rules` (in place) and returns it."""
    state = nnx.state(model)
    shardings = param_shardings(state, mesh, rules)
    nnx.update(model, jax.tree.map(lambda v, s: jax.device_put(v[...], s), state, shardings, is_leaf=is_variable))
    return model


def create_sharded_model(create_fn: Callable[[], nnx.Module], mesh: Mesh, rules: LogicalRules) -> nnx.Module:
    """Runs `create_fn` under jit so each device only ever holds its own slice of every parameter."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(create_fn))
    shardings = param_shardings(abstract_state, mesh, rules)
    state = jax.jit(lambda: nnx.state(create_fn()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def restore_target(tree: Any) -> Any:
    """Abstract arrays shaped, typed and laid out like `tree`'s, for Orbax to restore into.

    An array without a sharding lands on this host's first device: without a target sharding Orbax would
    reuse the devices of the run that saved it, which a checkpoint written on another topology (a multi-host
    job) does not have here.
    """
    def abstract(x: Any) -> jax.ShapeDtypeStruct:
        sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(abstract, tree)


def optimizer_state_shardings(transform: optax.GradientTransformation, params: Any, mesh: Mesh) -> Any:
    """Where `transform`'s state for `params` (arrays or shapes, each with its sharding) lives: every
    parameter-shaped leaf (Adam's moments, also inside a partitioned or per-layer transform's state) sharded as
    its parameter, the rest (step counts, Adafactor's factored statistics) replicated. Left to XLA,
    `jax.jit(init)` replicates all of it, which under parameter sharding keeps two full copies of the model on
    every device.

    A state leaf belongs to the parameter whose tree path ends its own (optax keeps the parameters' tree
    inside its states), so this needs no knowledge of the transform's state types.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    by_path = {tuple(path): param for path, param in jax.tree_util.tree_flatten_with_path(params)[0]}

    def sharding(path: tuple[Any, ...], leaf: Any) -> Any:
        for start in range(len(path)):
            param = by_path.get(tuple(path[start:]))
            if param is not None:
                return param.sharding if leaf.shape == param.shape else replicated
        return replicated

    return jax.tree_util.tree_map_with_path(sharding, jax.eval_shape(transform.init, params))


def batch_sharding(mesh: Mesh, rules: LogicalRules, ndim: int = 2) -> NamedSharding:
    """Sharding of a (batch, length, ...) input array."""
    return NamedSharding(mesh, logical_to_mesh_axes((("batch", "length") + (None,) * ndim)[:ndim], rules))


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, rules: LogicalRules) -> dict[str, jax.Array]:
    """This process's rows of every array, assembled into global arrays split on `data`."""
    return {name: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, array.ndim), array)
            for name, array in local.items()}


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of `x` on this host, also when it spans other processes' devices (multi-host)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@dataclasses.dataclass(frozen=True)
class Partitioner:
    """Where a run's arrays live, built once (from gin) and passed to every phase: the ('data', 'model')
    mesh, the logical-axis rules on it, this process's rows of a global batch, and host transfer. T5X's
    `PjitPartitioner` has this part there. The mesh is made on first use, so building a partitioner (as gin
    does while it parses) touches no device.

    Attributes:
        data: Devices on the `data` axis; -1 takes the devices the `model` axis leaves.
        model: Devices on the `model` axis (heads, feed-forward and vocabulary are split over it).
        parameter_partitioning_dims: 2 also splits every parameter's `embed` axis over `data` (FSDP-like).
    """

    data: int = -1
    model: int = 1
    parameter_partitioning_dims: int = 1

    @functools.cached_property
    def mesh(self) -> Mesh:
        return create_mesh(data=self.data, model=self.model)

    @functools.cached_property
    def rules(self) -> LogicalRules:
        return standard_logical_axis_rules(parameter_partitioning_dims=self.parameter_partitioning_dims)

    def activate(self) -> ContextManager[None]:
        """Runs and traces the model on the mesh with its activations constrained by the rules."""
        return activate(self.mesh, self.rules)

    def create_model(self, create_fn: Callable[[], ModuleT]) -> ModuleT:
        """`create_fn`'s model with every device holding only its slice of each parameter."""
        return cast(ModuleT, create_sharded_model(create_fn, self.mesh, self.rules))

    def local_rows(self, global_rows: int) -> slice:
        """This process's rows of a global batch of `global_rows` rows (every process feeds an equal share).

        Raises:
            ValueError: When the processes cannot share the rows equally.
        """
        count, index = jax.process_count(), jax.process_index()
        if global_rows % count:
            raise ValueError(f"a batch of {global_rows} rows is not divisible by {count} processes")
        share = global_rows // count
        return slice(index * share, (index + 1) * share)

    def global_batch(self, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows (`local_rows`) of every array, assembled into global arrays on the mesh."""
        return global_batch(local, self.mesh, self.rules)

    @staticmethod
    def to_host(x: jax.Array) -> np.ndarray:
        """The whole value of `x` on this host, also when it spans other processes' devices."""
        return to_host(x)
