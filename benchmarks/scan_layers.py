"""Unrolled against scanned layers (`T5Config.scan_layers`): the SFT step's compile time, its step time and
XLA's memory figures, for one model in one run.

    python benchmarks/scan_layers.py [--config t5_1_0_large --batch_size 2 --input_length 384 \
        --decode_length 128 --steps 3 --remat none --out scan_layers.json] [--compile_only]

Each layout's step is compiled from shapes (as `tinythinker plan` compiles it: no parameter allocated) and
timed; then, unless `--compile_only`, it runs `--steps` times on random weights (the first run, which
compiles, not counted) and the best is kept. Dropout is on, as in phase 1. Reports both layouts and the
ratios the issue's target names: compile time unrolled / scanned, and step time scanned / unrolled.
"""

import gc
import time

import common
import jax
import numpy as np
from flax import nnx

from tinythinker_jax import partitioning, planning
from tinythinker_jax.models import scoring, t5
from tinythinker_jax.phases import optimizers
from tinythinker_jax.phases.step import make_train_step
from tinythinker_jax.training import losses


def step_seconds(config: t5.T5Config, batch: dict[str, np.ndarray], steps: int) -> float:
    """The best of `steps` SFT steps (AdamW) on random weights, after one that compiles."""
    partitioner = partitioning.Partitioner()
    optimizer = optimizers.create_optimizer(1000)
    with partitioner.activate():
        model = partitioner.create_model(lambda: t5.create_model(config, seed=0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        del model
        opt_state = jax.jit(optimizer.transform.init)(params)
        train_step = make_train_step(graphdef, rest, optimizer.transform, losses.sft_loss)
        arrays = partitioner.global_batch(batch)
        rng, best = jax.random.key(0), float("inf")
        for step in range(steps + 1):
            started = time.perf_counter()
            params, opt_state, values = train_step(params, opt_state, arrays, step, rng)
            jax.block_until_ready(values)
            if step:
                best = min(best, time.perf_counter() - started)
        return best


def main() -> None:
    parser = common.parser(__doc__, "scan_layers.json", scan_option=False)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per layout")
    parser.add_argument("--remat", default="none", choices=tuple(t5.REMAT_POLICIES))
    parser.add_argument("--compile_only", action="store_true", help="compile from shapes, run nothing")
    parser.add_argument("--layouts", default="unrolled,scanned",
                        help="one of them alone runs in its own process when two models do not fit in memory")
    parser.set_defaults(config="t5_1_0_large", batch_size=2, input_length=384, decode_length=128)
    args = parser.parse_args()
    shapes = planning.StepShapes(input_length=args.input_length, target_length=args.decode_length)
    inputs, targets = (array.astype(np.int32) for array in common.token_batches(args))
    batch = {"encoder_input_tokens": inputs, "decoder_input_tokens": np.asarray(scoring.shift_right(targets)),
             "decoder_target_tokens": targets, "decoder_loss_weights": np.ones_like(targets)}
    batch = {name: np.asarray(array, np.float32 if "weights" in name else np.int32) for name, array in batch.items()}
    results = {}
    for layout in args.layouts.split(","):
        scan_layers = {"unrolled": False, "scanned": True}[layout]
        config = t5.model_config(args.config, dtype=args.dtype, remat=args.remat, scan_layers=scan_layers)
        plan = planning.sft_step(config, optimizers.create_optimizer(1000), args.batch_size, shapes,
                                 partitioning.Partitioner())
        results[layout] = {"compile_seconds": plan.compile_seconds, "total_bytes": plan.total_bytes,
                           "temp_bytes": plan.temp_bytes}
        if not args.compile_only:
            results[layout]["step_seconds"] = step_seconds(config, batch, args.steps)
            gc.collect()
        print(layout, {name: round(value, 2) if isinstance(value, float) else value
                       for name, value in results[layout].items()}, flush=True)
    if set(results) != {"unrolled", "scanned"}:
        common.write_report(args, "none", results)
        return
    unrolled, scanned = results["unrolled"], results["scanned"]
    results["compile_speedup"] = unrolled["compile_seconds"] / scanned["compile_seconds"]
    results["temp_ratio"] = scanned["temp_bytes"] / unrolled["temp_bytes"]
    summary = f"compile unrolled / scanned x{results['compile_speedup']:.2f}"
    if not args.compile_only:
        results["step_time_ratio"] = scanned["step_seconds"] / unrolled["step_seconds"]
        summary += f", step time scanned / unrolled {results['step_time_ratio']:.3f}"
    print(summary)
    common.write_report(args, "none", results)


if __name__ == "__main__":
    main()
