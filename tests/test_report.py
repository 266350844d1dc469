"""The results report: files written from pipeline.json, missing values as "—", clear errors, the CLI."""

import copy
import json
import os

import pytest

from tinythinker_jax import cli, report
from tinythinker_jax.data.records import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

COMPLETE = {
    "config": {
        "dataset": "toyworld_yesno", "model": "t5_1_0_mini", "stage_type": "full",
        "reflect_stage_type": "recall_analyze", "num_options": 2,
        "sft": {"batch_size": 32, "learning_rate": 0.001, "epochs": 6, "interval": 20},
        "reflect": {"iterations": 2, "batch_size": 32, "learning_rate": 5e-06, "beta": 0.5, "alpha": 0.5,
                    "num_samples": 10, "temperature": 0.7, "rounds": 10},
    },
    "data": {"teacher_records": 1200, "stage_examples": {"recall": 1200, "analyze": 2400, "summarize": 1200}},
    "phases": [
        {"name": "sft", "validation_accuracy": 0.93, "test_accuracy": 0.91, "test_self_consistency_accuracy": None,
         "wall_seconds": 412.5, "best_step": 240,
         "data_stats": {"summarize": {"examples": 1200, "max_input_tokens": 151, "max_target_tokens": 9,
                                      "input_length": 192, "target_length": 12,
                                      "input_buckets": {"128": 900, "192": 300},
                                      "examples_cut": 0, "tokens_cut": 0, "requested_lengths": None}}},
        {"name": "iteration_1", "validation_accuracy": 0.95, "test_accuracy": 0.92,
         "test_self_consistency_accuracy": None, "wall_seconds": 120.0, "best_step": 30,
         "pairs": {"recall": 150, "analyze": 420},
         "wall_seconds_by_step": {"generate": 60.0, "score": 5.0, "train": 55.0}},
        {"name": "iteration_2", "validation_accuracy": 0.94, "test_accuracy": 0.93,
         "test_self_consistency_accuracy": 0.945, "wall_seconds": 110.0, "best_step": 20,
         "pairs": {"recall": 120, "analyze": 380},
         "wall_seconds_by_step": {"generate": 55.0, "score": 5.0, "train": 50.0}},
    ],
    "wall_seconds": 700.0,
}

# Still in iteration 1: no pairs or test yet, config partly written, total wall time unknown.
IN_PROGRESS = {
    "config": {"dataset": "toyworld_yesno", "model": None, "reflect": {"iterations": 2}},
    "data": {"teacher_records": 1200},
    "phases": [
        {"name": "sft", "validation_accuracy": 0.9, "test_accuracy": 0.88, "wall_seconds": 30.0},
        {"name": "iteration_1", "validation_accuracy": None},
    ],
}


def make_run(tmp_path, name: str, pipeline) -> str:
    run_dir = tmp_path / name
    run_dir.mkdir()
    text = pipeline if isinstance(pipeline, str) else json.dumps(pipeline)
    (run_dir / report.PIPELINE_FILE).write_text(text)
    return str(run_dir)


