"""The whole method as one resumable run: phase 1, K self-reflection iterations, test evaluation of every
phase's best model, and the report.

Every piece leaves a marker (`sft/done.json`, `reflect/iteration_<i>/done.json`, `<phase>/test/
summary_test.json`), so re-running the same command continues from the first unfinished piece; the
trainers inside resume from their own checkpoints. `MODEL_DIR/pipeline.json` is rewritten after every
piece and is what `report` reads.
"""

import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax

import tinythinker_tasks
from tinythinker_jax import chains, evaluation, formats, gin_utils, partitioning, report
from tinythinker_jax.data import benchmarks, examples, locations, records
from tinythinker_jax.models import checkpoints, decoding, t5
from tinythinker_jax.phases import layout, markers, results, setup, train_checkpoints

PIPELINE_JSON = "pipeline.json"
# How the pipeline runs a phase: `train(model_dir=..., data_dir=...)` for phase 1 and
# `run_iteration(model_dir=..., iteration=..., data_dir=...)` for each iteration, as gin configures them.
PhaseFn = Callable[..., results.PhaseResult]


def model_name(config: t5.T5Config) -> str:
    """The name of the model's shape (e.g. t5_1_0_base), else the shape itself."""
    return t5.config_name(config) or (f"T5 d_model={config.d_model} "
                                      f"layers={config.num_encoder_layers}+{config.num_decoder_layers}")


def config_summary(mixture_or_task_name: str, sft: results.PhaseResult, iterations: int,
                   iteration_results: Sequence[results.PhaseResult], model: str) -> dict:
    """The settings a reader of the report needs, from what the phases report (the first iteration's
    settings stand for all: gin gives every iteration the same)."""
    dataset, stage_type = tinythinker_tasks.parse_stage_mixture(mixture_or_task_name)
    reflect = dict(iteration_results[0].settings) if iteration_results else {}
    return {
        "dataset": dataset, "model": model, "stage_type": stage_type,
        "reflect_stage_type": reflect.pop("stage_type", None),
        "num_options": benchmarks.get_benchmark(dataset).num_options,
        "sft": dict(sft.settings), "reflect": {"iterations": iterations, **reflect},
    }


def phase_summary(result: results.PhaseResult) -> dict:
    """A phase's entry in `pipeline.json`, before its test accuracies."""
    entry: dict[str, Any] = {"name": result.name, "validation_accuracy": result.best_accuracy,
                             "best_step": result.best_step, "wall_seconds": sum(result.wall_seconds.values())}
    if result.pairs:
        entry.update(pairs=result.pairs, wall_seconds_by_step=result.wall_seconds)
    return entry


def _data_summary(data_dir: str, stage_type: str) -> dict:
    teacher = records.read_teacher_records(locations.teacher_path(data_dir))
    return {"teacher_records": len(teacher),
            "stage_examples": {stage: len(examples.stage_examples(teacher, stage, stage_type))
                               for stage in formats.stages_of(stage_type)}}


def _test_accuracy(checkpoint: str, out_dir: str, questions, stage_type: str, settings: chains.ChainSettings,
                   partitioner: partitioning.Partitioner, num_chains: int = 1, seed: int = 0) -> float:
    """The checkpoint's accuracy on the test questions by chains of the stages it trained on (a vote when
    `num_chains` > 1), computed once, on the partitioner's mesh."""
    summary = markers.read_marker_before_the_step(os.path.join(out_dir, "summary_test.json"))
    if summary is not None:
        return summary["accuracy"]
    return evaluation.evaluate_checkpoint_on_mesh(
        checkpoint, questions, out_dir, settings, split="test", stage_type=stage_type, num_chains=num_chains,
        seed=seed, extra_summary={"checkpoint": checkpoint}, partitioner=partitioner).accuracy


