"""`tinythinker demo` / the pipeline, shrunk to seconds: phases in order, the report, and resuming after an
interruption without redoing finished work."""

import json
import os
import signal

import jax
import pytest

import gin
from tinythinker_jax import chains, cli, evaluation, pipeline
from tinythinker_jax.data import records
from tinythinker_jax.errors import UserError
from tinythinker_jax.models import t5
from tinythinker_jax.phases import loop, results
from tinythinker_jax.reflection import iteration
from tinythinker_jax.training import trainer

SMALL = ["--gin.TRAIN_STEPS=4", "--gin.ITERATIONS=1", "--gin.REFLECT_MAX_QUESTIONS=4", "--gin.NUM_SAMPLES=2",
         "--gin.ROUNDS=1", "--gin.trainer.train.max_eval_questions=2", "--gin.trainer.train.eval_every=4",
         "--gin.iteration.run_iteration.max_eval_questions=2", "--gin.pipeline.run_pipeline.max_test_questions=3",
         "--gin.t5.model_config.name='t5_1_0_tiny'"]


def demo(out):
    try:
        return cli.main(["demo", "--out", str(out), *SMALL])
    finally:
        gin.clear_config()


def test_interrupted_demo_resumes_without_redoing_finished_work(tmp_path, monkeypatch, capsys, request):
    add = loop.PendingMetrics.add

    def add_then_preempt(self, step, stage, values):
        add(self, step, stage, values)
        if step == 2:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(loop.PendingMetrics, "add", add_then_preempt)
    assert demo(tmp_path) == 0
    assert "run `tinythinker demo --out" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "sft" / "done.json")

    monkeypatch.setattr(loop.PendingMetrics, "add", add)
    assert demo(tmp_path) == 0
    printed = capsys.readouterr().out
    state = json.load(open(tmp_path / "pipeline.json"))
    assert [phase["name"] for phase in state["phases"]] == ["sft", "iteration_1"]
    assert state["phases"][1]["pairs"]["recall"] >= 4  # random student: every sampled recall is wrong
    assert all(0.0 <= phase["test_accuracy"] <= 1.0 for phase in state["phases"])
    assert state["config"]["dataset"] == "toyworld_yesno" and state["data"]["teacher_records"] > 0
    # The configuration comes from the phases' results and the best checkpoint, as the gin files set them.
    config = state["config"]
    assert config["model"] == "t5_1_0_tiny (vocab_size 768)" and config["reflect_stage_type"] == "recall_analyze"
    assert (config["sft"]["batch_size"], config["sft"]["learning_rate"], config["sft"]["train_steps"]) == (32, 1e-3, 4)
    assert (config["reflect"]["iterations"], config["reflect"]["learning_rate"], config["reflect"]["num_samples"],
            config["reflect"]["rounds"]) == (1, 2e-5, 2, 1)
    for name in ("report.md", "report.json", "accuracy.png"):
        assert (tmp_path / name).is_file()
    assert "| iteration_1 |" in printed

    request.getfixturevalue("forbid_redoing_work")
    assert demo(tmp_path) == 0
    again = json.load(open(tmp_path / "pipeline.json"))
    assert again["phases"] == state["phases"] and again["config"] == state["config"]


def test_the_demo_explains_an_install_without_its_gin_files(tmp_path, monkeypatch, capsys):
    """The gin files ship in the package (and stay beside it in a checkout): without them, one line says so."""
    from tinythinker_jax import gin_utils

    monkeypatch.setattr(gin_utils, "__file__", str(tmp_path / "site" / "tinythinker_jax" / "gin_utils.py"))
    assert demo(tmp_path / "out") == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert "the project's gin files are neither in" in line and "reinstall tinythinker-jax" in line


@pytest.mark.parametrize("entry", ["train", "reflect", "pipeline"])
def test_a_url_model_dir_is_refused_before_any_work(entry, tmp_path, monkeypatch):
    """Not a local `gs:` directory beside checkpoints that Orbax put in the bucket."""
    monkeypatch.chdir(tmp_path)
    url, mixture, config = "gs://bucket/run", "tinythinker.toyworld.full_stages", t5.model_config("t5_1_0_tiny")
    run = {
        "train": lambda: trainer.train(model_dir=url, mixture_or_task_name=mixture, task_feature_lengths={},
                                       model_config=config),
        "reflect": lambda: iteration.run_iteration(model_dir=url, iteration=1, mixture_or_task_name=mixture,
                                                   task_feature_lengths={}, model_config=config),
        "pipeline": lambda: pipeline.run_pipeline(model_dir=url, mixture_or_task_name=mixture,
                                                  train_phase=trainer.train, reflect_iteration=iteration.run_iteration),
    }[entry]
    with pytest.raises(UserError, match="MODEL_DIR 'gs://bucket/run' is a URL; mount the bucket"):
        run()
    assert os.listdir(tmp_path) == []


def test_only_the_first_process_writes_an_evaluation(tmp_path, monkeypatch):
    """Every process evaluates the test split (the same result); the others write nothing to the shared run."""
    question = records.make_question("q", "Is it?", [("A", "yes"), ("B", "no")], "A")

    class Runner:
        def run(self, questions, stage_type, num_chains, seed):
            return [[chains.Chain(None, None, "So the answer is option A.", "A")] for _ in questions]

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert evaluation.evaluate(Runner(), [question], str(tmp_path), split="test").accuracy == 1.0
    assert os.listdir(tmp_path) == []


def test_a_done_marker_of_another_version_is_named(tmp_path):
    """A phase-1 `done.json` written before phases returned one `PhaseResult` stops the run, naming the file."""
    (tmp_path / "done.json").write_text('{"validation_accuracy": 0.5, "best_step": 1, "wall_seconds": 3.0}')
    with pytest.raises(UserError, match=f"{tmp_path}/done.json is not a phase result"):
        results.read_done(str(tmp_path))
    finished = results.PhaseResult("sft", 4, 0.5, 4, {"train": 3.0}, {"batch_size": 8})
    results.write_done(str(tmp_path), finished)
    assert results.read_done(str(tmp_path)) == finished
