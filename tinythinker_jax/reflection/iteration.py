"""Phase 2, one self-reflection iteration: M(i-1) samples and scores preference pairs, M(i) is trained on
them by DPO+RPO, and the best model by validation accuracy becomes M(i).

    MODEL_DIR/sft/best                                   M(0), phase 1's best model
    MODEL_DIR/reflect/iteration_<i>/
        pairs/chunks/<k>.jsonl                           sampled rows, one file per chunk of questions
        pairs/chunks/settings.json                       what sampled them; other settings stop a resume
        pairs/{recall,analyze}_pairs.jsonl, counts.json  "generate" is done when counts.json exists
        pairs/*_pairs_scored.jsonl, scored.json          "score" is done when scored.json exists
        checkpoints/, metrics.jsonl, tensorboard/        "train", resumable at any step
        best/                                            M(i)
        done.json                                        the iteration is done

A step whose marker exists is never redone, so re-running the same command continues where it stopped.
"""

import dataclasses
import functools
import os
import time
from typing import Callable, Optional

import jax
from flax import nnx

import tinythinker_tasks
from tinythinker_jax import chains, partitioning
from tinythinker_jax.data import locations, records
from tinythinker_jax.models import t5
from tinythinker_jax.reflection import data as pair_data
from tinythinker_jax.reflection import losses, sampling
from tinythinker_jax.training import checkpointing, loop, optimizers, schedule, streams, trainer
from tinythinker_jax.training.checkpointing import read_marker, read_marker_before_the_step, write_marker

SFT = "sft"
# Which pair sets DPO trains on (the paper's ablations); both are always generated, since analyze
# pairs start from the chosen recalls.
STAGE_TYPES = {"recall": ("recall",), "analyze": ("analyze",), "recall_analyze": ("recall", "analyze")}


def sft_dir(model_dir: str) -> str:
    return os.path.join(model_dir, SFT)


def iteration_dir(model_dir: str, iteration: int) -> str:
    return os.path.join(model_dir, "reflect", f"iteration_{iteration}")


def previous_dir(model_dir: str, iteration: int) -> str:
    """Where M(iteration - 1) comes from: phase 1 for the first iteration, else the previous iteration."""
    return sft_dir(model_dir) if iteration == 1 else iteration_dir(model_dir, iteration - 1)


def reference_checkpoint(model_dir: str, iteration: int) -> str:
    """M(iteration - 1), the best model of the previous phase."""
    return checkpointing.best_dir(previous_dir(model_dir, iteration))


