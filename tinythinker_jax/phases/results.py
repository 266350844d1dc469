"""What a finished phase reports, and its `done.json`: one result type and one writer for both phases.

    <phase dir>/done.json   the phase finished: its `PhaseResult`, field by field. Phase 2 starts from a phase
                            whose marker exists; the pipeline skips it and builds `pipeline.json` from it.
"""

import dataclasses
import os
from typing import Any, Optional

from tinythinker_jax.errors import UserError
from tinythinker_jax.phases import markers

DONE = "done.json"


@dataclasses.dataclass(frozen=True)
class PhaseResult:
    """One phase's outcome: phase 1 (`sft`) or a self-reflection iteration (`iteration_<i>`).

    Attributes:
        name: `sft` or `iteration_<i>`.
        step: Training steps done.
        best_accuracy: The best validation accuracy; None (and `best_step` too) only when SIGTERM stopped
            the phase before its first validation.
        best_step: The step of the best model.
        wall_seconds: Wall time per part of the phase (`train`; phase 2 also `generate` and `score`).
        settings: The settings that shaped the result, as the report shows them (batch size, learning rate...).
        pairs: Phase 2's preference pairs per stage (`recall`, `analyze`); empty for phase 1.
        preempted: Whether SIGTERM stopped the phase (it then has no `done.json`; run it again to resume).
    """

    name: str
    step: int
    best_accuracy: Optional[float]
    best_step: Optional[int]
    wall_seconds: dict[str, float]
    settings: dict[str, Any]
    pairs: dict[str, int] = dataclasses.field(default_factory=dict)
    preempted: bool = False


def done_path(phase_dir: str) -> str:
    return os.path.join(phase_dir, DONE)


def write_done(phase_dir: str, result: PhaseResult) -> None:
    """Marks the phase finished with its result (process 0 writes; every process waits for it)."""
    markers.write_marker(done_path(phase_dir), dataclasses.asdict(result))


def read_done(phase_dir: str, before_the_step: bool = False) -> Optional[PhaseResult]:
    """The finished phase's result, or None while it is unfinished.

    Args:
        phase_dir: The phase's directory.
        before_the_step: Read as `markers.read_marker_before_the_step` does, when what follows depends on it
            on every process.

    Raises:
        UserError: When `done.json` is not a phase result (e.g. written by an older version).
    """
    path = done_path(phase_dir)
    fields = markers.read_marker_before_the_step(path) if before_the_step else markers.read_marker(path)
    if fields is None:
        return None
    expected = {field.name for field in dataclasses.fields(PhaseResult)}
    if not isinstance(fields, dict) or not set(fields) <= expected or "name" not in fields:
        raise UserError(f"{path} is not a phase result (expected the fields {sorted(expected)}): it was written by "
                        f"another version; delete it to run the phase's last step again, which resumes from its "
                        f"checkpoints")
    try:
        return PhaseResult(**fields)
    except TypeError as e:  # a required field missing
        raise UserError(f"{path} is not a phase result ({e})") from None
