"""The `tinythinker data` commands as a user runs them, the flags `evaluate` passes on, and what the package
installs."""

import json
import os
import subprocess
import sys
import zipfile

from tinythinker_jax import cli


def test_data_split_command_writes_splits_manifest_and_tfds(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, count in (("train.jsonl", 6), ("dev.jsonl", 2), ("test.jsonl", 3)):
        rows = [{"id": f"{name}-{i}", "answerKey": "D",
                 "question": {"stem": f"Q{i}?", "choices": [{"label": l, "text": f"t{l}"} for l in "ABCD"]}}
                for i in range(count)]
        (raw / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "obqa"
    assert cli.main(["data", "split", "--dataset", "obqa", "--raw_dir", str(raw), "--out_dir", str(out)]) == 0
    assert "obqa: train 6, validation 2, test 3" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["test"]["count"] == 3 and manifest["split_rule"] == "official train/dev/test"
    assert (out / "tfds" / "tinythinker_qa" / "obqa" / "1.0.0").is_dir()


def test_preview_prints_exact_strings_and_token_counts(prepared_toyworld, capsys):
    argv = ["data", "preview", "--task", "tinythinker.toyworld.analyze", "--split", "train", "--num", "3",
            "--format", "jsonl", "--data_dir", prepared_toyworld]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["inputs"].split("\n")[-1].startswith("Analyze: For option ") and row["inputs"].endswith(",")
        assert row["inputs_tokens"] > 10 and row["targets_tokens"] > 1


def test_readme_first_command_is_the_demo():
    """The demo itself runs, shrunk, in test_pipeline.py; its full-size figures are measured (README)."""
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.strip().endswith("pip install -e . && tinythinker demo --out demo")


def test_data_preview_runs_on_a_fresh_data_root(tmp_path):
    """The quickstart's preview command, with nothing prepared beforehand."""
    env = {**os.environ, "TINYTHINKER_DATA_ROOT": str(tmp_path)}
    result = subprocess.run(
        ["tinythinker", "data", "preview", "--task", "tinythinker.toyworld.analyze", "--split", "train", "--num", "5"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("--- tinythinker.toyworld.analyze [train] #") == 5
    assert (tmp_path / "toyworld" / "manifest.json").is_file()


def test_the_wheel_holds_every_module_and_runs_gin_configured_commands_anywhere(tmp_path):
    """`pip install .` (not editable): every module of the tree, `tasks/` as `tinythinker_tasks` only, the
    exemplars and every gin file; installed in a directory of its own and run from another, the commands
    find their gin files (and the includes in them) without the checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), root],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("tinythinker_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = {os.path.relpath(os.path.join(directory, name), root)
            for directory, _, files in os.walk(os.path.join(root, "tinythinker_jax")) for name in files
            if name.endswith((".py", ".json"))}
    assert tree <= names
    tasks = os.listdir(os.path.join(root, "tasks"))
    assert {f"tinythinker_tasks/{name}" for name in tasks if name.endswith(".py")} <= names
    gin_files = {os.path.relpath(os.path.join(directory, name), root)
                 for directory, _, files in os.walk(os.path.join(root, "gin"))
                 for name in files if name.endswith(".gin")}
    assert len(gin_files) > 40 and {f"tinythinker_jax/{path}" for path in gin_files} <= names
    assert not [name for name in names if name.startswith(("tasks/", "gin/"))]
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "tinythinker = tinythinker_jax.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    installed, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(installed), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed)}

    def run(*argv):
        return subprocess.run([sys.executable, *argv], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)

    where = run("-c", "import tinythinker_jax, tinythinker_tasks; print(tinythinker_jax.__file__)")
    assert where.stdout.strip() == str(installed / "tinythinker_jax" / "__init__.py"), where.stderr[-2000:]
    # Refused at the settings check, which runs only once every gin file and include has been parsed.
    for argv in (["train", "--gin_file=gin/runs/pipeline.gin",
                  "--gin_file=gin/experiments/csqa_t5_base_dpo_recall.gin", "--gin.MODEL_DIR='run'"],
                 ["demo", "--out", "demo"]):
        result = run("-m", "tinythinker_jax.cli", *argv, "--gin.BATCH_SIZE=0")
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip() == "error: BATCH_SIZE is 0: it must be a positive integer"
    assert os.listdir(elsewhere) == []


def test_evaluate_joins_a_multi_process_run_on_the_mesh_it_is_given(monkeypatch, capsys):
    import jax

    from tinythinker_jax import evaluation, partitioning

    joined, evaluated = [], {}
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: joined.append(args))
    monkeypatch.setattr(evaluation, "evaluate_checkpoint", lambda **kwargs: evaluated.update(kwargs) or
                        evaluation.EvaluationResult(1.0, 1, "predictions_test.jsonl", "summary_test.json"))
    assert cli.main(["evaluate", "--checkpoint", "best", "--dataset", "toyworld", "--out_dir", "out",
                     "--num_processes", "2", "--coordinator_address", "host:1234", "--process_id", "1",
                     "--mesh_model", "4", "--parameter_partitioning_dims", "2"]) == 0
    assert joined == [("host:1234", 2, 1)]
    assert evaluated["partitioner"] == partitioning.Partitioner(data=-1, model=4, parameter_partitioning_dims=2)
