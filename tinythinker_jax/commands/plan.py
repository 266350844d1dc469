"""`tinythinker plan`: per-device memory and compile time of a run's steps, from its gin files, before the run.

    tinythinker plan --gin_file=gin/runs/pipeline.gin --gin_file=gin/experiments/csqa_t5_base_sft.gin \
      [--hbm_gib 16] [--fake_devices 8] [--gin.t5.model_config.remat=\'full\']

Nothing is trained, no data is read and no parameter is allocated: the SFT step (and, when the gin files
configure phase 2, the DPO step) and one decoding call are compiled from shapes on the run's mesh.
"""

import argparse
import functools
import json
import os

from tinythinker_jax import gin_utils
from tinythinker_jax.commands import non_negative_float, positive_int
from tinythinker_jax.errors import UserError

GIB, MIB = 2**30, 2**20


def _use_fake_devices(count: int) -> None:
    """`count` CPU devices, which XLA creates only if told before JAX starts its backends."""
    flag = f"--xla_force_host_platform_device_count={count}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if jax.device_count() != count:
        raise UserError(f"--fake_devices {count}: JAX had already started with {jax.device_count()} devices")


def _row(plan) -> list[str]:
    return [plan.name, str(plan.batch_size), f"{plan.compile_seconds:.1f} s",
            *(f"{value / MIB:,.1f}" for value in (plan.argument_bytes, plan.output_bytes, plan.alias_bytes,
                                                  plan.temp_bytes, plan.total_bytes))]


def _print_table(plans) -> None:
    header = ["step", "batch", "compile", "arguments MiB", "outputs MiB", "aliased MiB", "temporaries MiB",
              "total MiB/device"]
    rows = [header, *(_row(plan) for plan in plans)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))


def _plan(args) -> int:
    if args.fake_devices:
        _use_fake_devices(args.fake_devices)
    import dataclasses

    from tinythinker_jax import planning
    from tinythinker_jax.reflection import iteration
    from tinythinker_jax.training import trainer

    # MODEL_DIR, which the run gins require, names nothing here: the plan writes no file there.
    if not any(binding.split("=")[0].strip() == "MODEL_DIR" for binding in args.gin_bindings):
        args.gin_bindings.insert(0, "MODEL_DIR = 'unused by tinythinker plan'")
    gin_utils.parse_gin_flags(args, configurables=[trainer.train])
    sft = gin_utils.bound_arguments(trainer.train)
    gin_utils.require_partitioner(sft["partitioner"])
    lengths = sft.get("task_feature_lengths") or {}
    chain = sft["chain_settings"]
    shapes = planning.StepShapes(input_length=args.input_length or lengths.get("inputs", 384),
                                 target_length=args.target_length or lengths.get("targets", 128),
                                 decode_length=chain.max_decode_length, num_decodes=args.num_decodes,
                                 packed=sft.get("pack", False))
    config, partitioner = sft["model_config"], sft["partitioner"]
    steps = {"sft_step": (functools.partial(planning.sft_step, config, sft["create_optimizer"](1000),
                                            shapes=shapes, partitioner=partitioner), sft["batch_size"])}
    if gin_utils.is_configured(iteration.run_iteration):  # the gin files include phase 2's
        reflect = gin_utils.bound_arguments(iteration.run_iteration)
        steps["dpo_step"] = (functools.partial(planning.dpo_step, config, reflect["create_optimizer"](1000),
                                               shapes=shapes, partitioner=partitioner), reflect["batch_size"])
    steps["decode"] = (functools.partial(planning.decode_call, config, shapes=shapes, partitioner=partitioner),
                       max(chain.batch_size // shapes.num_decodes, 1))
    print(f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, d_model {config.d_model}, "
          f"{config.dtype}, remat {config.remat}; mesh {dict(partitioner.mesh.shape)}; {shapes}")
    plans = [plan(batch_size) for plan, batch_size in steps.values()]
    _print_table(plans)
    def as_json(plan) -> dict:
        return {**dataclasses.asdict(plan), "total_bytes": plan.total_bytes}

    report = {"shapes": dataclasses.asdict(shapes), "plans": [as_json(plan) for plan in plans]}
    if args.hbm_gib:
        print(f"\nThe largest batch whose step fits in {args.hbm_gib:g} GiB per device:")
        largest = {name: planning.largest_batch(plan, int(args.hbm_gib * GIB)) for name, (plan, _) in steps.items()}
        for name, plan in largest.items():
            if plan is None:
                print(f"{name}: not even a batch of 1")
        _print_table([plan for plan in largest.values() if plan is not None])
        report["largest"] = {name: as_json(plan) if plan else None for name, plan in largest.items()}
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plan", help="per-device memory and compile time of a run's steps, before the run")
    gin_utils.add_gin_flags(parser)
    parser.add_argument("--input_length", type=positive_int,
                        help="encoder tokens per row (default: TASK_FEATURE_LENGTHS' inputs, else 384, the bucket of "
                             "CSQA's longest summarize input)")
    parser.add_argument("--target_length", type=positive_int,
                        help="decoder tokens per row (default: TASK_FEATURE_LENGTHS' targets, else 128)")
    parser.add_argument("--num_decodes", type=positive_int, default=1,
                        help="samples per input of the decoding call (10: phase 2's sampling)")
    parser.add_argument("--hbm_gib", type=non_negative_float,
                        help="one device's memory: also search the largest batch whose step fits")
    parser.add_argument("--fake_devices", type=positive_int,
                        help="plan a mesh of this many devices on a CPU (XLA's fake host devices)")
    parser.add_argument("--json_out", help="also write the figures to this JSON file")
    parser.set_defaults(func=_plan)
