"""A floor under the memory a step needs, checked before any set-up.

A batch too large by orders of magnitude should be refused in one line at the start, not after minutes of
data loading by an allocation error or, on a CPU, by the kernel's out-of-memory killer (which prints
nothing). The floor counts only what every step surely holds at once, so it never refuses a run that fits:
the float32 parameters and their gradients, and the logits of one target position per row. Real steps need
far more (activations over whole sequences, the optimizer's state); `RESOURCE_EXHAUSTED` errors from the
first steps are turned into one line by `phases.loop`.
"""

import math
import os
from typing import Any, Callable, Mapping, cast

import jax
from flax import nnx

from tinythinker_jax import chains, gin_utils
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import t5

PARAMETER_BYTES = 4  # parameters are always float32
GIB = 2**30


def parameter_count(config: t5.T5Config) -> int:
    """The model's parameters, counted from shapes alone (nothing is allocated)."""
    params = nnx.state(t5.abstract_model(config), nnx.Param)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def floor_bytes(config: t5.T5Config, rows: int, trains: bool) -> int:
    """The least memory a step over `rows` rows can take, over all devices together.

    Args:
        config: The model.
        rows: Rows in one step (a DPO step's chosen and rejected rows count separately).
        trains: Whether the step computes gradients (which are as large as the parameters).

    Returns:
        Bytes: the parameters (and gradients) plus one position's logits per row, in the compute dtype.
    """
    weights = parameter_count(config) * PARAMETER_BYTES * (2 if trains else 1)
    return weights + rows * config.vocab_size * config.compute_dtype.itemsize


def available_bytes() -> tuple[int, str]:
    """The memory of every device of the run together, and what it is, for a message: the accelerators'
    allocator limits, or each host's physical memory when the devices are CPUs (which share it)."""
    limits = [(device.memory_stats() or {}).get("bytes_limit") for device in jax.local_devices()]
    if all(limits) and jax.default_backend() != "cpu":
        total = sum(cast(list[int], limits)) * jax.process_count()  # all() above ruled out a missing limit
        return total, f"{jax.device_count()} {jax.default_backend()} devices with {total / GIB:,.1f} GiB together"
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * jax.process_count()
    return host, f"{host / GIB:,.1f} GiB of host memory"


def require_fits(fn: Callable, param: str, rows_per_unit: int, value: int, config: t5.T5Config,
                 trains: bool) -> None:
    """Refuses `fn`'s batch setting `param` when even the floor of its step exceeds the run's memory.

    Args:
        fn: The configurable the setting belongs to (for its name in the message).
        param: The setting, e.g. "batch_size".
        rows_per_unit: Rows per unit of the setting (2 for a DPO pair).
        value: The setting's value.
        config: The model.
        trains: Whether the step computes gradients.

    Raises:
        UserError: Naming the setting, the floor and the memory.
    """
    needed = floor_bytes(config, rows_per_unit * value, trains)
    memory, described = available_bytes()
    if needed > memory:
        raise UserError(f"{gin_utils.setting_name(fn, param)} is {value}: one step needs at least "
                        f"{needed / GIB:,.1f} GiB (parameters{' and gradients' if trains else ''} and one position's "
                        f"logits per row), more than the {described}; lower it")


def require_chain_batch_fits(settings: chains.ChainSettings, config: t5.T5Config) -> None:
    """Refuses a chain batch (`chains.ChainSettings.batch_size` decoded rows) whose step cannot fit."""
    require_fits(chains.ChainSettings, "batch_size", 1, settings.batch_size, config, trains=False)


def require_phase_fits(fn: Callable, arguments: Mapping[str, Any], rows_per_example: int) -> None:
    """Refuses a training phase whose step (`batch_size` examples of `rows_per_example` rows) or validation
    chains cannot fit. A pipeline run without gin binding the phase has no model to check yet.

    Args:
        fn: The phase (`trainer.train`, `iteration.run_iteration`), for the setting's name.
        arguments: Its arguments, `model_config`, `batch_size` and `chain_settings` among them.
        rows_per_example: 1 for SFT; 2 for DPO, which runs the policy on the chosen and the rejected text.
    """
    config = arguments.get("model_config")
    if config is not None:
        require_fits(fn, "batch_size", rows_per_example, arguments["batch_size"], config, trains=True)
        require_chain_batch_fits(arguments["chain_settings"], config)
