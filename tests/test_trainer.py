"""Phase 1 trainer: resumption (SIGTERM included), non-finite losses, sharded == unsharded."""

import functools
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from processes import run_two_processes
from tinythinker_jax import errors
from tinythinker_jax.models import checkpoints as model_checkpoints
from tinythinker_jax.models import t5
from tinythinker_jax.phases import loop, optimizers, results, train_checkpoints
from tinythinker_jax.training import trainer

STEPS = 6


def train_tiny(model_dir, data_dir, **overrides):
    settings = dict(
        model_dir=str(model_dir), mixture_or_task_name="tinythinker.toyworld.full_stages",
        task_feature_lengths={"inputs": 192, "targets": 32},
        model_config=t5.model_config("t5_1_0_tiny", vocab_size=768),  # dropout on: its RNG must resume too
        batch_size=8, train_steps=STEPS, interval=1, data_dir=data_dir, max_eval_questions=2, eval_every=STEPS,
        log_every=1,
    )
    return trainer.train(**{**settings, **overrides})


def losses(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def final_params(model_dir, step=STEPS):
    with ocp.StandardCheckpointer() as checkpointer:
        arrays = checkpointer.restore(os.path.join(model_dir, "checkpoints", str(step), "arrays"))
    return arrays["params"]


@pytest.fixture(scope="module")
def uncut(small_toyworld, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("uncut")
    result = train_tiny(model_dir, small_toyworld)
    assert (result.step, result.preempted, result.best_step) == (STEPS, False, STEPS)
    return str(model_dir)


def test_run_writes_configs_metrics_checkpoint_and_best_model(uncut):
    assert sorted(losses(uncut)) == list(range(1, STEPS + 1))
    assert os.path.exists(os.path.join(uncut, "best", "t5_config.json"))
    assert json.load(open(os.path.join(uncut, "best", "best.json")))["step"] == STEPS
    assert json.load(open(os.path.join(uncut, "done.json")))["best_step"] == STEPS
    assert os.path.isdir(os.path.join(uncut, "tensorboard", "train"))
    stats = json.load(open(os.path.join(uncut, "data_stats.json")))
    assert list(stats) == ["recall", "analyze", "summarize"]
    assert all(entry["examples_cut"] == entry["tokens_cut"] == 0 for entry in stats.values())


def test_sigterm_saves_and_the_same_command_resumes_identically(uncut, small_toyworld, tmp_path, monkeypatch):
    add = loop.PendingMetrics.add

    def add_then_preempt(self, step, stage, values):
        add(self, step, stage, values)
        if step == 3:  # a real SIGTERM, delivered mid-run to the trainer's own handler
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(loop.PendingMetrics, "add", add_then_preempt)
    cut = train_tiny(tmp_path, small_toyworld, log_every=2)
    assert (cut.step, cut.preempted) == (3, True)
    assert not os.path.exists(tmp_path / "done.json")  # its best model is not M(0) yet
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    monkeypatch.setattr(loop.PendingMetrics, "add", add)
    resumed = train_tiny(tmp_path, small_toyworld)
    assert (resumed.step, resumed.preempted) == (STEPS, False)
    # The cut run logged every 2 steps (step 2's row is the mean of steps 1 and 2); SIGTERM logged step 3.
    cut_losses, expected = losses(str(tmp_path)), losses(uncut)
    assert sorted(cut_losses) == list(range(2, STEPS + 1))
    np.testing.assert_allclose(cut_losses.pop(2), (expected.pop(1) + expected.pop(2)) / 2, rtol=1e-6)
    assert cut_losses == expected
    jax.tree.map(np.testing.assert_array_equal, final_params(uncut), final_params(str(tmp_path)))


def test_exploding_run_stops_with_its_step_and_writes_no_checkpoint(small_toyworld, tmp_path):
    exploding = functools.partial(optimizers.create_optimizer, learning_rate=1e30, max_grad_norm=None)
    with pytest.raises(FloatingPointError, match=r"(loss|grad_norm) is (nan|inf) at step [1-9]"):
        train_tiny(tmp_path, small_toyworld, create_optimizer=exploding)
    assert not os.listdir(os.path.join(tmp_path, "checkpoints"))
    assert not os.path.exists(os.path.join(tmp_path, "best"))


def test_non_finite_gradient_with_a_finite_loss_stops_at_its_step(small_toyworld, tmp_path, monkeypatch):
    """d/dx sqrt(x) at 0 is infinite: the loss stays finite while the update would turn every parameter NaN."""
    sft_loss = trainer.losses.sft_loss

    def loss_with_infinite_gradient(model, batch, dropout_rng):
        loss, values = sft_loss(model, batch, dropout_rng)
        scale = model.encoder.final_layer_norm.scale[...]
        return loss + jnp.sqrt(scale - scale).sum(), values

    monkeypatch.setattr(trainer.losses, "sft_loss", loss_with_infinite_gradient)
    with pytest.raises(FloatingPointError, match=r"grad_norm is (nan|inf) at step 1 \(stage recall\)"):
        train_tiny(tmp_path, small_toyworld)
    assert not os.listdir(os.path.join(tmp_path, "checkpoints"))
    assert not os.path.exists(os.path.join(tmp_path, "best"))


def test_a_device_out_of_memory_is_one_line_naming_the_batch(small_toyworld, tmp_path, monkeypatch):
    """XLA's RESOURCE_EXHAUSTED (which an accelerator raises at the first step of a batch too large) is a
    UserError that says what to change; the run writes no done.json."""
    def out_of_memory(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81.00GiB.\nmore")

    monkeypatch.setattr(loop, "make_train_step", lambda *args: out_of_memory)
    with pytest.raises(errors.UserError, match=r"sft: a device ran out of memory with 8 rows per step "
                                               r"\(RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                                               r"81.00GiB.\): lower the batch size"):
        train_tiny(tmp_path, small_toyworld)
    assert not os.path.exists(os.path.join(tmp_path, results.DONE))


def test_a_best_model_cut_between_its_renames_is_put_back(tmp_path):
    os.makedirs(tmp_path / "best.previous")
    (tmp_path / "best.previous" / "best.json").write_text('{"step": 4}')
    train_checkpoints.TrainCheckpoints(str(tmp_path), keep=2).close()
    assert json.loads((tmp_path / "best" / "best.json").read_text()) == {"step": 4}
    assert not os.path.exists(tmp_path / "best.previous")


SHARDED_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_trainer import losses, train_tiny
from tinythinker_jax.partitioning import Partitioner
out = {{}}
for data, model in ((8, 1), (4, 2), (2, 4)):
    model_dir = {tmp!r} + f"/mesh_{{data}}x{{model}}"
    # Losses only: the two-process test evaluates on a mesh, so these runs skip evaluation's compiles.
    train_tiny(model_dir, {data_dir!r}, partitioner=Partitioner(data=data, model=model), max_eval_questions=0)
    out[f"{{data}}x{{model}}"] = losses(model_dir)
print("LOSSES" + json.dumps(out))
"""


def test_sharded_runs_match_one_device(uncut, small_toyworld, tmp_path):
    script = SHARDED_SCRIPT.format(tests=os.path.dirname(__file__), tmp=str(tmp_path), data_dir=small_toyworld)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    by_mesh = json.loads(result.stdout.split("LOSSES", 1)[1])
    expected = losses(uncut)
    for mesh, values in by_mesh.items():
        np.testing.assert_allclose([values[str(s)] for s in sorted(expected)], [expected[s] for s in sorted(expected)],
                                   rtol=2e-5, err_msg=f"mesh {mesh}")


def test_evaluate_command_writes_every_chain_and_the_accuracy(uncut, small_toyworld, tmp_path):
    from tinythinker_jax import cli

    argv = ["evaluate", "--checkpoint", os.path.join(uncut, "best"), "--dataset", "toyworld", "--data_dir",
            small_toyworld, "--split", "test", "--out_dir", str(tmp_path), "--max_questions", "3", "--num_chains", "2",
            "--temperature", "0.7", "--max_decode_length", "8"]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in open(tmp_path / "predictions_test.jsonl")]
    assert len(rows) == 3 and all(len(row["chains"]) == 2 for row in rows)
    chain = rows[0]["chains"][0]
    assert set(chain) == {"recall", "analyses", "summary", "prediction"}
    assert sorted(chain["analyses"]) == ["A", "B", "C", "D", "E"]
    summary = json.load(open(tmp_path / "summary_test.json"))
    assert summary["num_questions"] == 3 and summary["num_chains"] == 2
    assert summary["accuracy"] == sum(row["correct"] for row in rows) / 3


def test_evaluate_command_by_gin_or_on_a_mesh_is_the_same_evaluation(uncut, small_toyworld, tmp_path):
    from tinythinker_jax import cli

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    evaluate = ["evaluate", "--checkpoint", os.path.join(uncut, "best"), "--dataset", "toyworld", "--data_dir",
                small_toyworld, "--max_questions", "2"]
    flags = [*evaluate, "--out_dir", str(tmp_path / "flags")]
    by_gin = ["evaluate", "--gin_search_paths", repo, "--gin_file=gin/runs/evaluate.gin",
              "--gin.MIXTURE_OR_TASK_NAME='tinythinker.toyworld.full_stages'",
              f"--gin.CHECKPOINT_PATH='{os.path.join(uncut, 'best')}'", f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'gin'}'",
              f"--gin.DATA_DIR='{small_toyworld}'", "--gin.evaluation.evaluate_checkpoint.max_questions=2"]
    try:
        assert cli.main(flags) == 0 and cli.main(by_gin) == 0
    finally:
        import gin

        gin.clear_config()
    # Model-parallel, parameters also sharded over 'data', on 8 fake devices (the pipeline's test evaluates on
    # two processes).
    sharded = [*evaluate, "--out_dir", str(tmp_path / "sharded"), "--mesh_data", "2", "--mesh_model", "4",
               "--parameter_partitioning_dims", "2"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "tinythinker_jax.cli", *sharded], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for other in ("gin", "sharded"):
        assert open(tmp_path / "flags" / "predictions_test.jsonl").read() == \
            open(tmp_path / other / "predictions_test.jsonl").read(), other


TWO_PROCESS_SCRIPT = """
import os, sys, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from tinythinker_jax import cli
from tinythinker_jax.phases import loop
run = loop.Loop.run
if sys.argv[2] == "1":  # a slower host: process 0 writes what follows training (done.json) first
    loop.Loop.run = lambda self: (run(self), time.sleep(3))[0]
sys.exit(cli.main({argv!r} + ["--num_processes", "2", "--coordinator_address", "127.0.0.1:" + sys.argv[1],
                              "--process_id", sys.argv[2]]))
"""

PREEMPTION_SCRIPT = """
import signal, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize("127.0.0.1:" + sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from tinythinker_jax.phases import loop
preemption = loop.Preemption()
if jax.process_index() == 1:
    signal.raise_signal(signal.SIGTERM)
print("STOP", preemption.stop_now(at_log_step=False), preemption.stop_now(at_log_step=True))
"""


def test_a_sigterm_to_one_process_stops_every_process_at_the_next_log_step():
    """Every save is collective: a process that stopped alone would leave the others waiting forever."""
    outputs = run_two_processes(PREEMPTION_SCRIPT)
    assert [output.split("STOP ", 1)[1].split() for output in outputs] == [["False", "True"]] * 2


def pipeline_argv(model_dir, data_dir):
    """The pipeline's command line, its SFT phase set up exactly as `train_tiny`, no iterations."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return ["pipeline", "--gin_search_paths", repo, "--gin_file=gin/runs/pipeline.gin",
            "--gin_file=gin/models/t5_1_0_tiny.gin", "--gin.MIXTURE_OR_TASK_NAME='tinythinker.toyworld.full_stages'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 192, 'targets': 32}", "--gin.t5.model_config.vocab_size=768",
            "--gin.BATCH_SIZE=8", f"--gin.TRAIN_STEPS={STEPS}", "--gin.INTERVAL=1", f"--gin.DATA_DIR='{data_dir}'",
            f"--gin.MODEL_DIR='{model_dir}'", "--gin.trainer.train.max_eval_questions=2",
            f"--gin.trainer.train.eval_every={STEPS}", "--gin.trainer.train.log_every=1", "--gin.ITERATIONS=0",
            "--gin.pipeline.run_pipeline.max_test_questions=2"]


def test_pipeline_on_two_processes_matches_one(uncut, small_toyworld, tmp_path):
    """The pipeline's SFT phase on two local processes with 4 fake CPU devices each (JAX's CPU collectives),
    each feeding its own rows, against the same training in one process."""
    sft_dir = str(tmp_path / "sft")
    run_two_processes(TWO_PROCESS_SCRIPT.format(argv=pipeline_argv(tmp_path, small_toyworld)))
    expected, actual = losses(uncut), losses(sft_dir)
    assert sorted(actual) == sorted(expected)
    np.testing.assert_allclose([actual[s] for s in sorted(expected)], [expected[s] for s in sorted(expected)],
                               rtol=2e-5)
    # The saved best model (step 6) restores on any topology; both runs must hold the same parameters.
    _, expected_params = model_checkpoints.load_params_numpy(os.path.join(uncut, "best"))
    _, actual_params = model_checkpoints.load_params_numpy(os.path.join(sft_dir, "best"))
    # Two processes reduce gradients in another order; Adam turns those float32 differences into parameter
    # differences of a few 1e-6 where a gradient is near zero (seen: 3.6e-6 on 1 of 4096 weights).
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=2e-5), expected_params, actual_params)
    state = json.load(open(tmp_path / "pipeline.json"))
    assert [phase["name"] for phase in state["phases"]] == ["sft"] and (tmp_path / "report.md").is_file()
    # The test split was evaluated on the two processes' mesh: the same chains as on one device.
    from tinythinker_jax import cli

    assert cli.main(["evaluate", "--checkpoint", os.path.join(sft_dir, "best"), "--dataset", "toyworld", "--data_dir",
                     small_toyworld, "--out_dir", str(tmp_path / "one_device"), "--max_questions", "2"]) == 0
    assert open(tmp_path / "one_device" / "predictions_test.jsonl").read() == \
        open(os.path.join(sft_dir, "test", "predictions_test.jsonl")).read()
