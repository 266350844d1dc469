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

import functools
import os
import time
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
from flax import nnx

import tinythinker_tasks
from tinythinker_jax import chains, evaluation, gin_utils, memory, partitioning
from tinythinker_jax.data import lengths, locations, records
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import t5
from tinythinker_jax.phases import layout, loop, optimizers, results, schedule, setup, streams, train_checkpoints
from tinythinker_jax.phases.markers import read_marker_before_the_step, write_marker
from tinythinker_jax.reflection import data as pair_data
from tinythinker_jax.reflection import losses, sampling

# The pair sets each phase-2 stage type trains on (the paper's DPO ablations; `formats.STAGE_TYPES` are the
# chain's stage types). Both are always generated, since analyze pairs start from the chosen recalls.
PAIR_STAGE_TYPES = {"recall": ("recall",), "analyze": ("analyze",), "recall_analyze": ("recall", "analyze")}


def pair_blocks(counts: dict[str, int], stage_type: str, batch_size: int) -> tuple[tuple[str, int], ...]:
    """The blocks of the official `dpo.py` (`run_dpo`).

    Recall: recall pairs // batch + 1 steps. Analyze: (analyze pairs // recall pairs + 1) x the recall
    block when both are trained; in the analyze-only ablation (and, never produced by sampling, analyze
    pairs without recall pairs), analyze pairs // batch + 1 steps.

    Args:
        counts: Pairs per stage (`recall`, `analyze`).
        stage_type: A key of `PAIR_STAGE_TYPES`: the pair sets trained.
        batch_size: Pairs per step.

    Returns:
        (stage, steps) per trained stage that has pairs, in training order.
    """
    lengths = {stage: counts[stage] // batch_size + 1 for stage in ("recall", "analyze")}
    if stage_type == "recall_analyze" and counts["recall"] > 0:
        lengths["analyze"] = (counts["analyze"] // counts["recall"] + 1) * lengths["recall"]
    return tuple((stage, lengths[stage]) for stage in PAIR_STAGE_TYPES[stage_type] if counts[stage] > 0)


def training_steps(blocks: tuple[tuple[str, int], ...], rounds: int) -> tuple[int, int]:
    """The official `run_dpo`'s schedule: a round is the sum of the blocks' steps, with validation and a
    checkpoint after each, and training runs `rounds` of them (the cosine schedule spans them all).

    A stream exhausted within its block is skipped and a new epoch starts once all are (`BlockSchedule`),
    so a round may end inside a later epoch than it started in, as in the official loop.

    Args:
        blocks: `pair_blocks`' (stage, steps).
        rounds: Rounds to train (the official 10).

    Returns:
        (total steps, steps per round).
    """
    round_steps = sum(length for _, length in blocks)
    return rounds * round_steps, round_steps


def check_settings(arguments: Mapping[str, Any]) -> None:
    """The start of `run_iteration` (and of a pipeline, for the iterations it will run): refuses, before any
    data set-up, settings that would train nothing or fail later, naming each as the user set it (e.g. `ROUNDS`).
    The iteration number is checked by `run_iteration` itself: a pipeline passes its own.

    Args:
        arguments: `run_iteration`'s arguments (as `gin_utils.bound_arguments(run_iteration)` gives them).

    Raises:
        UserError: Naming the first bad setting.
    """
    fn = run_iteration
    evaluation.require_stage_mixture(fn, arguments["mixture_or_task_name"])
    gin_utils.require_choice(fn, "stage_type", arguments["stage_type"], PAIR_STAGE_TYPES)
    gin_utils.require_positive(fn, {name: arguments[name] for name in (
        "batch_size", "rounds", "max_questions", "keep_checkpoints", "log_every")}, optional=("max_questions",))
    setup.require_eval_questions(fn, arguments["max_eval_questions"])
    beta, alpha = arguments["beta"], arguments["alpha"]
    gin_utils.require(gin_utils.is_number(beta) and beta > 0, fn, "beta", beta, "a number > 0")
    gin_utils.require_non_negative(fn, "alpha", alpha)
    settings = arguments["pair_sampling"]
    gin_utils.require_positive(sampling.PairSampling,
                               {"num_samples": settings.num_samples, "chunk_size": settings.chunk_size})
    gin_utils.require_non_negative(sampling.PairSampling, "temperature", settings.temperature)
    evaluation.check_chain_settings(arguments["chain_settings"])
    gin_utils.require_partitioner(arguments["partitioner"])
    memory.require_phase_fits(fn, arguments, rows_per_example=2)  # a pair's chosen and rejected text


def run_iteration(
    *,
    model_dir: str,
    iteration: int,
    mixture_or_task_name: str,
    model_config: t5.T5Config,
    task_feature_lengths: lengths.FeatureLengths = None,
    stage_type: str = "recall_analyze",
    batch_size: int = 32,
    rounds: int = 10,
    beta: float = 0.5,
    alpha: float = 0.5,
    data_dir: Optional[str] = None,
    vocabulary_path: Optional[str] = None,
    pair_sampling: sampling.PairSampling = sampling.PairSampling(),
    chain_settings: chains.ChainSettings = chains.ChainSettings(),
    create_optimizer: Callable[[int], optimizers.Optimizer] = optimizers.create_optimizer,
    max_questions: Optional[int] = None,
    max_eval_questions: Optional[int] = None,
    seed: int = 0,
    partitioner: partitioning.Partitioner = partitioning.Partitioner(),
    keep_checkpoints: int = 2,
    log_every: int = 10,
) -> results.PhaseResult:
    """Phase 2, one self-reflection iteration: sample chains with M(i-1), build recall and analyze pairs,
    score them with the frozen reference, train M(i) with DPO plus NLL, keep its best by validation.

    Every step leaves a marker under `model_dir/reflect/iteration_<i>`, so the same call resumes.

    Args:
        model_dir: The pipeline's run directory (`MODEL_DIR`); phase 1 must be finished in `model_dir/sft`.
        iteration: 1, 2, ...: iteration i starts from the best model of iteration i - 1 (phase 1 for 1).
        mixture_or_task_name: The stage mixture phase 1 trained on (it names the dataset).
        model_config: The student (its shape must be M(i-1)'s; dtype and dropout apply).
        task_feature_lengths: None (pair sets as wide as their longest pair) or explicit lengths, cuts counted.
        stage_type: Which pairs train: `recall_analyze` (the paper), `recall` or `analyze` (ablations).
        batch_size: Pairs per DPO step.
        rounds: Passes of the block schedule (the paper's 10); validation after each.
        beta: DPO's beta.
        alpha: The weight of the NLL term on the chosen text (RPO).
        data_dir: The prepared dataset directory.
        vocabulary_path: The SentencePiece model of the data, as in phase 1.
        pair_sampling: Chains per question, temperature and chunking of the sampling step.
        chain_settings: Decoding limits of the sampled and the validation chains.
        create_optimizer: Builds the optimizer for the total number of steps.
        max_questions: Sample only the first N training questions with teacher records (the paper: all).
        max_eval_questions: Validation questions per validation (default: all).
        seed: Sampling, data order and dropout.
        partitioner: The device mesh and its rules (`MESH_DATA`, `MESH_MODEL`, `PARAMETER_PARTITIONING_DIMS`).
        keep_checkpoints: Training checkpoints kept.
        log_every: Steps between metric fetches.

    Returns:
        The phase's result (`iteration_<i>`): its best validation accuracy and step (None when SIGTERM stopped
        it first), the pair counts, the wall time of each step (generate, score, train), the settings and
        whether it was stopped.
    """
    check_settings(locals())  # first: locals() holds exactly the arguments
    if not (gin_utils.is_int(iteration) and iteration >= 1):
        raise UserError(f"{gin_utils.setting_name(run_iteration, 'iteration', default='ITERATION')} is "
                        f"{iteration!r}: it must be a positive integer (iteration 1 starts from phase 1)")
    model_dir_setting = gin_utils.setting_name(run_iteration, "model_dir", default="MODEL_DIR")
    locations.require_local(model_dir, model_dir_setting)
    out_dir = layout.iteration_dir(model_dir, iteration)
    done = results.read_done(out_dir, before_the_step=True)
    if done is not None:
        return done
    # An interrupted phase already has a best/ (its best model so far), which is not M(i-1) yet.
    previous = layout.previous_dir(model_dir, iteration)
    if results.read_done(previous) is None:
        phase = "phase 1" if iteration == 1 else f"iteration {iteration - 1}"
        raise UserError(f"iteration {iteration} starts from M({iteration - 1}), the best model of {phase}, "
                        f"but {phase} is not finished (no {results.done_path(previous)}): "
                        f"run {phase} first, or again to finish it")
    locations.require_writable(out_dir, model_dir_setting)
    reference_path = layout.reference_checkpoint(model_dir, iteration)
    # The chains read generated text: never cut below the widest input phase 1 trained on.
    chain_settings = setup.chain_settings_for(chain_settings, setup.read_data_stats(layout.sft_dir(model_dir)))
    dataset, chain_type, vocabulary = setup.setup_data(mixture_or_task_name, data_dir, vocabulary_path, model_config)
    data_dir = data_dir or locations.dataset_dir(dataset)
    model_config = model_config.replace(dropout_rate=0.0)
    pairs_dir = os.path.join(out_dir, "pairs")
    validate = functools.partial(
        setup.validation_accuracy,
        questions=tinythinker_tasks.load_questions(dataset, "validation")[:max_eval_questions],
        vocabulary=vocabulary, stage_type=chain_type, settings=chain_settings)

    with partitioner.activate():
        load_reference = lambda: setup.build_model(model_config, reference_path, seed, partitioner)  # noqa: E731
        counts = read_marker_before_the_step(os.path.join(pairs_dir, "counts.json"))
        if counts is None:
            started = time.time()
            teacher = {r.question.id: r.rationales
                       for r in records.read_teacher_records(locations.teacher_path(data_dir))}
            questions = sampling.pair_questions(tinythinker_tasks.load_questions(dataset, "train"), teacher,
                                                max_questions)
            counts = sampling.generate_pairs(
                load_reference(), vocabulary, questions, teacher, pairs_dir, chain_settings, pair_sampling,
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

        stages = [stage for stage in PAIR_STAGE_TYPES[stage_type] if counts[stage] > 0]
        scored = read_marker_before_the_step(os.path.join(pairs_dir, "scored.json"))
        # The pair arrays scored here train at once; a resumed iteration reads them back from the scored files.
        scored_arrays: dict[str, dict[str, np.ndarray]] = {}
        if scored is None:
            started, reference = time.time(), load_reference()
            data_stats = {}
            for stage in stages:
                arrays, data_stats[stage] = pair_data.load_pair_arrays(pair_task(stage, scored=False),
                                                                       task_feature_lengths)
                scores = pair_data.score_pairs(reference, arrays, batch_size, partitioner)
                scored_arrays[stage] = {**arrays, **{field: np.ascontiguousarray(scores[:, column]) for column, field
                                                     in enumerate(pair_data.REFERENCE_FIELDS)}}
                if jax.process_index() == 0:
                    pair_data.write_scored_pairs(sampling.pairs_path(pairs_dir, stage, scored=True),
                                                 pair_data.read_pairs(sampling.pairs_path(pairs_dir, stage)), scores)
            del reference
            setup.write_data_stats(out_dir, data_stats)
            scored = {"stages": stages, "wall_seconds": time.time() - started}
            write_marker(os.path.join(pairs_dir, "scored.json"), scored)

        started = time.time()
        blocks = pair_blocks(counts, stage_type, batch_size)
        total_steps, round_steps = training_steps(blocks, rounds)
        optimizer = create_optimizer(total_steps)
        if not blocks:
            # Nothing to learn from (every sampled chain agreed with the gold answer): M(i) = M(i-1).
            policy = load_reference()
            accuracy, step = validate(policy), 0
            train_checkpoints.save_best(out_dir, nnx.state(policy), model_config, vocabulary.sentencepiece_model_file,
                                    {"step": 0, "validation_accuracy": accuracy})
            trained = loop.LoopResult(0, accuracy, step, False)
        else:
            pair_streams = {}
            for index, stage in enumerate(stages):
                if stage in scored_arrays:
                    arrays = scored_arrays[stage]
                else:
                    arrays, _ = pair_data.load_pair_arrays(pair_task(stage, scored=True), task_feature_lengths)
                pair_streams[stage] = streams.Stream(arrays, batch_size, seed=seed * 1000 + index,
                                                     weight_field="pair_weights")
            block_schedule = schedule.BlockSchedule(blocks, {s: st.num_batches for s, st in pair_streams.items()})
            trained = loop.Loop(
                model_dir=out_dir, name=f"reflect {iteration}", model=load_reference(), model_config=model_config,
                vocab_path=vocabulary.sentencepiece_model_file, optimizer=optimizer,
                loss_fn=losses.dpo_loss_fn(beta, alpha), batch_streams=pair_streams, blocks=block_schedule,
                total_steps=total_steps, eval_every=round_steps, validate=validate, partitioner=partitioner,
                batch_size=batch_size, seed=seed, keep_checkpoints=keep_checkpoints, log_every=log_every,
            ).run()
    wall = {"generate": counts["wall_seconds"], "score": scored["wall_seconds"], "train": time.time() - started}
    settings = {"stage_type": stage_type, "batch_size": batch_size, "rounds": rounds, "beta": beta, "alpha": alpha,
                "num_samples": pair_sampling.num_samples, "temperature": pair_sampling.temperature,
                "max_questions": max_questions, "total_steps": total_steps, **optimizer.settings}
    result = results.PhaseResult(
        layout.iteration_name(iteration), trained.step, trained.best_accuracy, trained.best_step, wall, settings,
        {stage: counts[stage] for stage in sampling.PAIR_STAGES}, trained.preempted)
    if not result.preempted:
        results.write_done(out_dir, result)
    return result
