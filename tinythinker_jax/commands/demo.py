"""`tinythinker demo`: the whole method on the built-in toy world, no download and no API key."""

import argparse
import os

EXPERIMENT = "gin/experiments/toyworld_yesno_t5_mini_pipeline.gin"


def _demo(args) -> int:
    import gin
    from tinythinker_jax import pipeline
    from tinythinker_jax.commands.reflect import parse_pipeline_gin
    from tinythinker_jax.data import locations, prepare

    locations.require_local(args.out, "--out")
    out = os.path.abspath(args.out)
    data_dir = os.path.join(out, "data")
    # Every setting is checked before the toy world is made, so a mistyped --gin.KEY stops at once.
    parse_pipeline_gin(["gin/runs/pipeline.gin", EXPERIMENT],
                       [f"MODEL_DIR = {out!r}", f"DATA_DIR = {data_dir!r}", *args.gin_bindings])
    locations.require_writable(out, "--out")
    print(f"TinyThinker demo -> {out}\n"
          "1/4 toy world: questions, template-teacher rationales, vocabulary")
    prepare.ensure_prepared("toyworld_yesno", data_dir)
    print("2/4 phase 1 (SFT), 3/4 two self-reflection iterations, 4/4 test evaluation and report")
    state = gin.get_configurable(pipeline.run_pipeline)()
    if state is None:
        print(f"Stopped; run `tinythinker demo --out {args.out}` again to continue.")
        return 0
    with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
        print(f.read())
    print(f"Report: {os.path.join(out, 'report.md')} (plot: accuracy.png)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="the whole method on the built-in toy world, in minutes on a CPU")
    parser.add_argument("--out", default="tinythinker_demo", help="run directory (re-run to resume)")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="KEY=VALUE, also --gin.KEY=VALUE: change the demo's settings, e.g. --gin.ITERATIONS=3")
    parser.set_defaults(func=_demo)
