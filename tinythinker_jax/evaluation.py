"""Three-stage evaluation of a model on a split: every chain written out, accuracy summarised."""

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

import jax

from tinythinker_jax import chains, formats, gin_utils, memory, partitioning
from tinythinker_jax.data.records import Question, write_json, write_jsonl
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import checkpoints, decoding

STAGES = formats.STAGES
# Self-consistency as the official generate.py samples its test chains (GenerationConfiguration with
# generation_file "test"): recall and analyses at temperature 0.7 over every token (top_k 0), the summary
# greedy, so that each chain's answer is the one its sampled reasoning leads to.
SELF_CONSISTENCY = decoding.SamplingConfig(temperature=0.7)
SAMPLED_STAGES = (formats.RECALL, formats.ANALYZE)


def default_sampling(num_chains: int) -> decoding.SamplingConfig:
    """The sampling of the sampled stages when none is given.

    Args:
        num_chains: Chains per question.

    Returns:
        Greedy decoding for one chain; the official self-consistency sampling for several.
    """
    return SELF_CONSISTENCY if num_chains > 1 else chains.GREEDY


def stage_settings(chain_settings: chains.ChainSettings, sampling: decoding.SamplingConfig,
                   sampled_stages: Sequence[str] = SAMPLED_STAGES) -> chains.ChainSettings:
    """Per-stage decoding: `sampling` for the sampled stages, greedy for the others.

    Args:
        chain_settings: The chain's limits (its sampling configs are replaced).
        sampling: How the sampled stages decode.
        sampled_stages: Stages that use `sampling`; add "summarize" to sample every stage.

    Returns:
        `chain_settings` with one sampling config per stage.
    """
    unknown = sorted(set(sampled_stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown} to sample; expected some of {list(STAGES)}")
    # Only the stages' SamplingConfig fields; typed loosely, as mypy checks a ** dict against every field.
    per_stage: dict[str, Any] = {stage: sampling if stage in sampled_stages else chains.GREEDY for stage in STAGES}
    return dataclasses.replace(chain_settings, **per_stage)


def check_chain_settings(settings: chains.ChainSettings) -> None:
    """Refuses a chain that could decode nothing: a limit or batch size below 1.

    Raises:
        UserError: Naming the setting (`chains.ChainSettings.<field>` in gin).
    """
    gin_utils.require_positive(chains.ChainSettings, {
        "max_input_length": settings.max_input_length, "max_decode_length": settings.max_decode_length,
        "max_summary_length": settings.max_summary_length, "batch_size": settings.batch_size,
    }, optional=("max_input_length",))


def sampling_summary(settings: chains.ChainSettings) -> dict[str, dict]:
    """The per-stage sampling settings as `summary_<split>.json` records them."""
    return {stage: dataclasses.asdict(getattr(settings, stage)) for stage in STAGES}


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    accuracy: float
    num_questions: int
    predictions_path: str
    summary_path: str


def evaluate(
    runner: chains.ChainRunner, questions: Sequence[Question], out_dir: str, *, split: str, stage_type: str = "full",
    num_chains: int = 1, seed: int = 0, extra_summary: Optional[dict] = None,
) -> EvaluationResult:
    """Runs `num_chains` chains per question (majority vote when more than one) and writes
    `predictions_<split>.jsonl` (every generated recall, analysis and summary) and `summary_<split>.json`.

    Every process of a multi-host run computes the same result; only the first writes it, since the
    others' temporary files could share its name (a process id) on a shared file system."""
    per_question = runner.run(questions, stage_type, num_chains=num_chains, seed=seed)
    predictions = [chains.vote(question_chains) for question_chains in per_question]
    rows = [
        {
            "id": question.id, "answer": question.answer, "prediction": prediction,
            "correct": prediction == question.answer,
            "chains": [dataclasses.asdict(chain) for chain in question_chains],
        }
        for question, question_chains, prediction in zip(questions, per_question, predictions)
    ]
    accuracy = chains.accuracy(questions, predictions)
    predictions_path = os.path.join(out_dir, f"predictions_{split}.jsonl")
    summary_path = os.path.join(out_dir, f"summary_{split}.json")
    if jax.process_index() == 0:
        write_jsonl(predictions_path, rows)
        write_json(summary_path, {
            "split": split, "stage_type": stage_type, "num_questions": len(questions), "num_chains": num_chains,
            "accuracy": accuracy, "inputs_cut": runner.inputs_cut, "tokens_cut": runner.tokens_cut,
            **(extra_summary or {}),
        })
    return EvaluationResult(accuracy, len(questions), predictions_path, summary_path)


def evaluate_checkpoint_on_mesh(
    checkpoint_path: str, questions: Sequence[Question], out_dir: str, settings: chains.ChainSettings, *, split: str,
    stage_type: str = "full", num_chains: int = 1, seed: int = 0, dtype: Optional[str] = None,
    partitioner: partitioning.Partitioner = partitioning.Partitioner(), extra_summary: Optional[dict] = None,
) -> EvaluationResult:
    """`evaluate` with the checkpoint's model laid out on the partitioner's mesh, as training lays it out, so
    that a model too large for one device is evaluated too. Every process must run it. The summary records
    each stage's sampling settings."""
    with partitioner.activate():
        model = checkpoints.load_model(checkpoint_path, dtype=dtype, mesh=partitioner.mesh, rules=partitioner.rules)
        runner = chains.ChainRunner(model, checkpoints.load_vocabulary(checkpoint_path), settings,
                                    progress=f"{split} chains")
        return evaluate(runner, questions, out_dir, split=split, stage_type=stage_type, num_chains=num_chains,
                        seed=seed, extra_summary={"sampling": sampling_summary(settings), **(extra_summary or {})})


def evaluate_checkpoint(
    *, checkpoint_path: str, mixture_or_task_name: str, output_dir: str, split: str = "test", num_chains: int = 1,
    sampling: Optional[decoding.SamplingConfig] = None, sampled_stages: Sequence[str] = SAMPLED_STAGES,
    chain_settings: chains.ChainSettings = chains.ChainSettings(), data_dir: Optional[str] = None,
    max_questions: Optional[int] = None, seed: int = 0, dtype: Optional[str] = None,
    partitioner: partitioning.Partitioner = partitioning.Partitioner(),
) -> EvaluationResult:
    """`evaluate` on a model checkpoint; the stage mixture names the dataset and the chain's stage type.

    Args:
        checkpoint_path: A model checkpoint, e.g. MODEL_DIR/best.
        mixture_or_task_name: A stage mixture, `tinythinker.<dataset>.<stage_type>_stages`.
        output_dir: Where `predictions_<split>.jsonl` and `summary_<split>.json` go.
        split: The split evaluated.
        num_chains: Chains per question; more than one votes (self-consistency).
        sampling: How `sampled_stages` decode; None: `default_sampling(num_chains)`, greedy for one chain,
            the official self-consistency (temperature 0.7, top_k 0) for several.
        sampled_stages: The stages that use `sampling`, the others decode greedily; the official
            self-consistency samples recall and analyze, ("recall", "analyze", "summarize") samples all.
        chain_settings: The chain's limits.
        data_dir: The dataset directory (default: the data root's).
        max_questions: Evaluates the first this many questions only.
        seed: The sampling seed.
        dtype: Compute dtype (default: as saved).
        partitioner: The device mesh and its rules, as training's.

    Returns:
        The accuracy and where the files went.
    """
    check_settings(locals())  # first: locals() holds exactly the arguments
    memory.require_chain_batch_fits(chain_settings, checkpoints.load_config(checkpoint_path))
    import tinythinker_tasks
    from tinythinker_jax.data import locations, prepare

    dataset, stage_type = tinythinker_tasks.parse_stage_mixture(mixture_or_task_name)
    data_dir = data_dir or locations.dataset_dir(dataset)
    prepare.ensure_prepared(dataset, data_dir)
    tinythinker_tasks.register_dataset(dataset, data_dir, checkpoints.vocab_path(checkpoint_path))
    questions = tinythinker_tasks.load_questions(dataset, split)[:max_questions]
    if sampling is None:
        sampling = default_sampling(num_chains)
    settings = stage_settings(chain_settings, sampling, sampled_stages)
    return evaluate_checkpoint_on_mesh(
        checkpoint_path, questions, output_dir, settings, split=split, stage_type=stage_type, num_chains=num_chains,
        seed=seed, dtype=dtype, partitioner=partitioner,
        extra_summary={"checkpoint": checkpoint_path, "dataset": dataset})


def check_settings(arguments: Mapping[str, Any]) -> None:
    """The start of `evaluate_checkpoint`: refuses, before any data is prepared or model loaded, a split that
    does not exist, counts below 1, stages that are not stages, a mesh the devices cannot form and an output
    directory that is a URL or cannot be written.

    Args:
        arguments: `evaluate_checkpoint`'s arguments.

    Raises:
        UserError: Naming the setting as the user set it (e.g. `EVAL_SPLIT` in gin).
    """
    from tinythinker_jax.data import benchmarks, locations

    fn = evaluate_checkpoint
    require_stage_mixture(fn, arguments["mixture_or_task_name"])
    gin_utils.require_choice(fn, "split", arguments["split"], benchmarks.SPLITS)
    gin_utils.require_positive(fn, {name: arguments[name] for name in ("num_chains", "max_questions")},
                               optional=("max_questions",))
    gin_utils.require_subset(fn, "sampled_stages", arguments["sampled_stages"], STAGES)
    check_chain_settings(arguments["chain_settings"])
    gin_utils.require_partitioner(arguments["partitioner"])
    output_dir = gin_utils.setting_name(fn, "output_dir", default="--out_dir")
    locations.require_local(arguments["output_dir"], output_dir)
    locations.require_writable(arguments["output_dir"], output_dir)


def require_stage_mixture(fn, name: Any) -> None:
    """Refuses a `mixture_or_task_name` that is not a stage mixture (`tinythinker.<dataset>.<stage_type>_stages`)
    at the start of a run, naming the setting (`MIXTURE_OR_TASK_NAME` in gin)."""
    import tinythinker_tasks

    gin_utils.require(isinstance(name, str), fn, "mixture_or_task_name", name, "a stage mixture name")
    try:
        tinythinker_tasks.parse_stage_mixture(name)
    except ValueError as e:
        raise UserError(f"{gin_utils.setting_name(fn, 'mixture_or_task_name')}: {e}") from e
