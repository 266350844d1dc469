"""Three-stage evaluation of a model on a split: every chain written out, accuracy summarised."""

import dataclasses
import os
from typing import Optional, Sequence

import jax

from tinythinker_jax import chains, partitioning
from tinythinker_jax.data.records import Question, write_json, write_jsonl
from tinythinker_jax.models import checkpoints, decoding


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
            "accuracy": accuracy, **(extra_summary or {}),
        })
    return EvaluationResult(accuracy, len(questions), predictions_path, summary_path)


def evaluate_checkpoint_on_mesh(
    checkpoint_path: str, questions: Sequence[Question], out_dir: str, settings: chains.ChainSettings, *, split: str,
    stage_type: str = "full", num_chains: int = 1, seed: int = 0, dtype: Optional[str] = None, mesh_data: int = -1,
    mesh_model: int = 1, parameter_partitioning_dims: int = 1, extra_summary: Optional[dict] = None,
) -> EvaluationResult:
    """`evaluate` with the checkpoint's model laid out on a ('data', 'model') mesh of every device, as training
    lays it out, so that a model too large for one device is evaluated too. Every process must run it."""
    mesh = partitioning.create_mesh(data=mesh_data, model=mesh_model)
    rules = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=parameter_partitioning_dims)
    with partitioning.activate(mesh, rules):
        model = checkpoints.load_model(checkpoint_path, dtype=dtype, mesh=mesh, rules=rules)
        runner = chains.ChainRunner(model, checkpoints.load_vocabulary(checkpoint_path), settings)
        return evaluate(runner, questions, out_dir, split=split, stage_type=stage_type, num_chains=num_chains,
                        seed=seed, extra_summary=extra_summary)


def evaluate_checkpoint(
    *, checkpoint_path: str, mixture_or_task_name: str, output_dir: str, split: str = "test", num_chains: int = 1,
    sampling: decoding.SamplingConfig = decoding.SamplingConfig(),
    chain_settings: chains.ChainSettings = chains.ChainSettings(), data_dir: Optional[str] = None,
    max_questions: Optional[int] = None, seed: int = 0, dtype: Optional[str] = None, mesh_data: int = -1,
    mesh_model: int = 1, parameter_partitioning_dims: int = 1,
) -> EvaluationResult:
    """`evaluate` on a model checkpoint; the stage mixture names the dataset and the chain's stage type.

    `sampling` applies to every stage (greedy by default; with `num_chains` > 1, a self-consistency vote).
    """
    import tinythinker_tasks
    from tinythinker_jax.data import locations, prepare

    dataset, stage_type = tinythinker_tasks.parse_stage_mixture(mixture_or_task_name)
    data_dir = data_dir or locations.dataset_dir(dataset)
    prepare.ensure_prepared(dataset, data_dir)
    tinythinker_tasks.register_dataset(dataset, data_dir, checkpoints.vocab_path(checkpoint_path))
    questions = tinythinker_tasks.load_questions(dataset, split)[:max_questions]
    settings = dataclasses.replace(chain_settings, recall=sampling, analyze=sampling, summarize=sampling)
    return evaluate_checkpoint_on_mesh(
        checkpoint_path, questions, output_dir, settings, split=split, stage_type=stage_type, num_chains=num_chains,
        seed=seed, dtype=dtype, mesh_data=mesh_data, mesh_model=mesh_model,
        parameter_partitioning_dims=parameter_partitioning_dims,
        extra_summary={"checkpoint": checkpoint_path, "dataset": dataset,
                       **{f"sampling_{k}": v for k, v in dataclasses.asdict(sampling).items()}})
