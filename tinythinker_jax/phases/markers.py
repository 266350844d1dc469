"""Step markers: small JSON files saying a piece of a run is finished, read and written so that every
process of a multi-host run agrees on what is done."""

import json
import os
from typing import Any

import jax

from tinythinker_jax.data import records


def read_marker(path: str) -> dict[str, Any] | None:
    """The marker's JSON object, or None when the step has not finished."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_marker_before_the_step(path: str) -> dict[str, Any] | None:
    """A step's marker as found before the step starts, the same on every process.

    The processes sync once all have read it, so whether a step is redone never depends on their timing:
    otherwise a lagging process could find a marker that process 0 wrote after a step whose work took no
    collective, skip the step and the marker's write, and leave the others waiting in `write_marker`."""
    marker = read_marker(path)
    sync_processes(f"read {path}")
    return marker


def write_marker(path: str, info: dict[str, Any]) -> None:
    """Process 0 writes a step's marker (atomically); every process waits for it, so all agree the step is done."""
    if jax.process_index() == 0:
        records.write_json(path, info)
    sync_processes(f"written {path}")


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-host run (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
