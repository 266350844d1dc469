"""Phase 1, reasoning acquisition: SFT on the interleaved stage streams, T5X-style.

This module says what SFT trains on (the stage streams in the paper's blocks), with which loss, and how
it is judged (the full greedy chain on validation questions); `loop` runs it and keeps it resumable.
"""

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Mapping, Optional

import jax
import seqio

import gin
import tinythinker_tasks
from tinythinker_jax import chains, evaluation, formats, gin_utils, memory, partitioning
from tinythinker_jax.data import benchmarks, lengths, locations, prepare, records
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import checkpoints as model_checkpoints
from tinythinker_jax.models import t5
from tinythinker_jax.training import checkpointing, loop, losses, optimizers, schedule, streams
from tinythinker_jax.training.loop import TrainResult

DATA_STATS = "data_stats.json"


def build_streams(dataset: str, stage_type: str, feature_lengths: lengths.FeatureLengths, batch_size: int,
                  seed: int) -> tuple[dict[str, streams.Stream], dict[str, dict]]:
    """One stream per stage of `stage_type`, in its order (which the blocks follow), and each stream's
    length statistics (`data_stats.json`)."""
    stage_streams, stats = {}, {}
    for index, stage in enumerate(formats.stages_of(stage_type)):
        task = tinythinker_tasks.stage_task_name(dataset, stage, stage_type)
        arrays, stats[stage] = streams.load_task_arrays(task, feature_lengths)
        stage_streams[stage] = streams.Stream(arrays, batch_size, seed=seed * 1000 + index)
    return stage_streams, stats


def write_data_stats(model_dir: str, stats: dict[str, dict]) -> None:
    """`MODEL_DIR/data_stats.json`: per stream, its examples, longest input and target, shape buckets and
    what an explicit `TASK_FEATURE_LENGTHS` cut; every cut is also printed."""
    for line in lengths.describe_cuts(os.path.basename(os.path.normpath(model_dir)), stats):
        print(f"warning: {line}")
    if jax.process_index() == 0:
        records.write_json(os.path.join(model_dir, DATA_STATS), stats)


def chain_settings_for(settings: chains.ChainSettings, stats: dict[str, dict]) -> chains.ChainSettings:
    """The chain's input cap, if any, raised to the widest training input: the chain never cuts below what
    the model was trained on."""
    if settings.max_input_length is None or not stats:
        return settings
    widest = max(entry["input_length"] for entry in stats.values())
    return dataclasses.replace(settings, max_input_length=max(settings.max_input_length, widest))


def setup_data(mixture_or_task_name: str, data_dir: Optional[str], vocabulary_path: Optional[str],
               model_config: t5.T5Config) -> tuple[str, str, seqio.Vocabulary]:
    """Prepares and registers the dataset of a stage mixture: (dataset, stage type, vocabulary)."""
    dataset, stage_type = tinythinker_tasks.parse_stage_mixture(mixture_or_task_name)
    data_dir = data_dir or locations.dataset_dir(dataset)
    if jax.process_index() == 0:
        prepare.ensure_prepared(dataset, data_dir)
    checkpointing.sync_processes("dataset prepared")
    tinythinker_tasks.register_dataset(dataset, data_dir, vocabulary_path)
    vocabulary = seqio.get_mixture_or_task(mixture_or_task_name).output_features["targets"].vocabulary
    if vocabulary.vocab_size > model_config.vocab_size:
        raise UserError(f"the vocabulary {vocabulary.sentencepiece_model_file} (VOCABULARY_PATH) has "
                        f"{vocabulary.vocab_size} ids but the model embeds only {model_config.vocab_size}: raise "
                        f"t5.model_config.vocab_size, or pass the model's own vocabulary")
    return dataset, stage_type, vocabulary