def pair_blocks(counts: dict[str, int], stage_type: str, batch_size: int) -> tuple[tuple[str, int], ...]:
    """The paper's blocks: recall = one pass over the recall pairs (pairs // batch + 1 steps), analyze =
    (analyze pairs // recall pairs + 1) x the recall block; stages without pairs are left out."""
    if counts["recall"] == 0:
        return ()
    recall_block = counts["recall"] // batch_size + 1
    lengths = {"recall": recall_block, "analyze": (counts["analyze"] // counts["recall"] + 1) * recall_block}
    return tuple((stage, lengths[stage]) for stage in STAGE_TYPES[stage_type] if counts[stage] > 0)


@dataclasses.dataclass(frozen=True)
class IterationResult:
    iteration: int
    best_accuracy: float
    best_step: int
    pairs: dict[str, int]
    wall_seconds: dict[str, float]  # per step: generate, score, train
    preempted: bool = False


def run_iteration(
    *,
    model_dir: str,
    iteration: int,
    mixture_or_task_name: str,
    task_feature_lengths: dict[str, int],
    model_config: t5.T5Config,
    stage_type: str = "recall_analyze",
    batch_size: int = 32,
    rounds: int = 10,
    beta: float = 0.5,
    alpha: float = 0.5,
    data_dir: Optional[str] = None,
    vocabulary_path: Optional[str] = None,
    sampling_settings: sampling.SamplingSettings = sampling.SamplingSettings(),
    chain_settings: chains.ChainSettings = chains.ChainSettings(),
    create_optimizer: Callable[[int], optimizers.Optimizer] = optimizers.create_optimizer,
    max_questions: Optional[int] = None,
    max_eval_questions: Optional[int] = None,
    seed: int = 0,
    mesh_data: int = -1,
    mesh_model: int = 1,
    parameter_partitioning_dims: int = 1,
    keep_checkpoints: int = 2,
    log_every: int = 10,
) -> IterationResult:
    """Iteration `iteration` (1, 2, ...) under `model_dir`; `max_questions` samples on the first training
    questions only (the paper uses all)."""
    if stage_type not in STAGE_TYPES:
        raise ValueError(f"unknown reflection stage type {stage_type!r}; expected one of {sorted(STAGE_TYPES)}")
    if iteration < 1:
        raise ValueError(f"ITERATION is {iteration}; iterations count from 1 (iteration 1 starts from phase 1)")
    locations.require_local(model_dir)
    out_dir = iteration_dir(model_dir, iteration)
    done = read_marker_before_the_step(os.path.join(out_dir, checkpointing.DONE))
    if done is not None:
        return IterationResult(**done)
    # An interrupted phase already has a best/ (its best model so far), which is not M(i-1) yet.
    previous = previous_dir(model_dir, iteration)
    if read_marker(os.path.join(previous, checkpointing.DONE)) is None:
        phase = "phase 1" if iteration == 1 else f"iteration {iteration - 1}"
        raise FileNotFoundError(f"iteration {iteration} starts from M({iteration - 1}), the best model of {phase}, "
                                f"but {phase} is not finished (no {os.path.join(previous, checkpointing.DONE)}): "
                                f"run {phase} first, or again to finish it")
    reference_path = reference_checkpoint(model_dir, iteration)
    dataset, chain_type, vocabulary = trainer.setup_data(mixture_or_task_name, data_dir, vocabulary_path, model_config)
    data_dir = data_dir or locations.dataset_dir(dataset)
    model_config = model_config.replace(dropout_rate=0.0)
    mesh = partitioning.create_mesh(data=mesh_data, model=mesh_model)
    rules = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=parameter_partitioning_dims)
    pairs_dir = os.path.join(out_dir, "pairs")
    validate = functools.partial(
        trainer.validation_accuracy, questions=tinythinker_tasks.load_questions(dataset, "validation")[:max_eval_questions],
        vocabulary=vocabulary, stage_type=chain_type, settings=chain_settings)

    with partitioning.activate(mesh, rules):
        load_reference = lambda: trainer.build_model(model_config, reference_path, seed, mesh, rules)  # noqa: E731
        counts = read_marker_before_the_step(os.path.join(pairs_dir, "counts.json"))
        if counts is None:
            started = time.time()
            questions = tinythinker_tasks.load_questions(dataset, "train")[:max_questions]
            teacher = {r.question.id: r.rationales
                       for r in records.read_teacher_records(locations.teacher_path(data_dir))}
            counts = sampling.generate_pairs(
                load_reference(), vocabulary, questions, teacher, pairs_dir, chain_settings, sampling_settings,
                seed=seed * 1000 + iteration, write=jax.process_index() == 0)
            counts = {**counts, "questions": len(questions), "wall_seconds": time.time() - started}
            write_marker(os.path.join(pairs_dir, "counts.json"), counts)
        print(f"iteration {iteration}: {counts['recall']} recall pairs, {counts['analyze']} analyze pairs "
              f"from {counts['questions']} questions")

        def pair_task(stage: str, scored: bool) -> str:
            name = tinythinker_tasks.pair_task_name(dataset, iteration, stage, scored)
            tinythinker_tasks.register_pair_task(name, sampling.pairs_path(pairs_dir, stage, scored),
                                                 vocabulary.sentencepiece_model_file, scored)
            return name

        stages = [stage for stage in STAGE_TYPES[stage_type] if counts[stage] > 0]
        scored = read_marker_before_the_step(os.path.join(pairs_dir, "scored.json"))
        if scored is None:
            started, reference = time.time(), load_reference()
            for stage in stages:
                arrays = pair_data.load_pair_arrays(pair_task(stage, scored=False), task_feature_lengths)
                scores = pair_data.score_pairs(reference, arrays, batch_size, mesh, rules)
                if jax.process_index() == 0:
                    pair_data.write_scored_pairs(sampling.pairs_path(pairs_dir, stage, scored=True),
                                                 pair_data.read_pairs(sampling.pairs_path(pairs_dir, stage)), scores)
            del reference
            scored = {"stages": stages, "wall_seconds": time.time() - started}
            write_marker(os.path.join(pairs_dir, "scored.json"), scored)

        started = time.time()
        blocks = pair_blocks(counts, stage_type, batch_size)
        if not blocks:
            # Nothing to learn from (every sampled chain agreed with the gold answer): M(i) = M(i-1).
            policy = load_reference()
            accuracy, step = validate(policy), 0
            checkpointing.save_best(out_dir, nnx.state(policy), model_config, vocabulary.sentencepiece_model_file,
                                    {"step": 0, "validation_accuracy": accuracy})
            result = loop.TrainResult(0, accuracy, step, False)
        else:
            pair_streams = {
                stage: streams.Stream(pair_data.load_pair_arrays(pair_task(stage, scored=True), task_feature_lengths),
                                      batch_size, seed=seed * 1000 + index, weight_field="pair_weights")
                for index, stage in enumerate(stages)}
            block_schedule = schedule.BlockSchedule(blocks, {s: st.num_batches for s, st in pair_streams.items()})
            # Every block covers its stream at least once, so a round of blocks is one pass over the pairs.
            round_steps = block_schedule.steps_per_epoch
            result = loop.Loop(
                model_dir=out_dir, name=f"reflect {iteration}", model=load_reference(), model_config=model_config,
                vocab_path=vocabulary.sentencepiece_model_file, optimizer=create_optimizer(rounds * round_steps),
                loss_fn=losses.dpo_loss_fn(beta, alpha), streams=pair_streams, blocks=block_schedule,
                total_steps=rounds * round_steps, eval_every=round_steps, validate=validate, mesh=mesh, rules=rules,
                batch_size=batch_size, seed=seed, keep_checkpoints=keep_checkpoints, log_every=log_every,
            ).run()
    wall = {"generate": counts["wall_seconds"], "score": scored["wall_seconds"], "train": time.time() - started}
    outcome = IterationResult(iteration, result.best_accuracy, result.best_step,
                              {stage: counts[stage] for stage in sampling.PAIR_STAGES}, wall, result.preempted)
    if not result.preempted:
        write_marker(os.path.join(out_dir, checkpointing.DONE), dataclasses.asdict(outcome))
    return outcome
