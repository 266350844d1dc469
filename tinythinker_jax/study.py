"""`tinythinker study`: the paper's four claims as one resumable grid of pipeline runs on the toy world.

    DIR/study_settings.json             the grid, the world and the extra bindings (a re-run must match them)
    DIR/data/                           the toy world, made once and shared by every cell
    DIR/cells/<stage_type>/seed<k>/     phase 1 only: the full chain and its three ablations
    DIR/cells/full-dpo_<pairs>/seed<k>/ phase 2 with `pairs` (recall_analyze, recall, analyze) over the grid's
                                        iterations; its `sft/` is a link to the full cell's, trained once
    DIR/study.json, study.md, study.png the tables and the plot (`study_report`)

Every cell is a pipeline run directory (`tinythinker report` reads it) and resumes like one: re-running the
same command skips finished cells and continues the first unfinished one. The seed of a cell sets the student's
initialisation, data order, dropout and sampling (`trainer.train.seed`, `iteration.run_iteration.seed`); the
world itself is the same for every seed.
"""

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

from tinythinker_jax import formats
from tinythinker_jax.data import locations
from tinythinker_jax.errors import UserError

# The demo's experiment: the yes/no world on t5_1_0_mini, sized for a laptop CPU.
GIN_FILES = ("gin/runs/pipeline.gin", "gin/experiments/toyworld_yesno_t5_mini_pipeline.gin")
SETTINGS_JSON = "study_settings.json"
PAIR_TYPES = ("recall_analyze", "recall", "analyze")  # the paper's DPO variants: both kinds of pairs, then each


@dataclasses.dataclass(frozen=True)
class World:
    """The toy world a study runs on (`prepare.prepare_toyworld`'s knobs).

    Attributes:
        dataset: The toy-world variant.
        seed: The world's seed: entities, facts, questions and splits.
        num_samples: Teacher rationales per training question.
        teacher_noise: The share of rationales that put the entity in a wrong category.
        reason: Why the study uses this setting, for `study.md`.
    """

    dataset: str = "toyworld_yesno"
    seed: int = 0
    num_samples: int = 2
    teacher_noise: float = 0.0
    reason: str = ""


WORLDS = {
    # Chosen before any phase-2 result was seen, by what the paper's phase 2 is for: a student that sometimes
    # recalls wrong knowledge. With 30% of rationales naming a wrong category, most rationales about an entity
    # still name its own, so the right answer stays learnable, while a student's sampled recalls name a wrong
    # category often enough to give rejected pairs, as a real teacher's mistakes do.
    "noisy": World(teacher_noise=0.3, reason=(
        "30% of the teacher's rationales put the entity in a wrong category (with the gold answer's value), "
        "chosen before any phase-2 result: most rationales about an entity still name its own category, so the "
        "answer stays learnable, while the student learns to recall wrong categories often enough for "
        "self-reflection to have mistakes to correct, as a real teacher's hallucinations leave.")),
    "demo": World(reason="the demo's world: a template teacher that is never wrong."),
}


@dataclasses.dataclass(frozen=True)
class Grid:
    """How much of the study to run.

    Attributes:
        seeds: The student seeds every cell runs with.
        iterations: Self-reflection iterations of each phase-2 cell.
        num_chains: Chains of the self-consistency vote on the full chain's test questions.
        bindings: Gin bindings that size every cell (after the demo's experiment gin).
    """

    seeds: tuple[int, ...]
    iterations: int
    num_chains: int
    bindings: tuple[str, ...] = ()