def test_complete_run_writes_json_markdown_and_png(tmp_path):
    run_dir = make_run(tmp_path, "run_a", COMPLETE)
    summary = report.write_report(run_dir)

    assert sorted(os.listdir(run_dir)) == ["accuracy.png", "pipeline.json", "report.json", "report.md"]
    with open(os.path.join(run_dir, "accuracy.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with open(os.path.join(run_dir, "report.json")) as f:
        assert json.load(f) == summary
    assert summary["chance_accuracy"] == 0.5
    assert summary["phase1_test_accuracy"] == 0.91 and summary["phase1_margin_over_chance"] == 0.41
    assert summary["final_phase"] == "iteration_2" and summary["final_margin_over_chance"] == 0.43
    assert summary["best_validation_accuracy"] == 0.95 and summary["num_iterations"] == 2
    assert summary["data"]["pairs"] == {"iteration_1": {"recall": 150, "analyze": 420},
                                        "iteration_2": {"recall": 120, "analyze": 380}}

    with open(os.path.join(run_dir, "report.md")) as f:
        markdown = f.read()
    for expected in [
        "# toyworld_yesno · t5_1_0_mini",
        "| dataset | toyworld_yesno |", "| num_options | 2 |", "| sft.learning_rate | 0.001 |",
        "| reflect.learning_rate | 5e-06 |", "| reflect.beta | 0.5 |",
        "| teacher records | 1200 |", "| analyze examples | 2400 |",
        "| iteration | recall | analyze | total |", "| iteration_1 | 150 | 420 | 570 |",
        "| sft | summarize | 1200 | 151 | 9 | 192 | 12 | 0 | 0 |",
        "| phase | validation | test | test (self-consistency) | best step | wall time |",
        "| sft | 93.0% | 91.0% | — | 240 | 6m 52s |",
        "| iteration_1 | 95.0% | 92.0% | — | 30 | 2m 00s (generate 1m 00s, score 5.0s, train 55.0s) |",
        "| iteration_2 | 94.0% | 93.0% | 94.5% | 20 |",
        "Chance: 50.0% (1 in 2 options)", "after phase 1 (SFT): 91.0%, +41.0 points over chance",
        "Final (iteration_2): 93.0%, +43.0 points over chance", "Total wall time: 11m 40s.",
        "![accuracy](accuracy.png)",
    ]:
        assert expected in markdown, expected


def test_in_progress_run_shows_dashes_and_never_guesses(tmp_path):
    run_dir = make_run(tmp_path, "run_b", IN_PROGRESS)
    summary = report.write_report(run_dir)

    assert summary["chance_accuracy"] is None and summary["phase1_margin_over_chance"] is None
    assert summary["final_phase"] == "sft" and summary["final_test_accuracy"] == 0.88  # the latest tested phase
    assert summary["wall_seconds"] is None and summary["config"]["stage_type"] is None
    with open(os.path.join(run_dir, "accuracy.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with open(os.path.join(run_dir, "report.md")) as f:
        markdown = f.read()
    for expected in [
        "# toyworld_yesno · —", "| stage_type | — |", "| reflect.iterations | 2 |", "| reflect.beta | — |",
        "| stage examples | — |", "| iteration_1 | — | — |", "| iteration_1 | — | — | — | — | — |",
        "| sft | 90.0% | 88.0% | — | — | 30.0s |", "Chance: —.", "Total wall time: —.",
    ]:
        assert expected in markdown, expected
    assert "1 of 2" in report.compare([run_dir])


@pytest.mark.parametrize("pipeline", [{}, {"config": None, "data": None, "phases": None}, {"phases": []}])
def test_a_run_with_nothing_yet_still_gets_a_report(tmp_path, pipeline):
    run_dir = make_run(tmp_path, "run_c", pipeline)
    summary = report.write_report(run_dir)
    assert summary["phases"] == [] and summary["final_test_accuracy"] is None
    with open(os.path.join(run_dir, "report.md")) as f:
        assert "No phase has finished yet." in f.read()


def test_missing_and_malformed_pipeline_json_name_the_file(tmp_path):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DataError, match=r"empty/pipeline\.json: not found"):
        report.write_report(str(empty_dir))
    run_dir = make_run(tmp_path, "broken", '{"phases": [')
    with pytest.raises(DataError, match=r"broken/pipeline\.json:1: not valid JSON"):
        report.write_report(run_dir)
    assert os.listdir(run_dir) == ["pipeline.json"]  # nothing half-written


def _with(path: tuple, value):
    pipeline = copy.deepcopy(COMPLETE)
    target = pipeline
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return pipeline


@pytest.mark.parametrize("path, value, field, message", [
    (("phases", 1, "test_accuracy"), "0.92", "phases[1].test_accuracy", "expected a number"),
    (("phases", 0, "validation_accuracy"), 93.0, "phases[0].validation_accuracy", "between 0 and 1"),
    (("phases", 0, "best_step"), 2.5, "phases[0].best_step", "expected an integer"),
    (("phases", 1, "pairs", "recall"), "many", "phases[1].pairs.recall", "expected an integer"),
    (("config", "num_options"), "two", "config.num_options", "expected an integer"),
    (("config", "num_options"), 1, "config.num_options", "at least 2"),
    (("config", "dataset"), 7, "config.dataset", "expected a string"),
    (("config", "sft"), [32], "config.sft", "expected an object"),
    (("data", "stage_examples"), 4800, "data.stage_examples", "expected an object"),
    (("phases",), {"sft": {}}, "phases", "expected a list"),
    (("phases", 0), "sft", "phases[0]", "expected a JSON object"),
    (("wall_seconds",), True, "wall_seconds", "expected a number"),
])
def test_a_wrong_type_names_the_file_and_field(tmp_path, path, value, field, message):
    run_dir = make_run(tmp_path, "wrong", _with(path, value))
    with pytest.raises(DataError) as error:
        report.write_report(run_dir)
    assert error.value.path == os.path.join(run_dir, "pipeline.json") and error.value.field == field
    assert message in str(error.value) and "pipeline.json" in str(error.value)


def test_compare_has_one_row_per_run(tmp_path):
    run_a = make_run(tmp_path, "run_a", COMPLETE)
    run_b = make_run(tmp_path, "run_b", IN_PROGRESS)
    lines = report.compare([run_a, run_b]).splitlines()
    assert lines[0].startswith("| run | dataset | model | stage types (SFT / reflect) | phase-1 test | final test")
    assert len(lines) == 4  # header, separator, two runs
    assert lines[2] == (f"| {run_a} | toyworld_yesno | t5_1_0_mini | full / recall_analyze | 91.0% | 93.0% "
                        "| 95.0% | 2 | 11m 40s |")
    assert lines[3] == f"| {run_b} | toyworld_yesno | — | — / — | 88.0% | 88.0% | 90.0% | 1 of 2 | — |"


def test_cli_compares_several_runs_and_writes_each_report(tmp_path, capsys):
    run_a = make_run(tmp_path, "run_a", COMPLETE)
    run_b = make_run(tmp_path, "run_b", IN_PROGRESS)
    out = tmp_path / "tables" / "compare.md"
    assert cli.main(["report", run_a, run_b, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == report.compare([run_a, run_b]) + "\n"
    assert out.read_text() == printed
    for run_dir in (run_a, run_b):
        assert {"report.md", "report.json", "accuracy.png"} <= set(os.listdir(run_dir))


def test_cli_prints_one_runs_report(tmp_path, capsys):
    run_a = make_run(tmp_path, "run_a", COMPLETE)
    assert cli.main(["report", run_a]) == 0
    with open(os.path.join(run_a, "report.md")) as f:
        assert capsys.readouterr().out == f.read()


def test_cli_reports_a_bad_run_as_an_error(tmp_path, capsys):
    run_a = make_run(tmp_path, "run_a", COMPLETE)
    assert cli.main(["report", run_a, str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ")
    assert "nowhere/pipeline.json: not found" in captured.err
