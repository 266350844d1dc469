"""`benchmarks/rehearsal.py` end to end at a tiny size on the real CSQA files: every phase runs, nothing is
cut, summarize inputs are as long as the paper's, and the projection is positive. No timing is asserted."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "rehearsal.py")


def test_rehearsal_runs_every_phase_at_a_tiny_size(benchmark_data_dir, tmp_path):
    out = tmp_path / "rehearsal"
    command = [sys.executable, SCRIPT, "--out", str(out), "--model", "t5_1_0_tiny", "--train_questions", "16",
               "--validation_questions", "4", "--test_questions", "4", "--sft_steps", "7", "--sft_interval", "1",
               "--num_samples", "2", "--rounds", "1", "--max_decode_length", "8", "--max_summary_length", "10",
               "--heartbeat", "600"]
    env = {**os.environ, "TINYTHINKER_DATA_DIR": benchmark_data_dir}
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    report = json.loads((out / "rehearsal.json").read_text())
    assert set(report["phases"]) == {"split", "teacher", "phase1", "reflect", "test"}
    for phase in report["phases"].values():
        assert phase["wall_seconds"] > 0 and phase["peak_rss_mb"] > 0
    assert report["sizes"]["train_split"] == 8520
    assert report["sizes"]["validation_split"] == 1221 and report["sizes"]["test_split"] == 1221
    assert report["sizes"]["train_questions"] == 16 and report["teacher"]["samples_kept"] == 16 * 8
    assert report["phase1"]["steps"] == 7
    assert report["reflect"]["counts"]["questions"] == 16
    assert report["test"]["sft"]["num_questions"] == 4 and report["test"]["iteration_1"]["num_questions"] == 4

    # No example of any stream was cut, and the teacher's lengths make summarize inputs over 200 tokens.
    assert report["cuts_ok"]
    stats = report["data_stats"]["phase 1"]
    assert set(stats) == {"recall", "analyze", "summarize"}
    assert all(entry["examples_cut"] == 0 and entry["tokens_cut"] == 0 for entry in stats.values())
    assert stats["summarize"]["max_input_tokens"] > 200
    for entry in (report["data_stats"]["iteration 1 pairs"] or {}).values():
        assert entry["examples_cut"] == 0 and entry["tokens_cut"] == 0

    projection = report["projection"]["hours"]
    assert projection, "no projection"
    for models in projection.values():
        assert {"t5_1_0_small", "t5_1_0_base", "t5_1_0_large"} <= set(models)
        for hours in models.values():
            assert hours["total"] > 0 and hours["phase1"] > 0 and hours["iteration"] > 0
        assert models["t5_1_0_large"]["total"] > models["t5_1_0_small"]["total"]

    markdown = (out / "rehearsal.md").read_text()
    for heading in ("## Phases", "## Data statistics", "## Projection"):
        assert heading in markdown
    assert (out / "run" / "report.md").exists()
