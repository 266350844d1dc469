"""Never lose work: a phase's training-state checkpoints (latest N) and its best model, both written atomically.

    MODEL_DIR/checkpoints/<step>/   Orbax: params, optimizer state, RNG key; JSON: step, data position,
                                    best accuracy. Orbax finalises a step by renaming its temporary
                                    directory, so a save cut short by a dying process is ignored on restart.
                                    A finalised step damaged since (a truncated file) is found on restore:
                                    the run resumes from the newest step that restores whole.
    MODEL_DIR/checkpoints_unreadable/<step>/   such a damaged step, moved aside and named in a warning
    MODEL_DIR/best/                 the best model by validation accuracy, as a model checkpoint
                                    (`tinythinker_jax.models.checkpoints`), plus best.json; replaced by
                                    renaming a complete directory, so it is always whole.
"""

import json
import os
import shutil
import sys
import time
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from tinythinker_jax import partitioning
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import checkpoints as model_checkpoints
from tinythinker_jax.models.t5 import T5Config
from tinythinker_jax.phases.markers import sync_processes

BEST_DIR = "best"
BEST_INFO = "best.json"
CHECKPOINTS_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints_unreadable"


class TrainCheckpoints:
    def __init__(self, model_dir: str, keep: int):
        if jax.process_index() == 0:
            _restore_interrupted_best(model_dir)
        self.model_dir = os.path.abspath(model_dir)
        self.directory = os.path.join(self.model_dir, CHECKPOINTS_DIR)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def restore_latest(self, target: dict[str, Any]) -> Optional[tuple[dict[str, Any], dict[str, Any]]]:
        """The newest step that restores whole (arrays shaped like `target`, and the JSON info), or None
        when there is no checkpoint.

        Orbax's commit marker only says that a save finished; a file damaged since (a full disk, a copy cut
        short) shows only when it is read. Newer steps that fail are moved to MODEL_DIR/checkpoints_unreadable/
        (so the resumed run can save those steps again), each with a warning naming it and why.

        Raises:
            UserError: when no step restores; nothing is moved then, since a cause shared by every step (a
                changed model config) is no damage.
        """
        failures: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored, error = self.restore(step, target), None
            except Exception as e:  # Orbax raises bare Exceptions for a truncated array file
                restored, error = None, e
            reason = _agreed_failure(error)
            if reason is None:
                self._set_aside(failures, step)
                return restored
            failures.append((step, reason))
        if failures:
            reasons = "; ".join(f"step {step}: {reason}" for step, reason in failures)
            raise UserError(f"no checkpoint in {self.directory} can be restored ({reasons}); if the model "
                            f"or optimizer settings changed, restore them, else delete the directory to start over")
        return None

    def _set_aside(self, failures: list[tuple[int, str]], resumed: int) -> None:
        """Moves the failed steps out of Orbax's sight and says so; process 0 moves, every process reloads."""
        if not failures:
            return
        aside = os.path.join(self.model_dir, UNREADABLE_DIR)
        moved = {step: os.path.join(aside, f"{step}-{int(time.time())}") for step, _ in failures}
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            for step, destination in moved.items():
                os.rename(os.path.join(self.directory, str(step)), destination)
        sync_processes("unreadable checkpoints set aside")
        self.manager.reload()
        for step, reason in failures:
            print(f"warning: skipped checkpoint step {step} of {self.directory}: it cannot be restored ({reason}); "
                  f"moved it to {moved[step]} and resuming from step {resumed}", file=sys.stderr)

    def save(self, step: int, arrays: dict[str, Any], info: dict[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(arrays), info=ocp.args.JsonSave(info)))
        self.manager.wait_until_finished()

    def restore(self, step: int, target: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Arrays shaped and sharded like `target`, and the JSON info."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(partitioning.restore_target(target)), info=ocp.args.JsonRestore()))
        return restored["arrays"], restored["info"]

    def close(self) -> None:
        self.manager.close()


def _agreed_failure(error: Optional[Exception]) -> Optional[str]:
    """Why a step failed to restore on this process or another, or None when every process restored it:
    all must resume from the same step."""
    failed = error is not None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        failed = bool(np.any(multihost_utils.process_allgather(np.array(failed))))
    if not failed:
        return None
    return model_checkpoints.error_summary(error) if error is not None else "unreadable on another process"


def best_dir(model_dir: str) -> str:
    return os.path.join(model_dir, BEST_DIR)


def save_best(model_dir: str, params: Any, config: T5Config, vocab_path: str, info: dict[str, Any]) -> None:
    """Replaces MODEL_DIR/best with a complete model checkpoint; every process writes its part, process 0 renames."""
    staging = os.path.join(model_dir, f"{BEST_DIR}.staging")
    if jax.process_index() == 0 and os.path.exists(staging):
        shutil.rmtree(staging)
    sync_processes("best model: staging cleared")
    model_checkpoints.save_checkpoint(staging, params, config, vocab_path)
    sync_processes("best model: staging written")  # no rename while another process is still writing
    if jax.process_index() != 0:
        return
    with open(os.path.join(staging, BEST_INFO), "w") as f:
        json.dump(info, f, indent=2)
    previous = os.path.join(model_dir, f"{BEST_DIR}.previous")
    if os.path.exists(previous):
        shutil.rmtree(previous)
    if os.path.exists(best_dir(model_dir)):
        os.rename(best_dir(model_dir), previous)
    os.rename(staging, best_dir(model_dir))
    shutil.rmtree(previous, ignore_errors=True)


def _restore_interrupted_best(model_dir: str) -> None:
    """A process that died between `save_best`'s two renames left the old best model as best.previous and
    no best/: it is put back, and the resumed run, whose checkpoint records that model's accuracy, goes on."""
    previous = os.path.join(model_dir, f"{BEST_DIR}.previous")
    if os.path.isdir(previous) and not os.path.exists(best_dir(model_dir)):
        os.rename(previous, best_dir(model_dir))
