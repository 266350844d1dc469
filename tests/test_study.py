"""`tinythinker study --grid quick`, shrunk to tiny steps: every cell of the grid runs, phase-2 cells share
the full chain's phase 1, the report compares the cells over seeds, and a re-run redoes nothing."""

import json
import os

import pytest

import gin
from tinythinker_jax import cli, study, study_report
from tinythinker_jax.reflection.iteration import PAIR_STAGE_TYPES

TINY = ["--gin.TRAIN_STEPS=4", "--gin.REFLECT_MAX_QUESTIONS=4", "--gin.NUM_SAMPLES=2", "--gin.ROUNDS=1",
        "--gin.trainer.train.max_eval_questions=2", "--gin.trainer.train.eval_every=4",
        "--gin.iteration.run_iteration.max_eval_questions=2", "--gin.pipeline.run_pipeline.max_test_questions=3",
        "--gin.t5.model_config.name='t5_1_0_tiny'"]


def run(out, *extra):
    try:
        return cli.main(["study", "--out", str(out), "--grid", "quick", *TINY, *extra])
    finally:
        gin.clear_config()


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert run(out) == 0
    return out


def test_quick_grid_runs_every_cell_and_compares_them(quick_study):
    summary = json.load(open(quick_study / study_report.STUDY_JSON))
    assert sorted(cell["name"] for cell in summary["cells"]) == sorted(
        ["full", "summarize", "recall_summarize", "analyze_summarize",
         "full-dpo_recall_analyze", "full-dpo_recall", "full-dpo_analyze"])
    for cell in summary["cells"]:
        assert cell["seed"] == 0
        assert len(cell["phases"]) == (1 if cell["pair_type"] is None else 2)
        assert all(0.0 <= phase["test_accuracy"] <= 1.0 for phase in cell["phases"])
        if cell["pair_type"] is not None:
            # Phase 1 is the full cell's, trained once: its directory is a link and its accuracy the same.
            assert os.path.islink(quick_study / cell["directory"] / "sft")
            assert cell["phases"][0] == next(c for c in summary["cells"] if c["name"] == "full")["phases"][0]
            # An iteration trains when it has pairs of the kinds its variant takes; DPO starts at log 2.
            trained = cell["phases"][1]["training"]
            if any(cell["phases"][1]["pairs"][stage] for stage in PAIR_STAGE_TYPES[cell["pair_type"]]):
                assert trained["steps"] >= 1 and trained["first_dpo_loss"] == pytest.approx(0.6931, abs=1e-3)
            else:
                assert trained["steps"] == 0 and trained["last_reward_accuracy"] is None
    assert summary["stage_types"]["full"]["minus_full"]["mean"] == 0.0
    for stage_type in ("full", "summarize", "recall_summarize", "analyze_summarize"):
        # Each phase 1 is tested by chains of the stages it trained on, not by the full chain.
        test_dir = quick_study / "cells" / stage_type / "seed0" / "sft" / "test"
        assert json.load(open(test_dir / "summary_test.json"))["stage_type"] == stage_type
        chain = json.loads((test_dir / "predictions_test.jsonl").read_text().splitlines()[0])["chains"][0]
        assert (chain["recall"] is not None) == ("recall" in stage_type or stage_type == "full")
        assert (chain["analyses"] is not None) == ("analyze" in stage_type or stage_type == "full")
    checks = {(row["setting"], row["phase"]): row for row in summary["chain_checks"]}
    assert set(checks) == {(stage_type, "sft") for stage_type in ("full", "summarize", "recall_summarize",
                                                                  "analyze_summarize")} | {
        (f"full-dpo_{pair_type}", "iteration_1") for pair_type in study.PAIR_TYPES}
    assert checks[("full", "sft")]["correct"] == pytest.approx(summary["stage_types"]["full"]["mean"])
    assert checks[("summarize", "sft")]["true_value"] is None and checks[("summarize", "sft")]["verdicts"] is None
    assert checks[("recall_summarize", "sft")]["verdicts"] is None
    assert checks[("recall_summarize", "sft")]["true_value"] is not None
    variants = summary["self_reflection"]["variants"]
    assert set(variants["recall"][0]["pairs"]) == {"recall"} and set(variants["analyze"][0]["pairs"]) == {"analyze"}
    assert set(variants["recall"][0]["pair_checks"]) == {"recall"}
    assert set(variants["recall_analyze"][0]["pair_checks"]) == {"recall", "analyze"}
    assert summary["stage_types"]["summarize"]["std"] is None  # one seed has no spread
    assert [row["iteration"] for row in summary["self_reflection"]["variants"]["recall"]] == [1]
    consistency = summary["self_consistency"]
    assert consistency["num_chains"] == 3 and [row["phase"] for row in consistency["phases"]] == ["sft",
                                                                                                   "iteration_1"]
    assert all(row["vote"]["mean"] is not None for row in consistency["phases"])
    assert summary["settings"]["world_settings"]["teacher_noise"] == study.WORLDS["noisy"].teacher_noise
    text = (quick_study / study_report.STUDY_MD).read_text()
    for heading in ("## 1.", "## 2-3.", "## 4.", "## 5.", "teacher noise 0.3", "chosen before any phase-2 result"):
        assert heading in text
    assert (quick_study / study_report.STUDY_PLOT).stat().st_size > 0


def test_a_rerun_redoes_nothing_and_other_settings_are_refused(quick_study, forbid_redoing_work, capsys):
    before = json.load(open(quick_study / study_report.STUDY_JSON))
    assert run(quick_study) == 0
    def results(summary):  # a re-run's pipeline adds its own few seconds to each cell's wall time
        return [{key: value for key, value in cell.items() if key != "wall_seconds"} for cell in summary["cells"]]

    assert results(json.load(open(quick_study / study_report.STUDY_JSON))) == results(before)
    capsys.readouterr()
    assert run(quick_study, "--world", "demo") == 2
    assert "holds a study of other settings (grid 'quick', world 'noisy'" in capsys.readouterr().err
