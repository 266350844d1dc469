"""The largest SFT batch per device memory, by `tinythinker plan`'s planner, as a markdown table.

For each model, optimizer and remat policy, the SFT step is compiled from shapes at the paper's lengths (inputs
384, the bucket of CSQA's longest summarize input; targets 128) on this machine's backend, and the largest
batch (per device) that fits each device memory is searched. A batch's plan is compiled once and shared by
every memory size. `--fake_devices 8 --parameter_partitioning_dims 2` plans an 8-chip FSDP mesh on a CPU.

    python benchmarks/plan_table.py --configs t5_1_0_small,t5_1_0_base --optimizers adamw,adafactor \
        --hbm_gib 16,141 [--remat none,full] [--scan_layers] [--dtype bfloat16] \
        [--fake_devices 8 --parameter_partitioning_dims 2] --out plan_table.json
"""

import argparse
import dataclasses
import functools
import json
import os
import time

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="t5_1_0_small,t5_1_0_base")
    parser.add_argument("--optimizers", default="adamw,adafactor")
    parser.add_argument("--hbm_gib", default="16,141")
    parser.add_argument("--remat", default="none", help="comma-separated remat policies")
    parser.add_argument("--scan_layers", action="store_true", help="scan over stacked layers")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--input_length", type=int, default=384)
    parser.add_argument("--target_length", type=int, default=128)
    parser.add_argument("--fake_devices", type=int, default=0, help="plan a mesh of this many CPU devices")
    parser.add_argument("--parameter_partitioning_dims", type=int, default=1, help="2: FSDP over 'data'")
    parser.add_argument("--out", default="plan_table.json")
    args = parser.parse_args()
    if args.fake_devices:  # before JAX starts its backends
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.fake_devices}"
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    from tinythinker_jax import partitioning, planning
    from tinythinker_jax.models import t5
    from tinythinker_jax.phases import optimizers

    shapes = planning.StepShapes(input_length=args.input_length, target_length=args.target_length)
    partitioner = partitioning.Partitioner(parameter_partitioning_dims=args.parameter_partitioning_dims)
    devices = jax.device_count()
    rows, started = [], time.time()
    for name in args.configs.split(","):
        for remat in args.remat.split(","):
            config = t5.model_config(name, remat=remat, dtype=args.dtype, scan_layers=args.scan_layers)
            for optimizer_name in args.optimizers.split(","):
                optimizer = optimizers.create_optimizer(1000, name=optimizer_name)
                # Searched per device: a step of `rows` rows per device has `rows * devices` in all.
                plan = functools.lru_cache(maxsize=None)(lambda rows, config=config, optimizer=optimizer:
                                                         dataclasses.replace(planning.sft_step(
                                                             config, optimizer, rows * devices, shapes, partitioner),
                                                             batch_size=rows))
                row = {"model": name, "remat": remat, "optimizer": optimizer_name, "largest_batch": {},
                       "plans": {}}
                for gib in (float(value) for value in args.hbm_gib.split(",")):
                    fits = planning.largest_batch(plan, int(gib * GIB))
                    row["largest_batch"][f"{gib:g}"] = fits.batch_size if fits else 0
                    row["plans"][f"{gib:g}"] = dataclasses.asdict(fits) if fits else None
                row["fixed_gib"] = plan(1).argument_bytes / GIB
                row["compile_seconds"] = plan(1).compile_seconds
                rows.append(row)
                print(name, remat, optimizer_name, row["largest_batch"], f"{time.time() - started:.0f} s", flush=True)
    sizes = args.hbm_gib.split(",")
    print(f"\n{devices} device(s), parameter_partitioning_dims={args.parameter_partitioning_dims}, "
          f"scan_layers={args.scan_layers}, {args.dtype}; largest SFT batch per device")
    print("| model | remat | optimizer | " + " | ".join(f"{gib} GiB" for gib in sizes)
          + " | parameters + optimizer GiB/device | compile s |")
    print("|---" * (5 + len(sizes)) + "|")
    for row in rows:
        print(f"| {row['model']} | {row['remat']} | {row['optimizer']} | "
              + " | ".join(str(row["largest_batch"][f"{float(gib):g}"]) for gib in sizes)
              + f" | {row['fixed_gib']:.2f} | {row['compile_seconds']:.0f} |")
    with open(args.out, "w") as f:
        json.dump({"settings": vars(args), "backend": str(jax.devices()[0]), "devices": devices, "rows": rows,
                   "wall_seconds": time.time() - started}, f, indent=2)


if __name__ == "__main__":
    main()
