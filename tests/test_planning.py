"""`tinythinker plan`: the steps compiled from shapes alone, their memory per device, the largest batch that fits."""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys

import pytest

import gin
from tinythinker_jax import cli, planning

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The toy pipeline at test size: a tiny model, short rows, short decoding.
TINY = ["--gin_search_paths", REPO_ROOT, "--gin_file=gin/runs/pipeline.gin",
        "--gin_file=gin/experiments/toyworld_yesno_t5_mini_pipeline.gin", "--gin.t5.model_config.name='t5_1_0_tiny'",
        "--gin.chains.ChainSettings.max_decode_length=8", "--input_length", "16", "--target_length", "8"]


def _fake_plan(fixed: int, per_row: int, calls: list[int]):
    def plan(batch_size: int) -> planning.CompiledMemory:
        calls.append(batch_size)
        return planning.CompiledMemory("sft_step", batch_size, 0.0, fixed, 0, 0, per_row * batch_size)
    return plan


def test_largest_batch_finds_the_boundary():
    calls: list[int] = []
    assert planning.largest_batch(_fake_plan(100, 7, calls), 1000).batch_size == 128  # 100 + 7 * 128 <= 1000
    assert calls == [1, 8, 128]  # linear: the estimate from 1 and 8 is checked once
    assert planning.largest_batch(_fake_plan(1000, 7, []), 1000) is None
    assert planning.largest_batch(_fake_plan(0, 1, []), 1 << 30, limit=64).batch_size == 64
    assert planning.largest_batch(_fake_plan(100, 300, []), 1000).batch_size == 3  # below 8

    def steeper_beyond_eight(batch_size: int) -> planning.CompiledMemory:  # as a scanned stack's figures grow
        calls.append(batch_size)
        return planning.CompiledMemory("sft_step", batch_size, 0.0, 100, 0, 0,
                                       7 * min(batch_size, 8) + 8 * max(batch_size - 8, 0))

    calls.clear()
    assert planning.largest_batch(steeper_beyond_eight, 1000).batch_size == 113  # 100 + 56 + 8 * 105 <= 1000
    assert calls == [1, 8, 128, 113, 114]  # the line through 8 and 128 meets the memory at 113; 114 does not fit

    def superlinear(batch_size: int) -> planning.CompiledMemory:  # the line falls short: bisection steps
        return planning.CompiledMemory("sft_step", batch_size, 0.0, 100, 0, 0, 7 * batch_size + batch_size**2 // 20)

    fits = planning.largest_batch(superlinear, 1000)
    assert fits.total_bytes <= 1000 < superlinear(fits.batch_size + 1).total_bytes


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    """The plan on one device, with the largest batches that fit in 20 MiB, and what it printed."""
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            assert cli.main(["plan", *TINY, "--json_out", str(out), "--hbm_gib", "0.02"]) == 0
    finally:
        gin.clear_config()
    return json.load(open(out)), printed.getvalue()


def test_plan_compiles_every_step_of_a_pipeline_and_searches_the_largest_batch(single_device):
    report, printed = single_device
    plans = {plan["name"]: plan for plan in report["plans"]}
    assert set(plans) == {"sft_step", "dpo_step", "decode"} and all(name in printed for name in plans)
    assert plans["sft_step"]["batch_size"] == 32 and plans["dpo_step"]["batch_size"] == 32  # the toy gins'
    for plan in plans.values():
        assert plan["argument_bytes"] > 0 and plan["temp_bytes"] > 0
    # AdamW keeps two moments: the SFT step's arguments hold the float32 parameters three times over.
    assert plans["sft_step"]["argument_bytes"] > 3 * plans["decode"]["argument_bytes"] * 0.9
    largest = report["largest"]["sft_step"]
    assert largest["total_bytes"] <= 0.02 * 2**30 and largest["batch_size"] >= 1


def test_plan_on_a_sharded_mesh_splits_the_parameters(single_device, tmp_path):
    """On 8 fake devices, 2 x 4 with the parameters also split over `data`, each device holds about an
    eighth of the step's parameters and optimizer state."""
    single = {plan["name"]: plan for plan in single_device[0]["plans"]}
    out = tmp_path / "sharded.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "tinythinker_jax.cli", "plan", *TINY, "--fake_devices", "8", "--gin.MESH_DATA=2",
               "--gin.MESH_MODEL=4", "--gin.PARAMETER_PARTITIONING_DIMS=2", "--json_out", str(out)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "mesh {'data': 2, 'model': 4}" in completed.stdout
    sharded = {plan["name"]: plan for plan in json.load(open(out))["plans"]}
    ratio = sharded["sft_step"]["argument_bytes"] / single["sft_step"]["argument_bytes"]
    assert ratio < 0.2, ratio  # 1/8, and the batch's rows split over 'data'


def test_a_packed_run_is_planned_with_its_segment_ids():
    """With `trainer.train.pack` the SFT step's batch carries both segment ids, int32 per token, and nothing
    else changes in what the step takes as arguments."""
    from tinythinker_jax import partitioning
    from tinythinker_jax.models import t5
    from tinythinker_jax.phases import optimizers

    config, optimizer = t5.model_config("t5_1_0_tiny", vocab_size=128), optimizers.create_optimizer(10)
    shapes = planning.StepShapes(input_length=24, target_length=8)
    plain, packed = (planning.sft_step(config, optimizer, 4, dataclasses.replace(shapes, packed=flag),
                                       partitioning.Partitioner()) for flag in (False, True))
    assert packed.argument_bytes - plain.argument_bytes == 4 * (24 + 8) * 4
