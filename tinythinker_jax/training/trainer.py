"""Phase 1, reasoning acquisition: SFT on the interleaved stage streams, T5X-style.

This module says what SFT trains on (the stage streams in the paper's blocks), with which loss, and how
it is judged (the full greedy chain on validation questions); `loop` runs it and keeps it resumable.
"""

import functools
import time
from typing import Any, Callable, Mapping, Optional

import jax

import tinythinker_tasks
from tinythinker_jax import chains, evaluation, formats, gin_utils, memory, partitioning
from tinythinker_jax.data import benchmarks, lengths
from tinythinker_jax.models import checkpoints as model_checkpoints
from tinythinker_jax.models import t5
from tinythinker_jax.phases import layout, loop, optimizers, results, schedule, setup, streams
from tinythinker_jax.training import losses


def build_streams(dataset: str, stage_type: str, feature_lengths: lengths.FeatureLengths, batch_size: int,
                  seed: int, pack: bool = False) -> tuple[dict[str, streams.Stream], dict[str, dict]]:
    """One stream per stage of `stage_type`, in its order (which the blocks follow), and each stream's
    length statistics (`data_stats.json`); a packed stream's also give its first epoch's rows and
    examples per row."""
    stage_streams, stats = {}, {}
    for index, stage in enumerate(formats.stages_of(stage_type)):
        task = tinythinker_tasks.stage_task_name(dataset, stage, stage_type)
        arrays, stats[stage] = streams.load_task_arrays(task, feature_lengths)
        stage_streams[stage] = streams.Stream(arrays, batch_size, seed=seed * 1000 + index, pack=pack)
        if pack:
            rows = stage_streams[stage].num_rows(0)
            stats[stage].update(packed_rows=rows, examples_per_row=round(stats[stage]["examples"] / rows, 3))
            print(f"{layout.SFT} {stage}: {stats[stage]['examples']:,} examples packed into {rows:,} rows "
                  f"({stats[stage]['examples_per_row']} per row) in the first epoch")
    return stage_streams, stats


