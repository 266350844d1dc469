"""Every mistake on a command line is one line: exit code 2, one `error:` line on stderr that names the flag,
macro or file, and nothing written before is touched. Each case fails at the start of its command: the
functions that would set up data, train or evaluate fail the test if they are reached."""

import os
import subprocess
import sys

import pytest

import gin
from test_report import COMPLETE, make_run
from tinythinker_jax import cli, errors, evaluation, pipeline
from tinythinker_jax.data import prepare
from tinythinker_jax.phases import results, setup
from tinythinker_jax.reflection import iteration
from tinythinker_jax.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT = ["--gin_search_paths", REPO, "--gin_file=gin/runs/sft.gin",
       "--gin_file=gin/experiments/toyworld_yesno_t5_mini_sft.gin"]
REFLECT = ["--gin_search_paths", REPO, "--gin_file=gin/runs/reflect.gin",
           "--gin_file=gin/experiments/toyworld_yesno_t5_mini_sft.gin"]
PIPELINE = ["--gin_search_paths", REPO, "--gin_file=gin/runs/pipeline.gin",
            "--gin_file=gin/experiments/toyworld_yesno_t5_mini_pipeline.gin"]
EVALUATE_GIN = ["--gin_search_paths", REPO, "--gin_file=gin/runs/evaluate.gin",
                "--gin_file=gin/experiments/toyworld_yesno_t5_mini_sft.gin", "--gin.CHECKPOINT_PATH='ckpt'"]
