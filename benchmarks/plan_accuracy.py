"""The planner's estimate of one SFT step against the memory the step really takes, on this machine.

Compiles the step as `tinythinker plan` does (`planning.sft_step`, from shapes), then runs the same step on
real parameters, optimizer state and a batch, and measures what the process gained while it ran: the peak
resident memory (Linux's VmHWM, reset just before the step's first run) minus the resident memory just before. The
estimate to compare is what the step adds to what is already allocated: its temporaries and the outputs not
written into donated inputs. Linux only (it reads /proc/self/status and resets the peak via clear_refs).
On an accelerator it reads the device's own peak (`memory_stats()["peak_bytes_in_use"]`, which no call resets)
after the step and compares it with the plan's total: parameters, optimizer state, batch and the step's own.

    python benchmarks/plan_accuracy.py --config t5_1_0_small --batch_size 32 --input_length 256 \
        --decode_length 64 [--remat full] [--scan_layers] [--dtype bfloat16]

(`--decode_length` is the target length, as in `train_step.py`.)
"""

import common
import jax
import numpy as np
from flax import nnx

from tinythinker_jax import partitioning, planning
from tinythinker_jax.models import t5
from tinythinker_jax.phases import optimizers
from tinythinker_jax.phases.step import make_train_step
from tinythinker_jax.training import losses

MIB = 2**20


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def main() -> None:
    parser = common.parser(__doc__, "plan_accuracy.json")
    parser.add_argument("--remat", default="none", choices=sorted(t5.REMAT_POLICIES))
    parser.set_defaults(batch_size=32, input_length=256, decode_length=64)
    args = parser.parse_args()

    config = t5.model_config(args.config, remat=args.remat, dtype=args.dtype, scan_layers=args.scan_layers)
    partitioner = partitioning.Partitioner()
    optimizer = optimizers.create_optimizer(1000)
    shapes = planning.StepShapes(input_length=args.input_length, target_length=args.decode_length)
    plan = planning.sft_step(config, optimizer, args.batch_size, shapes, partitioner)

    with partitioner.activate():
        model = partitioner.create_model(lambda: t5.create_model(config, seed=0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        del model
        opt_state = jax.jit(optimizer.transform.init, out_shardings=partitioning.optimizer_state_shardings(
            optimizer.transform, params, partitioner.mesh))(params)
        rng = np.random.default_rng(0)
        rows, targets = (args.batch_size, args.input_length), (args.batch_size, args.decode_length)
        batch = partitioner.global_batch({
            "encoder_input_tokens": rng.integers(2, config.vocab_size, rows, dtype=np.int32),
            "decoder_input_tokens": rng.integers(2, config.vocab_size, targets, dtype=np.int32),
            "decoder_target_tokens": rng.integers(2, config.vocab_size, targets, dtype=np.int32),
            "decoder_loss_weights": np.ones(targets, np.float32)})
        step = make_train_step(graphdef, rest, optimizer.transform, losses.sft_loss)
        key = jax.random.key(0)
        compiled = step.lower(params, opt_state, batch, 0, key).compile()  # compiling is not the step's memory
        # The first run is the one measured: memory a run frees can stay with the process and serve the next.
        before = _status("VmRSS")
        _reset_peak()
        params, opt_state, values = compiled(params, opt_state, batch, 0, key)
        jax.block_until_ready(values)
        measured = _status("VmHWM") - before
    estimate = plan.temp_bytes + plan.output_bytes - plan.alias_bytes
    device_stats = jax.devices()[0].memory_stats()  # None on a CPU
    if device_stats and "peak_bytes_in_use" in device_stats:
        measured, estimate = device_stats["peak_bytes_in_use"], plan.total_bytes
    ratio = measured / estimate if estimate else None
    results = {"sft_step": {"remat": args.remat, "plan": {**vars(plan), "total_bytes": plan.total_bytes},
                            "estimated_step_bytes": estimate, "measured_step_bytes": measured, "ratio": ratio}}
    print(f"{args.config} batch {args.batch_size}: {measured / MIB:,.1f} MiB measured, "
          f"{estimate / MIB:,.1f} MiB planned (ratio {ratio}); planned total per device "
          f"{plan.total_bytes / MIB:,.1f} MiB")
    common.write_report(args, "unused", results)


if __name__ == "__main__":
    main()