GRIDS = {
    # The demo's sizes (6 epochs of phase 1, 384 questions sampled per iteration), three seeds.
    "full": Grid(seeds=(0, 1, 2), iterations=3, num_chains=5),
    # One seed, a third of phase 1, one iteration: the grid's every piece in minutes.
    "quick": Grid(seeds=(0,), iterations=1, num_chains=3, bindings=(
        "EPOCHS = 2", "ROUNDS = 2", "REFLECT_MAX_QUESTIONS = 128", "trainer.train.eval_every = 240",
        "trainer.train.max_eval_questions = 50", "iteration.run_iteration.max_eval_questions = 50")),
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One pipeline run of the grid: a phase-1 stage type, and for phase-2 cells the pairs DPO trains on."""

    stage_type: str
    pair_type: Optional[str]
    seed: int

    @property
    def name(self) -> str:
        return self.stage_type if self.pair_type is None else f"{self.stage_type}-dpo_{self.pair_type}"

    def directory(self, out: str) -> str:
        return os.path.join(out, "cells", self.name, f"seed{self.seed}")


def cells(grid: Grid) -> list[Cell]:
    """The grid's cells in running order: per seed, phase 1 of every stage type (full first, which the phase-2
    cells of the seed start from), then each phase-2 variant."""
    return [cell for seed in grid.seeds for cell in (
        [Cell(stage_type, None, seed) for stage_type in formats.STAGE_TYPES]
        + [Cell("full", pair_type, seed) for pair_type in PAIR_TYPES])]


def cell_bindings(cell: Cell, grid: Grid, world: World, out: str) -> list[str]:
    """The gin bindings that make `cell` out of the demo's experiment (after the grid's)."""
    full_chain = cell.stage_type == "full"
    return [f"MODEL_DIR = {cell.directory(out)!r}", f"DATA_DIR = {os.path.join(out, 'data')!r}",
            f"MIXTURE_OR_TASK_NAME = 'tinythinker.{world.dataset}.{cell.stage_type}_stages'",
            f"ITERATIONS = {0 if cell.pair_type is None else grid.iterations}",
            f"REFLECT_STAGE_TYPE = {cell.pair_type or 'recall_analyze'!r}",
            f"TEST_NUM_CHAINS = {grid.num_chains if full_chain else 0}",
            f"trainer.train.seed = {cell.seed}", f"iteration.run_iteration.seed = {cell.seed}"]


def run_study(out: str, grid_name: str = "full", world_name: str = "noisy",
              bindings: Sequence[str] = ()) -> Optional[dict[str, Any]]:
    """Runs (or continues) the study's grid in `out` and writes its report.

    Args:
        out: The study directory.
        grid_name: A key of `GRIDS`.
        world_name: A key of `WORLDS`.
        bindings: Extra gin bindings for every cell (`KEY = VALUE`), after the grid's.

    Returns:
        The study's summary (`study.json`), or None when SIGTERM stopped a cell (run it again to continue).

    Raises:
        UserError: An unknown grid or world, or `out` holding a study of other settings.
    """
    import gin
    from tinythinker_jax import pipeline, study_report
    from tinythinker_jax.commands.reflect import parse_pipeline_gin
    from tinythinker_jax.data import prepare

    grid, world = _lookup(GRIDS, grid_name, "grid"), _lookup(WORLDS, world_name, "world")
    locations.require_local(out, "--out")
    locations.require_writable(out, "--out")
    settings = json.loads(json.dumps({  # as the file holds them (lists, not tuples), to compare with it
        "grid": grid_name, "world": world_name, "bindings": list(bindings),
        "grid_settings": dataclasses.asdict(grid), "world_settings": dataclasses.asdict(world)}))
    _claim(out, settings)
    data_dir = os.path.join(out, "data")
    if not os.path.exists(locations.toy_vocabulary_path(data_dir)):  # written last: a finished preparation
        print(f"toy world ({world_name}: teacher noise {world.teacher_noise:g}, {world.num_samples} rationales "
              f"per question) -> {data_dir}", flush=True)
        prepare.prepare_toyworld(data_dir, world.dataset, world.seed, world.num_samples, world.teacher_noise)
    grid_cells = cells(grid)
    for index, cell in enumerate(grid_cells, start=1):
        print(f"[{index}/{len(grid_cells)}] {cell.name}, seed {cell.seed} -> {cell.directory(out)}", flush=True)
        if cell.pair_type is not None:
            _share_phase_one(Cell("full", None, cell.seed).directory(out), cell.directory(out))
        try:
            parse_pipeline_gin(list(GIN_FILES), [*grid.bindings, *cell_bindings(cell, grid, world, out),
                                                 *bindings])
            state = gin.get_configurable(pipeline.run_pipeline)()
        finally:
            gin.clear_config()
        if state is None:
            return None
    return study_report.write_study_report(out)


def read_settings(out: str) -> dict[str, Any]:
    """The settings `run_study` recorded in `out`."""
    path = os.path.join(out, SETTINGS_JSON)
    if not os.path.exists(path):
        raise UserError(f"{out} holds no study ({SETTINGS_JSON} is missing): run `tinythinker study --out {out}`")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _lookup(table: dict[str, Any], name: str, kind: str) -> Any:
    if name not in table:
        raise UserError(f"unknown study {kind} {name!r}; expected one of {sorted(table)}")
    return table[name]


def _claim(out: str, settings: dict[str, Any]) -> None:
    """Records the study's settings in `out`, or refuses when `out` holds a study of other settings."""
    from tinythinker_jax.data import records

    path = os.path.join(out, SETTINGS_JSON)
    if os.path.exists(path):
        found = read_settings(out)
        if found != settings:
            raise UserError(f"{out} holds a study of other settings (grid {found.get('grid')!r}, world "
                            f"{found.get('world')!r}, bindings {found.get('bindings')}): continue it with those, "
                            f"or choose another --out")
        return
    records.write_json(path, settings)


def _share_phase_one(full_cell: str, cell: str) -> None:
    """Makes `cell/sft` the full cell's phase 1 (a relative link, so the study directory can move)."""
    link = os.path.join(cell, "sft")
    if os.path.islink(link):
        return
    os.makedirs(cell, exist_ok=True)
    os.symlink(os.path.relpath(os.path.join(full_cell, "sft"), cell), link)