def run_pipeline(
    *,
    model_dir: str,
    mixture_or_task_name: str,
    train_phase: PhaseFn,
    reflect_iteration: PhaseFn,
    iterations: int = 5,
    test_num_chains: int = 0,
    test_temperature: float = 0.7,
    test_sampled_stages: Sequence[str] = evaluation.SAMPLED_STAGES,
    max_test_questions: Optional[int] = None,
    data_dir: Optional[str] = None,
    chain_settings: chains.ChainSettings = chains.ChainSettings(),
    partitioner: partitioning.Partitioner = partitioning.Partitioner(),
) -> Optional[dict]:
    """Runs (or continues) the whole method: phase 1, `iterations` self-reflection iterations, the test
    evaluation of every phase's best model, and `model_dir/report.md`. Finished phases are found by their
    markers and skipped.

    Args:
        model_dir: The run directory (`MODEL_DIR`): `sft/`, `reflect/iteration_<i>/`, `pipeline.json`, the report.
        mixture_or_task_name: The stage mixture (it names the dataset and the chain's stage type).
        train_phase: Phase 1, called with `model_dir` and `data_dir` (gin: `@trainer.train`, configured).
        reflect_iteration: One iteration, called with `model_dir`, `iteration` and `data_dir` (gin:
            `@iteration.run_iteration`, configured).
        iterations: Self-reflection iterations after phase 1 (0: phase 1 only).
        test_num_chains: Chains per test question for the self-consistency vote (0 or 1: greedy only).
        test_temperature: The sampling temperature of the vote's sampled stages (top_k 0).
        test_sampled_stages: The stages the vote's chains sample (default: the official recall and analyze;
            the summary greedy).
        max_test_questions: Test questions (default: all).
        data_dir: The prepared dataset directory.
        chain_settings: Decoding limits of the test chains.
        partitioner: The test evaluation's device mesh and rules (in gin, the training's).

    Returns:
        The pipeline's state as `pipeline.json` records it, or None when SIGTERM stopped it (run it again to
        resume).
    """
    check_settings(locals())  # first: locals() holds exactly the arguments
    setup.require_model_dir(run_pipeline, model_dir)
    started = time.time()
    dataset, stage_type = tinythinker_tasks.parse_stage_mixture(mixture_or_task_name)
    data_dir = data_dir or locations.dataset_dir(dataset)
    path = os.path.join(model_dir, PIPELINE_JSON)
    previous = markers.read_marker(path) or {}
    state: dict[str, Any] = {"phases": [], "wall_seconds": previous.get("wall_seconds", 0.0)}

    def save(final: bool = False) -> None:
        state["wall_seconds"] = previous.get("wall_seconds", 0.0) + time.time() - started
        if jax.process_index() == 0:
            records.write_json(path, state)
            if final:
                report.write_report(model_dir)

    sft_dir = layout.sft_dir(model_dir)
    sft = results.read_done(sft_dir, before_the_step=True) or train_phase(model_dir=sft_dir, data_dir=data_dir)
    if sft.preempted:
        save()
        return None
    sft_best = train_checkpoints.best_dir(sft_dir)
    model = model_name(checkpoints.load_config(sft_best))
    state["config"] = config_summary(mixture_or_task_name, sft, iterations, [], model)
    state["data"] = _data_summary(data_dir, stage_type)
    tinythinker_tasks.register_dataset(dataset, data_dir, checkpoints.vocab_path(sft_best))
    test_questions = tinythinker_tasks.load_questions(dataset, "test")[:max_test_questions]
    # The chains read generated text: a cap, if set, never cuts below the widest input phase 1 trained on.
    chain_settings = setup.chain_settings_for(chain_settings, setup.read_data_stats(sft_dir))
    voting = evaluation.stage_settings(chain_settings, decoding.SamplingConfig(temperature=test_temperature),
                                       test_sampled_stages)

    def tested(result: results.PhaseResult, phase_dir: str) -> dict:
        phase, best = phase_summary(result), train_checkpoints.best_dir(phase_dir)
        phase["data_stats"] = setup.read_data_stats(phase_dir)
        phase["test_accuracy"] = _test_accuracy(best, os.path.join(phase_dir, "test"), test_questions,
                                                stage_type, chain_settings, partitioner)
        phase["test_self_consistency_accuracy"] = None
        if test_num_chains > 1:
            phase["test_self_consistency_accuracy"] = _test_accuracy(
                best, os.path.join(phase_dir, "test_self_consistency"), test_questions, stage_type, voting,
                partitioner, test_num_chains)
        return phase

    state["phases"].append(tested(sft, sft_dir))
    save()
    iteration_results = []
    for i in range(1, iterations + 1):
        result = reflect_iteration(model_dir=model_dir, iteration=i, data_dir=data_dir)
        if result.preempted:
            save()
            return None
        iteration_results.append(result)
        state["config"] = config_summary(mixture_or_task_name, sft, iterations, iteration_results, model)
        state["phases"].append(tested(result, layout.iteration_dir(model_dir, i)))
        save()
    save(final=True)
    return state


def check_settings(arguments: Mapping[str, Any]) -> None:
    """The start of `run_pipeline`: refuses, before phase 1 starts, its own bad settings, naming each as the
    user set it. (Each phase checks its own when it starts; the `pipeline` command checks them all first.)

    Args:
        arguments: `run_pipeline`'s arguments.

    Raises:
        UserError: Naming the first bad setting.
    """
    fn = run_pipeline
    evaluation.require_stage_mixture(fn, arguments["mixture_or_task_name"])
    # ITERATIONS = 0 is phase 1, its test accuracy and the report; TEST_NUM_CHAINS <= 1 votes on nothing.
    gin_utils.require_non_negative(fn, "iterations", arguments["iterations"], integer=True)
    gin_utils.require_non_negative(fn, "test_num_chains", arguments["test_num_chains"], integer=True)
    gin_utils.require_non_negative(fn, "test_temperature", arguments["test_temperature"])
    gin_utils.require_subset(fn, "test_sampled_stages", arguments["test_sampled_stages"], evaluation.STAGES)
    gin_utils.require_positive(fn, {"max_test_questions": arguments["max_test_questions"]},
                               optional=("max_test_questions",))
    evaluation.check_chain_settings(arguments["chain_settings"])
    gin_utils.require_partitioner(arguments["partitioner"])
