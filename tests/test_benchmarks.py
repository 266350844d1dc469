"""The benchmark scripts run end to end on tiny shapes, with seqio and TensorFlow unimportable: a bare
JAX + PyTorch image, where `benchmarks/gpu.sh` runs them on a lent GPU, has neither."""

import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from tinythinker_jax.models import t5

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")

SCRIPT = """
import os, runpy, sys
for name in ("seqio", "tensorflow", "tensorflow_datasets", "tensorflow_text", "gin", "clu"):
    sys.modules[name] = None  # any import of them now fails
sys.path.insert(0, {benchmarks!r})
tiny = ["--config", "t5_1_0_tiny", "--batch_size", "2", "--input_length", "16", "--decode_length", "8",
        "--repeats", "1"]
for script, extra in {runs!r}:
    sys.argv = [script, *tiny, *extra, "--out", os.path.join({out!r}, script + ".json")]
    runpy.run_path(os.path.join({benchmarks!r}, script), run_name="__main__")
"""

RUNS = (
    ("decode.py", ["--profile", "decode_trace"]),  # under the run's directory, tmp_path
    ("score.py", []),
    ("train_step.py", ["--steps", "2"]),
    ("reflect.py", ["--questions", "2", "--num_samples", "2", "--dpo_batch_size", "2"]),
    ("plan_accuracy.py", []),
    ("scan_layers.py", ["--steps", "1"]),
    ("packing.py", []),
)


def _import_benchmark(name: str):
    sys.path.insert(0, BENCHMARKS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCHMARKS)


def test_benchmarks_run_without_seqio_or_tensorflow(tmp_path):
    script = SCRIPT.format(benchmarks=BENCHMARKS, runs=RUNS, out=str(tmp_path))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # The trace of one greedy call: the decoding loop's body ran once per generated token (8), its
    # condition once more.
    times = _import_benchmark("trace_ops").operation_times(str(tmp_path / "decode_trace"))
    assert {len(runs) for name, runs in times.items() if name.startswith("jit_decode/")} >= {1, 8, 9}
    reports = {name: json.load(open(tmp_path / f"{name}.json"))["results"] for name, _ in RUNS}
    assert {"greedy", "sampled", "memory_floor"} <= set(reports["decode.py"])
    assert reports["score.py"]["score"]["ours_tokens_per_s"] > 0
    assert reports["train_step.py"]["train_step"]["ours_examples_per_s"] > 0
    assert reports["train_step.py"]["compute_floor"]["tokens_per_s"] > 0
    assert reports["reflect.py"]["chains"]["ours_chains_per_s"] > 0
    assert reports["reflect.py"]["dpo_train_step"]["ours_examples_per_s"] > 0
    assert reports["plan_accuracy.py"]["sft_step"]["estimated_step_bytes"] > 0
    assert reports["scan_layers.py"]["compile_speedup"] > 0 and reports["scan_layers.py"]["step_time_ratio"] > 0
    assert reports["packing.py"]["csqa"]["stages"]["analyze"]["cases"]["packed"]["examples_per_row"] > 1
    assert all(report["ratio"] > 0 for report in reports["packing.py"].values())


@pytest.mark.parametrize("name", ["t5_1_0_small", "t5_1_1_small"])
def test_mfu_counts_the_flops_xla_counts(name):
    """The project's FLOP count (`benchmarks/flops.py`, for MFU and the rehearsal's projections) is 3x the
    forward pass's as XLA's cost analysis counts it; the rest of XLA's count, elementwise work, is under 0.5% at
    these shapes, and a scanned model counts as an unrolled one."""
    flops = _import_benchmark("flops")
    config = t5.model_config(name)
    graphdef, state = nnx.split(t5.abstract_model(config))
    forward = jax.jit(lambda state, inputs, targets: nnx.merge(graphdef, state)(inputs, targets))
    batch, input_length, target_length = 2, 200, 64
    lowered = forward.lower(state, jax.ShapeDtypeStruct((batch, input_length), jnp.int32),
                            jax.ShapeDtypeStruct((batch, target_length), jnp.int32))
    xla_flops = lowered.cost_analysis()["flops"] / batch
    ours = flops.train_flops(flops.parameter_groups(config), input_length, target_length) / 3
    assert 0.995 * xla_flops < ours <= xla_flops
    assert flops.parameter_groups(config.replace(scan_layers=True)) == flops.parameter_groups(config)
