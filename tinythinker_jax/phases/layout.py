"""A pipeline run directory: where each phase lives under `MODEL_DIR`, and which model each one starts from.

    MODEL_DIR/sft/                        phase 1; its best/ is M(0)
    MODEL_DIR/reflect/iteration_<i>/      self-reflection iteration i, started from M(i-1); its best/ is M(i)
"""

import os

from tinythinker_jax.phases import train_checkpoints

SFT = "sft"  # phase 1's name, in its result and as its directory


def sft_dir(model_dir: str) -> str:
    return os.path.join(model_dir, SFT)


def iteration_name(iteration: int) -> str:
    return f"iteration_{iteration}"


def iteration_dir(model_dir: str, iteration: int) -> str:
    return os.path.join(model_dir, "reflect", iteration_name(iteration))


def previous_dir(model_dir: str, iteration: int) -> str:
    """Where M(iteration - 1) comes from: phase 1 for the first iteration, else the previous iteration."""
    return sft_dir(model_dir) if iteration == 1 else iteration_dir(model_dir, iteration - 1)


def reference_checkpoint(model_dir: str, iteration: int) -> str:
    """M(iteration - 1), the best model of the previous phase."""
    return train_checkpoints.best_dir(previous_dir(model_dir, iteration))