def train(
    *,
    model_dir: str,
    mixture_or_task_name: str,
    model_config: t5.T5Config,
    task_feature_lengths: lengths.FeatureLengths = None,
    batch_size: int = 64,
    train_steps: Optional[int] = None,
    epochs: int = 10,
    interval: int = 100,
    initial_checkpoint_path: Optional[str] = None,
    data_dir: Optional[str] = None,
    vocabulary_path: Optional[str] = None,
    seed: int = 0,
    partitioner: partitioning.Partitioner = partitioning.Partitioner(),
    keep_checkpoints: int = 3,
    eval_every: Optional[int] = None,
    max_eval_questions: Optional[int] = None,
    log_every: int = 10,
    create_optimizer: Callable[[int], optimizers.Optimizer] = optimizers.create_optimizer,
    chain_settings: chains.ChainSettings = chains.ChainSettings(),
    pack: bool = False,
) -> results.PhaseResult:
    """Phase 1: SFT on the interleaved stage streams of `tinythinker.<dataset>.<stage_type>_stages`.

    Validation (the full greedy chain) and a checkpoint come every cycle of blocks and at the end; the best
    model by validation accuracy is kept in `model_dir/best`. A finished run writes `done.json` (its best
    model is then M(0) for self-reflection); the same call resumes an interrupted one.

    Args:
        model_dir: The run directory (`MODEL_DIR`): checkpoints, `best/`, metrics, `data_stats.json`, gin configs.
        mixture_or_task_name: The stage mixture, e.g. `tinythinker.csqa.full_stages`.
        model_config: The student's shape and compute dtype.
        task_feature_lengths: None (each stream as wide as its longest example) or explicit `inputs`/`targets`
            lengths; what they cut is printed and counted in `data_stats.json`.
        batch_size: Examples per step; with `pack`, packed rows per step.
        train_steps: Steps in all; overrides `epochs` when set.
        epochs: Passes over the largest stream, in steps of the block schedule.
        interval: Steps per block (the paper's 100): recall x interval, analyze x options x interval, summarize.
        initial_checkpoint_path: A model checkpoint to start from (`tinythinker convert`), else random weights.
        data_dir: The prepared dataset directory (default: under `TINYTHINKER_DATA_ROOT`).
        vocabulary_path: The SentencePiece model of the data (default: `TINYTHINKER_VOCABULARY` or T5's).
        seed: Initialisation, data order and dropout.
        partitioner: The device mesh and its rules (`MESH_DATA`, `MESH_MODEL`, `PARAMETER_PARTITIONING_DIMS`).
        keep_checkpoints: Training checkpoints kept (the best model is kept apart).
        eval_every: Steps between validations (default: one cycle of blocks).
        max_eval_questions: Validation questions per validation (default: all).
        log_every: Steps between metric fetches (the only host syncs of the loop).
        create_optimizer: Builds the optimizer for the total number of steps.
        chain_settings: Decoding limits of the validation chains.
        pack: Packs each stream's examples into its rows, as T5X's `EncDecFeatureConverter(pack=True)`:
            consecutive examples of the epoch's order share a row while their inputs and targets fit its
            widths, each attending only to itself. Off by default, because it changes the paper's
            optimisation: a step then holds more examples than `batch_size`, its token-mean loss averages
            over more tokens, and an epoch has fewer steps. `data_stats.json` and the metrics give the
            examples per row.

    Returns:
        The phase's result: the steps done, the best validation accuracy and its step, the wall time, the
        settings, and whether SIGTERM stopped the run.
    """
    check_settings(locals())  # first: locals() holds exactly the arguments
    setup.require_model_dir(train, model_dir)
    started = time.time()
    finished_before = results.read_done(model_dir, before_the_step=True) is not None
    dataset, stage_type, vocabulary = setup.setup_data(mixture_or_task_name, data_dir, vocabulary_path, model_config)
    if initial_checkpoint_path:
        model_checkpoints.check_checkpoint_vocabulary(
            initial_checkpoint_path, vocabulary.sentencepiece_model_file,
            f"the vocabulary ({gin_utils.setting_name(train, 'vocabulary_path', default='VOCABULARY_PATH')})")
    stage_streams, data_stats = build_streams(dataset, stage_type, task_feature_lengths, batch_size, seed, pack)
    setup.write_data_stats(model_dir, data_stats)
    chain_settings = setup.chain_settings_for(chain_settings, data_stats)
    num_options = benchmarks.get_benchmark(dataset).num_options
    blocks = schedule.BlockSchedule(
        schedule.stage_blocks(list(stage_streams), interval, num_options),
        {stage: stream.num_batches for stage, stream in stage_streams.items()},
    )
    total_steps = train_steps if train_steps is not None else sum(map(blocks.steps_in_epoch, range(epochs)))
    validation = tinythinker_tasks.load_questions(dataset, "validation")[:max_eval_questions]

    with partitioner.activate():
        model = setup.build_model(model_config, initial_checkpoint_path, seed, partitioner)
        if jax.process_index() == 0:
            gin_utils.write_config_files(model_dir)
        optimizer = create_optimizer(total_steps)
        validate = functools.partial(setup.validation_accuracy, questions=validation, vocabulary=vocabulary,
                                     stage_type=stage_type, settings=chain_settings)
        trained = loop.Loop(
            model_dir=model_dir, name=layout.SFT, model=model, model_config=model_config,
            vocab_path=vocabulary.sentencepiece_model_file, optimizer=optimizer,
            loss_fn=losses.sft_loss, batch_streams=stage_streams, blocks=blocks, total_steps=total_steps,
            eval_every=eval_every or blocks.cycle_steps, validate=validate, partitioner=partitioner,
            batch_size=batch_size, seed=seed, keep_checkpoints=keep_checkpoints, log_every=log_every,
        ).run()
    settings = {"batch_size": batch_size, "epochs": epochs, "train_steps": train_steps, "interval": interval,
                "pack": pack, "total_steps": total_steps, **optimizer.settings}
    result = results.PhaseResult(layout.SFT, trained.step, trained.best_accuracy, trained.best_step,
                                 {"train": time.time() - started}, settings, preempted=trained.preempted)
    if not result.preempted and not finished_before:
        results.write_done(model_dir, result)
    return result


def check_settings(arguments: Mapping[str, Any]) -> None:
    """The start of `train` (and of a pipeline, for the phase 1 it will run): refuses, before any data set-up,
    settings that would train nothing or fail later, naming each as the user set it (e.g. `BATCH_SIZE`).

    Args:
        arguments: `train`'s arguments (as `gin_utils.bound_arguments(train)` gives them, for a pipeline).

    Raises:
        UserError: Naming the first bad setting.
    """
    evaluation.require_stage_mixture(train, arguments["mixture_or_task_name"])
    counts = {name: arguments[name] for name in ("batch_size", "train_steps", "interval", "eval_every", "log_every",
                                                 "keep_checkpoints")}
    if arguments["train_steps"] is None:  # TRAIN_STEPS, when set, overrides EPOCHS
        counts["epochs"] = arguments["epochs"]
    gin_utils.require_positive(train, counts, optional=("train_steps", "eval_every"))
    setup.require_eval_questions(train, arguments["max_eval_questions"])
    evaluation.check_chain_settings(arguments["chain_settings"])
    gin_utils.require_partitioner(arguments["partitioner"])
    memory.require_phase_fits(train, arguments, rows_per_example=1)
