"""What starts a phase: its data (prepared, registered and measured), its model (new, or from a checkpoint,
on the mesh), its validation, and the checks on its run directory."""

import dataclasses
import os
from typing import Any, Callable, Optional

import jax
import seqio

import tinythinker_tasks
from tinythinker_jax import chains, gin_utils, partitioning
from tinythinker_jax.data import lengths, locations, prepare, records
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import checkpoints as model_checkpoints
from tinythinker_jax.models import t5
from tinythinker_jax.phases import markers

DATA_STATS = "data_stats.json"


def setup_data(mixture_or_task_name: str, data_dir: Optional[str], vocabulary_path: Optional[str],
               model_config: t5.T5Config) -> tuple[str, str, seqio.Vocabulary]:
    """Prepares and registers the dataset of a stage mixture: (dataset, stage type, vocabulary)."""
    dataset, stage_type = tinythinker_tasks.parse_stage_mixture(mixture_or_task_name)
    data_dir = data_dir or locations.dataset_dir(dataset)
    if jax.process_index() == 0:
        prepare.ensure_prepared(dataset, data_dir)
    markers.sync_processes("dataset prepared")
    tinythinker_tasks.register_dataset(dataset, data_dir, vocabulary_path)
    vocabulary = seqio.get_mixture_or_task(mixture_or_task_name).output_features["targets"].vocabulary
    if vocabulary.vocab_size > model_config.vocab_size:
        raise UserError(f"the vocabulary {vocabulary.sentencepiece_model_file} (VOCABULARY_PATH) has "
                        f"{vocabulary.vocab_size} ids but the model embeds only {model_config.vocab_size}: raise "
                        f"t5.model_config.vocab_size, or pass the model's own vocabulary")
    return dataset, stage_type, vocabulary


def write_data_stats(model_dir: str, stats: dict[str, dict]) -> None:
    """`MODEL_DIR/data_stats.json`: per stream, its examples, longest input and target, shape buckets and
    what an explicit `TASK_FEATURE_LENGTHS` cut; every cut is also printed."""
    for line in lengths.describe_cuts(os.path.basename(os.path.normpath(model_dir)), stats):
        print(f"warning: {line}")
    if jax.process_index() == 0:
        records.write_json(os.path.join(model_dir, DATA_STATS), stats)


def read_data_stats(model_dir: str) -> Optional[dict[str, dict]]:
    """A phase's `data_stats.json`, or None before its data was set up."""
    return markers.read_marker(os.path.join(model_dir, DATA_STATS))


def chain_settings_for(settings: chains.ChainSettings, stats: Optional[dict[str, dict]]) -> chains.ChainSettings:
    """The chain's input cap, if any, raised to the widest training input: the chain never cuts below what
    the model was trained on."""
    if settings.max_input_length is None or not stats:
        return settings
    widest = max(entry["input_length"] for entry in stats.values())
    return dataclasses.replace(settings, max_input_length=max(settings.max_input_length, widest))


def build_model(config: t5.T5Config, initial_checkpoint_path: Optional[str], seed: int,
                partitioner: partitioning.Partitioner) -> t5.T5Transformer:
    """The checkpoint's model (`initial_checkpoint_path`, whose config must be `config` up to how it computes:
    dtype, dropout and remat, which `config` sets) or a new one from `seed`, laid out on the partitioner's mesh."""
    if initial_checkpoint_path:
        loaded = model_checkpoints.load_config(initial_checkpoint_path)
        if loaded.shape() != config.shape():
            raise ValueError(f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} holds {loaded}, "
                             f"but the gin model config is {config}")
        return model_checkpoints.load_model(initial_checkpoint_path, config=config, mesh=partitioner.mesh,
                                            rules=partitioner.rules)
    return partitioner.create_model(lambda: t5.create_model(config, seed=seed))


def validation_accuracy(model: t5.T5Transformer, *, questions, vocabulary, stage_type: str,
                        settings: chains.ChainSettings) -> float:
    """The paper's checkpoint selection: the full greedy chain's accuracy on the validation questions."""
    runner = chains.ChainRunner(model, vocabulary, settings, progress="validation")
    return chains.accuracy(questions, [c[0].prediction for c in runner.run(questions, stage_type)])


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