EVALUATE = ["--checkpoint", "ckpt", "--dataset", "toyworld_yesno"]


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Any case that gets as far as setting up data or a model has failed to fail at the start."""
    def fail(*args, **kwargs):
        raise AssertionError("the command started work instead of refusing its input")

    for module, name in ((setup, "setup_data"), (prepare, "ensure_prepared"), (pipeline, "_data_summary"),
                         (evaluation, "evaluate_checkpoint_on_mesh")):
        monkeypatch.setattr(module, name, fail)
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    yield
    gin.clear_config()


@pytest.fixture
def run_dir(tmp_path):
    """A MODEL_DIR with files from an earlier run, which no refused command may touch."""
    path = tmp_path / "run"
    (path / "sft").mkdir(parents=True)
    (path / "config.gin").write_text("BATCH_SIZE = 32\n")
    (path / "sft" / "metrics.jsonl").write_text('{"step": 1}\n')
    return path


def snapshot(root) -> dict[str, tuple[bytes, int]]:
    """Every file and directory under `root`, with its contents and modification time."""
    files = {}
    for directory, _, names in os.walk(root):
        files[directory] = (b"", os.stat(directory).st_mtime_ns)
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                files[path] = (f.read(), os.stat(path).st_mtime_ns)
    return files


def refused(argv, capsys) -> str:
    """Runs `tinythinker argv` in this process; returns its one error line after checking the exit code and
    that the line is the last on stderr and the only one of its kind."""
    assert cli.main(argv) == errors.EXIT_CODE
    lines = capsys.readouterr().err.splitlines()
    assert lines and lines[-1].startswith("error: ")
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    return lines[-1]


def check_refused(argv, expected, capsys, tmp_path):
    before = snapshot(tmp_path)
    line = refused(argv, capsys)
    for part in expected:
        assert part in line, line
    assert snapshot(tmp_path) == before


# (bindings or flags, what the error line says); "{dir}" is the run directory.
TRAIN_CASES = {
    "mistyped macro": (["--gin.TRAIN_STEP=5"], ["--gin.TRAIN_STEP=5", "macro TRAIN_STEP", "did you mean TRAIN_STEPS"]),
    "unknown parameter": (["--gin.trainer.train.batchsize=3"],
                          ["--gin.trainer.train.batchsize=3", "doesn't have a parameter named 'batchsize'"]),
    "unknown configurable": (["--gin.trainr.train.batch_size=3"], ["No configurable matching 'trainr.train'"]),
    "value that does not parse": (["--gin.EPOCHS=5)"], ["--gin.EPOCHS=5): gin cannot parse 'EPOCHS=5)'"]),
    "unclosed bracket": (["--gin.EPOCHS=(5"], ["--gin.EPOCHS=(5: gin cannot parse it"]),
    "missing gin file": (["--gin_file=gin/runs/nope.gin"], ["--gin_file gin/runs/nope.gin: not found"]),
    "zero batch": (["--gin.BATCH_SIZE=0"], ["BATCH_SIZE is 0: it must be a positive integer"]),
    "negative steps": (["--gin.TRAIN_STEPS=-1"], ["TRAIN_STEPS is -1"]),
    "zero epochs": (["--gin.EPOCHS=0"], ["EPOCHS is 0"]),
    "fractional epochs": (["--gin.EPOCHS=2.5"], ["EPOCHS is 2.5: it must be a positive integer"]),
    "zero interval": (["--gin.INTERVAL=0"], ["INTERVAL is 0"]),
    "zero evaluation period": (["--gin.trainer.train.eval_every=0"], ["trainer.train.eval_every is 0"]),
    "negative validation questions": (["--gin.trainer.train.max_eval_questions=-1"],
                                      ["trainer.train.max_eval_questions is -1: it must be an integer >= 0"]),
    "zero chain batch": (["--gin.chains.ChainSettings.batch_size=0"], ["chains.ChainSettings.batch_size is 0"]),
    "batch beyond memory": (["--gin.BATCH_SIZE=1000000000"], ["BATCH_SIZE is 1000000000: one step needs at least",
                                                               "GiB", "more than the", "lower it"]),
    "chain batch beyond memory": (["--gin.chains.ChainSettings.batch_size=1000000000"],
                                  ["chains.ChainSettings.batch_size is 1000000000: one step needs at least"]),
    "zero decode length": (["--gin.chains.ChainSettings.max_decode_length=0"],
                           ["chains.ChainSettings.max_decode_length is 0"]),
    "zero mesh axis": (["--gin.MESH_DATA=0"], ["MESH_DATA is 0: it must be a positive integer or -1"]),
    "mesh larger than the devices": (["--gin.MESH_MODEL=4096"], ["MESH_MODEL=4096", "does not use the"]),
    "partitioning dims": (["--gin.PARAMETER_PARTITIONING_DIMS=3"], ["PARAMETER_PARTITIONING_DIMS is 3"]),
    "unknown mixture": (["--gin.MIXTURE_OR_TASK_NAME='tinythinker.nope.full_stages'"],
                        ["MIXTURE_OR_TASK_NAME", "tinythinker.nope.full_stages"]),
    "URL model dir": (["--gin.MODEL_DIR='gs://bucket/run'"], ["MODEL_DIR 'gs://bucket/run' is a URL"]),
    "model dir under a file": (["--gin.MODEL_DIR='{dir}/config.gin/run'"], ["MODEL_DIR", "config.gin/run",
                                                                             "cannot be written"]),
    "zero processes": (["--num_processes", "0"], ["argument --num_processes", "got '0'"]),
    "processes without a coordinator": (["--num_processes", "2"], ["--coordinator_address"]),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_refuses_at_start(case, run_dir, tmp_path, capsys):
    extra, expected = TRAIN_CASES[case]
    argv = ["train", *SFT, f"--gin.MODEL_DIR='{run_dir}'", *(arg.format(dir=run_dir) for arg in extra)]
    check_refused(argv, expected, capsys, tmp_path)


@pytest.mark.parametrize("argv, expected", [
    (["train"], ["train needs at least one --gin_file"]),
    (["train", "--gin_search_paths", REPO, "--gin_file=gin/experiments/toyworld_yesno_t5_mini_sft.gin"],
     ["no --gin_file configures trainer.train"]),
    (["train", *SFT], ["MODEL_DIR is required: set it with --gin.MODEL_DIR="]),
    (["train", *SFT, "--gin.MODEL_DIRR='m'"], ["--gin.MODEL_DIRR='m': no gin file uses the macro MODEL_DIRR",
                                              "did you mean MODEL_DIR"]),
    (["train", "--gin_search_paths", REPO, "--gin_file=gin/runs/sft.gin", "--gin.MODEL_DIR='m'"],
     ["%MODEL_CONFIG but none sets it"]),
], ids=["no gin file", "no run gin", "no MODEL_DIR", "MODEL_DIR mistyped", "no experiment gin"])
def test_train_names_what_is_missing(argv, expected, tmp_path, capsys):
    check_refused(argv, expected, capsys, tmp_path)


GIN_FILES = {  # a gin file of the user's with one mistake -> what the error line says
    "unknown parameter": ("from __gin__ import dynamic_registration\nfrom tinythinker_jax.training import trainer\n"
                          "trainer.train.nope = 3\n", ["doesn't have a parameter named 'nope'", "line 3"]),
    "missing include": ("include 'gin/runs/sftt.gin'\n", ["Unable to open file: gin/runs/sftt.gin", "line 1"]),
    "unknown module": ("from __gin__ import dynamic_registration\nfrom tinythinker_jax import nomodule\n",
                       ["No module named 'tinythinker_jax.nomodule'"]),
    "unclosed bracket": ("BATCH_SIZE = (3\n", ["gin cannot parse it: EOF in multi-line statement"]),
}


@pytest.mark.parametrize("case", GIN_FILES)
def test_a_mistake_in_a_gin_file_names_the_file(case, tmp_path, capsys):
    text, expected = GIN_FILES[case]
    path = tmp_path / "mine.gin"
    path.write_text(text)
    check_refused(["train", *SFT, f"--gin_file={path}", "--gin.MODEL_DIR='m'"], [f"--gin_file {path}: ", *expected],
                  capsys, tmp_path)


REFLECT_CASES = {
    "iteration 0": (["--gin.ITERATION=0"], ["ITERATION is 0: it must be a positive integer"]),
    "zero rounds": (["--gin.ROUNDS=0"], ["ROUNDS is 0"]),
    "zero batch": (["--gin.REFLECT_BATCH_SIZE=0"], ["REFLECT_BATCH_SIZE is 0"]),
    "batch beyond memory": (["--gin.REFLECT_BATCH_SIZE=1000000000"],
                            ["REFLECT_BATCH_SIZE is 1000000000: one step needs at least"]),
    "zero samples": (["--gin.NUM_SAMPLES=0"], ["NUM_SAMPLES is 0"]),
    "zero questions": (["--gin.REFLECT_MAX_QUESTIONS=0"], ["REFLECT_MAX_QUESTIONS is 0"]),
    "negative temperature": (["--gin.sampling.PairSampling.temperature=-0.5"],
                             ["sampling.PairSampling.temperature is -0.5: it must be a number >= 0"]),
    "unknown stage type": (["--gin.REFLECT_STAGE_TYPE='recal'"], ["REFLECT_STAGE_TYPE is 'recal'", "'recall'"]),
    "zero beta": (["--gin.BETA=0"], ["BETA is 0: it must be a number > 0"]),
    "mistyped macro": (["--gin.ROUND=3"], ["--gin.ROUND=3", "did you mean ROUNDS"]),
    "phase 1 not finished": ([], ["iteration 1 starts from M(0)", "phase 1 is not finished"]),
    "URL model dir": (["--gin.MODEL_DIR='gs://bucket/run'"], ["MODEL_DIR 'gs://bucket/run' is a URL"]),
}


@pytest.mark.parametrize("case", REFLECT_CASES)
def test_reflect_refuses_at_start(case, run_dir, tmp_path, capsys):
    extra, expected = REFLECT_CASES[case]
    check_refused(["reflect", *REFLECT, f"--gin.MODEL_DIR='{run_dir}'", *extra], expected, capsys, tmp_path)


def test_reflect_refuses_an_unwritable_iteration_directory(run_dir, tmp_path, capsys):
    results.write_done(str(run_dir / "sft"), results.PhaseResult("sft", 1, 0.5, 1, {"train": 1.0}, {}))
    (run_dir / "reflect").write_text("a file where the iterations' directory goes")
    check_refused(["reflect", *REFLECT, f"--gin.MODEL_DIR='{run_dir}'"], ["reflect/iteration_1", "cannot be written"],
                  capsys, tmp_path)


PIPELINE_CASES = {
    "negative iterations": (["--gin.ITERATIONS=-1"], ["ITERATIONS is -1: it must be an integer >= 0"]),
    "negative test chains": (["--gin.TEST_NUM_CHAINS=-2"], ["TEST_NUM_CHAINS is -2"]),
    "negative test temperature": (["--gin.TEST_TEMPERATURE=-1.0"], ["TEST_TEMPERATURE is -1.0"]),
    "unknown test stage": (["--gin.TEST_SAMPLED_STAGES=('recall', 'sumarize')"],
                           ["TEST_SAMPLED_STAGES is ('recall', 'sumarize')"]),
    "zero test questions": (["--gin.pipeline.run_pipeline.max_test_questions=0"],
                            ["pipeline.run_pipeline.max_test_questions is 0"]),
    # Phase 2's and phase 1's settings are checked before phase 1 starts, not after it.
    "zero rounds": (["--gin.ROUNDS=0"], ["ROUNDS is 0"]),
    "zero samples": (["--gin.NUM_SAMPLES=0"], ["NUM_SAMPLES is 0"]),
    "zero batch": (["--gin.BATCH_SIZE=0"], ["BATCH_SIZE is 0"]),
    "batch beyond memory": (["--gin.BATCH_SIZE=1000000000"], ["BATCH_SIZE is 1000000000: one step needs at least"]),
    "mistyped macro": (["--gin.ITERATIONZ=3"], ["did you mean", "ITERATIONS?"]),
    "URL model dir": (["--gin.MODEL_DIR='gs://bucket/run'"], ["MODEL_DIR 'gs://bucket/run' is a URL"]),
    "model dir under a file": (["--gin.MODEL_DIR='{dir}/config.gin/run'"], ["cannot be written"]),
}


@pytest.mark.parametrize("case", PIPELINE_CASES)
def test_pipeline_refuses_at_start(case, run_dir, tmp_path, capsys):
    extra, expected = PIPELINE_CASES[case]
    argv = ["pipeline", *PIPELINE, f"--gin.MODEL_DIR='{run_dir}'", *(arg.format(dir=run_dir) for arg in extra)]
    check_refused(argv, expected, capsys, tmp_path)


EVALUATE_CASES = {
    "zero chains": (["--num_chains", "0"], ["argument --num_chains: expected a positive integer, got '0'"]),
    "unknown split": (["--split", "dev"], ["argument --split: invalid choice: 'dev'"]),
    "unknown dataset": (["--dataset", "csqa2"], ["argument --dataset: invalid choice: 'csqa2'"]),
    "unknown stage type": (["--stage_type", "ful"], ["argument --stage_type"]),
    "negative batch": (["--batch_size", "-1"], ["argument --batch_size", "got '-1'"]),
    "zero questions": (["--max_questions", "0"], ["argument --max_questions"]),
    "zero decode length": (["--max_decode_length", "0"], ["argument --max_decode_length"]),
    "negative temperature": (["--temperature", "-1"], ["argument --temperature: expected a number >= 0"]),
    "top_p of 0": (["--top_p", "0"], ["argument --top_p: expected a number in (0, 1]"]),
    "unknown stage to sample": (["--sampled_stages", "recall,sumarize"], ["argument --sampled_stages"]),
    "zero mesh axis": (["--mesh_model", "0"], ["argument --mesh_model"]),
    "not a number": (["--num_chains", "ten"], ["argument --num_chains: expected a positive integer, got 'ten'"]),
    "URL out dir": (["--out_dir", "gs://bucket/eval"], ["--out_dir 'gs://bucket/eval' is a URL"]),
    "out dir under a file": (["--out_dir", "{dir}/config.gin/eval"], ["--out_dir", "cannot be written"]),
}


@pytest.mark.parametrize("case", EVALUATE_CASES)
def test_evaluate_refuses_at_start(case, run_dir, tmp_path, capsys):
    extra, expected = EVALUATE_CASES[case]
    argv = ["evaluate", *EVALUATE, "--out_dir", str(run_dir / "test"), *(arg.format(dir=run_dir) for arg in extra)]
    check_refused(argv, expected, capsys, tmp_path)


def test_evaluate_names_its_missing_flags(tmp_path, capsys):
    check_refused(["evaluate", "--dataset", "csqa"], ["evaluate needs --checkpoint, --out_dir"], capsys, tmp_path)


EVALUATE_GIN_CASES = {
    "unknown split": (["--gin.EVAL_SPLIT='dev'"], ["EVAL_SPLIT is 'dev'", "'validation'"]),
    "zero chains": (["--gin.NUM_CHAINS=0"], ["NUM_CHAINS is 0"]),
    "unknown stage to sample": (["--gin.SAMPLED_STAGES=('recall', 'x')"], ["SAMPLED_STAGES is ('recall', 'x')"]),
    "a stage name for a tuple": (["--gin.SAMPLED_STAGES='recall'"], ["SAMPLED_STAGES is 'recall'"]),
    "mistyped macro": (["--gin.NUM_CHAIN=3"], ["did you mean NUM_CHAINS"]),
    "URL out dir": (["--gin.EVAL_OUTPUT_DIR='gs://bucket/eval'"], ["EVAL_OUTPUT_DIR 'gs://bucket/eval' is a URL"]),
    "out dir under a file": (["--gin.EVAL_OUTPUT_DIR='{dir}/config.gin/eval'"],
                             ["EVAL_OUTPUT_DIR", "cannot be written"]),
    "sampling a config refuses": (["--gin.SAMPLING=%SAMPLING_CONFIG",
                                   "--gin.eval/decoding.SamplingConfig.temperature=-1.0"],
                                  ["gin settings of evaluation.evaluate_checkpoint", "temperature >= 0"]),
}


@pytest.mark.parametrize("case", EVALUATE_GIN_CASES)
def test_evaluate_by_gin_refuses_at_start(case, run_dir, tmp_path, capsys):
    extra, expected = EVALUATE_GIN_CASES[case]
    argv = ["evaluate", *EVALUATE_GIN, f"--gin.EVAL_OUTPUT_DIR='{run_dir / 'test'}'",
            *(arg.format(dir=run_dir) for arg in extra)]
    check_refused(argv, expected, capsys, tmp_path)


def test_evaluate_by_gin_needs_its_output_dir(tmp_path, capsys):
    check_refused(["evaluate", *EVALUATE_GIN], ["EVAL_OUTPUT_DIR is required"], capsys, tmp_path)


DEMO_CASES = {
    "mistyped macro": (["--gin.ITERATIONZ=3"], ["did you mean", "ITERATIONS?"]),
    "zero rounds": (["--gin.ROUNDS=0"], ["ROUNDS is 0"]),
    "zero steps": (["--gin.TRAIN_STEPS=0"], ["TRAIN_STEPS is 0"]),
    "URL out": (["--out", "gs://bucket/demo"], ["--out 'gs://bucket/demo' is a URL"]),
    "out under a file": (["--out", "{dir}/config.gin/demo"], ["--out", "cannot be written"]),
}


@pytest.mark.parametrize("case", DEMO_CASES)
def test_demo_refuses_before_making_the_toy_world(case, run_dir, tmp_path, capsys):
    extra, expected = DEMO_CASES[case]
    argv = ["demo", "--out", str(run_dir), *(arg.format(dir=run_dir) for arg in extra)]
    check_refused(argv, expected, capsys, tmp_path)


def test_report_reads_every_run_before_writing_any(tmp_path, capsys):
    good = make_run(tmp_path, "good", COMPLETE)
    check_refused(["report", good, str(tmp_path / "nowhere")], ["nowhere/pipeline.json: not found"], capsys, tmp_path)
    check_refused(["report", good, "--out", str(tmp_path)], [f"--out {str(tmp_path)!r} is a directory"], capsys,
                  tmp_path)
    check_refused(["report", good, "--out", "gs://bucket/table.md"], ["--out 'gs://bucket/table.md' is a URL"],
                  capsys, tmp_path)
    assert os.listdir(good) == ["pipeline.json"]


@pytest.mark.parametrize("argv, expected", [
    ([], ["tinythinker: the following arguments are required: command"]),
    (["trian"], ["argument command: invalid choice: 'trian'"]),
    (["report"], ["tinythinker report: the following arguments are required: DIR"]),
    (["train", "--gin_flie=sft.gin"], ["tinythinker: unrecognized arguments: --gin_flie=sft.gin"]),
], ids=["no command", "unknown command", "missing argument", "unknown flag"])
def test_a_bad_command_line_is_one_line(argv, expected, tmp_path, capsys):
    check_refused(argv, expected, capsys, tmp_path)


def test_debug_shows_the_traceback(run_dir, monkeypatch):
    argv = ["train", *SFT, f"--gin.MODEL_DIR='{run_dir}'", "--gin.BATCH_SIZE=0"]
    with pytest.raises(errors.UserError, match="BATCH_SIZE is 0"):
        cli.main(["--debug", *argv])
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(errors.UserError, match="BATCH_SIZE is 0"):
        cli.main(argv)


def test_the_installed_command_prints_one_line():
    """The console script, not only `cli.main`: stderr is the error line and nothing else."""
    result = subprocess.run([sys.executable, "-m", "tinythinker_jax.cli", "evaluate", "--split", "dev"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == errors.EXIT_CODE
    assert result.stdout == "" and result.stderr.splitlines() == [
        "error: tinythinker evaluate: argument --split: invalid choice: 'dev' (choose from 'train', 'validation', "
        "'test') (see tinythinker evaluate --help)"]


def test_tensorflow_and_jax_start_up_lines_stay_off_a_refused_runs_stderr(tmp_path):
    """A command that started TensorFlow and JAX before refusing: its stderr is still the one error line
    (TensorFlow's native start-up prints CUDA probes and absl notices on a machine without a GPU)."""
    result = subprocess.run([sys.executable, "-m", "tinythinker_jax.cli", "train", *SFT,
                             f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.BATCH_SIZE=1000000000"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == errors.EXIT_CODE, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: BATCH_SIZE is 1000000000: one step needs at least")


def test_the_run_functions_refuse_bad_settings_when_called_directly(tmp_path):
    """The same checks guard the library functions, before any data is set up."""
    from tinythinker_jax.models import t5

    mixture, config = "tinythinker.toyworld_yesno.full_stages", t5.model_config("t5_1_0_tiny")
    with pytest.raises(errors.UserError, match="trainer.train.train_steps is 0"):
        trainer.train(model_dir=str(tmp_path / "m"), mixture_or_task_name=mixture, model_config=config, train_steps=0)
    with pytest.raises(errors.UserError, match="iteration.run_iteration.rounds is 0"):
        iteration.run_iteration(model_dir=str(tmp_path / "m"), iteration=1, mixture_or_task_name=mixture,
                                model_config=config, rounds=0)
    with pytest.raises(errors.UserError, match="evaluation.evaluate_checkpoint.split is 'dev'"):
        evaluation.evaluate_checkpoint(checkpoint_path="ckpt", mixture_or_task_name=mixture,
                                       output_dir=str(tmp_path / "e"), split="dev")
    assert os.listdir(tmp_path) == []
