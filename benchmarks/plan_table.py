"""The largest SFT batch per device memory, by `tinythinker plan`'s planner, as a markdown table.

For each model and optimizer, the SFT step is compiled from shapes at the paper's lengths (inputs 384, the
bucket of CSQA's longest summarize input; targets 128) on this machine's backend, and the largest batch that
fits each device memory is searched. A batch's plan is compiled once and shared by every memory size.

    python benchmarks/plan_table.py --configs t5_1_0_small,t5_1_0_base --optimizers adamw,adafactor \
        --hbm_gib 16,141 [--remat none] [--dtype bfloat16] --out plan_table.json
"""

import argparse
import dataclasses
import functools
import json
import time

import jax

from tinythinker_jax import partitioning, planning
from tinythinker_jax.models import t5
from tinythinker_jax.phases import optimizers

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="t5_1_0_small,t5_1_0_base")
    parser.add_argument("--optimizers", default="adamw,adafactor")
    parser.add_argument("--hbm_gib", default="16,141")
    parser.add_argument("--remat", default="none", choices=sorted(t5.REMAT_POLICIES))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--input_length", type=int, default=384)
    parser.add_argument("--target_length", type=int, default=128)
    parser.add_argument("--out", default="plan_table.json")
    args = parser.parse_args()

    shapes = planning.StepShapes(input_length=args.input_length, target_length=args.target_length)
    partitioner = partitioning.Partitioner()
    rows, started = [], time.time()
    for name in args.configs.split(","):
        config = t5.model_config(name, remat=args.remat, dtype=args.dtype)
        for optimizer_name in args.optimizers.split(","):
            optimizer = optimizers.create_optimizer(1000, name=optimizer_name)
            plan = functools.lru_cache(maxsize=None)(functools.partial(
                planning.sft_step, config, optimizer, shapes=shapes, partitioner=partitioner))
            for gib in (float(value) for value in args.hbm_gib.split(",")):
                fits = planning.largest_batch(plan, int(gib * GIB))
                rows.append({"model": name, "optimizer": optimizer_name, "hbm_gib": gib,
                             "largest_batch": fits.batch_size if fits else 0,
                             "plan": dataclasses.asdict(fits) if fits else None,
                             "fixed_gib": plan(1).argument_bytes / GIB,
                             "compile_seconds": plan(1).compile_seconds})
                print(name, optimizer_name, f"{gib:g} GiB:", rows[-1]["largest_batch"], flush=True)
    print("\n| model | optimizer | device GiB | largest SFT batch | parameters + optimizer GiB | compile s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['optimizer']} | {row['hbm_gib']:g} | {row['largest_batch']} | "
              f"{row['fixed_gib']:.2f} | {row['compile_seconds']:.0f} |")
    with open(args.out, "w") as f:
        json.dump({"settings": vars(args), "backend": str(jax.devices()[0]), "rows": rows,
                   "wall_seconds": time.time() - started}, f, indent=2)


if __name__ == "__main__":
    main()