def build_model(config: t5.T5Config, initial_checkpoint_path: Optional[str], seed: int,
                partitioner: partitioning.Partitioner) -> t5.T5Transformer:
    """The checkpoint's model (`initial_checkpoint_path`, whose config must be `config` up to dtype and
    dropout) or a new one from `seed`, laid out on the partitioner's mesh."""
    if initial_checkpoint_path:
        loaded = model_checkpoints.load_config(initial_checkpoint_path)
        if dataclasses.replace(loaded, dtype=config.dtype, dropout_rate=config.dropout_rate) != config:
            raise ValueError(f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} holds {loaded}, "
                             f"but the gin model config is {config}")
        model = model_checkpoints.load_model(initial_checkpoint_path, dtype=config.dtype, mesh=partitioner.mesh,
                                             rules=partitioner.rules)
        # The checkpoint's own config carries inference defaults; training uses the gin one (dropout).
        model.config = config
        return model
    return partitioner.create_model(lambda: t5.create_model(config, seed=seed))


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
) -> TrainResult:
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
        batch_size: Examples per step.
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

    Returns:
        The steps done, the best validation accuracy and its step, and whether SIGTERM stopped the run.
    """
    check_settings(locals())  # first: locals() holds exactly the arguments
    require_model_dir(train, model_dir)
    started = time.time()
    done = os.path.join(model_dir, checkpointing.DONE)
    finished_before = checkpointing.read_marker_before_the_step(done) is not None
    dataset, stage_type, vocabulary = setup_data(mixture_or_task_name, data_dir, vocabulary_path, model_config)
    if initial_checkpoint_path:
        model_checkpoints.check_checkpoint_vocabulary(
            initial_checkpoint_path, vocabulary.sentencepiece_model_file,
            f"the vocabulary ({gin_utils.setting_name(train, 'vocabulary_path', default='VOCABULARY_PATH')})")
    stage_streams, data_stats = build_streams(dataset, stage_type, task_feature_lengths, batch_size, seed)
    write_data_stats(model_dir, data_stats)
    chain_settings = chain_settings_for(chain_settings, data_stats)
    num_options = benchmarks.get_benchmark(dataset).num_options
    blocks = schedule.BlockSchedule(
        schedule.stage_blocks(list(stage_streams), interval, num_options),
        {stage: stream.num_batches for stage, stream in stage_streams.items()},
    )
    total_steps = train_steps if train_steps is not None else epochs * blocks.steps_per_epoch
    validation = tinythinker_tasks.load_questions(dataset, "validation")[:max_eval_questions]

    with partitioner.activate():
        model = build_model(model_config, initial_checkpoint_path, seed, partitioner)
        _write_gin_configs(model_dir)
        validate = functools.partial(validation_accuracy, questions=validation, vocabulary=vocabulary,
                                     stage_type=stage_type, settings=chain_settings)
        result = loop.Loop(
            model_dir=model_dir, name="sft", model=model, model_config=model_config,
            vocab_path=vocabulary.sentencepiece_model_file, optimizer=create_optimizer(total_steps),
            loss_fn=losses.sft_loss, batch_streams=stage_streams, blocks=blocks, total_steps=total_steps,
            eval_every=eval_every or blocks.cycle_steps, validate=validate, partitioner=partitioner,
            batch_size=batch_size, seed=seed, keep_checkpoints=keep_checkpoints, log_every=log_every,
        ).run()
    if not result.preempted and not finished_before:
        checkpointing.write_marker(done, {"validation_accuracy": result.best_accuracy, "best_step": result.best_step,
                                          "wall_seconds": time.time() - started})
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
    require_eval_questions(train, arguments["max_eval_questions"])
    evaluation.check_chain_settings(arguments["chain_settings"])
    gin_utils.require_partitioner(arguments["partitioner"])
    memory.require_phase_fits(train, arguments, rows_per_example=1)


def require_eval_questions(fn: Callable, max_eval_questions: Any) -> None:
    """Refuses a negative `max_eval_questions` of `fn`; None validates on all, 0 on none (every validation
    accuracy is then 0: tests of the mechanics use it)."""
    if max_eval_questions is not None:
        gin_utils.require_non_negative(fn, "max_eval_questions", max_eval_questions, integer=True)


def require_model_dir(fn: Callable, model_dir: str) -> None:
    """Refuses a `model_dir` (an argument of `fn`) that is a URL or cannot be written, before the run starts."""
    setting = gin_utils.setting_name(fn, "model_dir", default="MODEL_DIR")
    locations.require_local(model_dir, setting)
    locations.require_writable(model_dir, setting)


def validation_accuracy(model: t5.T5Transformer, *, questions, vocabulary, stage_type: str,
                        settings: chains.ChainSettings) -> float:
    """The paper's checkpoint selection: the full greedy chain's accuracy on the validation questions."""
    runner = chains.ChainRunner(model, vocabulary, settings, progress="validation")
    return chains.accuracy(questions, [c[0].prediction for c in runner.run(questions, stage_type)])


def _write_gin_configs(model_dir: str) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(gin.config_str())
    with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
        f.write(gin.operative_config_str())
