"""`tinythinker study`: the paper's ablations, iterations and self-consistency as one grid on the toy world."""

import argparse


def _study(args) -> int:
    from tinythinker_jax import study

    summary = study.run_study(args.out, args.grid, args.world, args.gin_bindings)
    if summary is None:
        print(f"Stopped; run `tinythinker study --out {args.out} --grid {args.grid} --world {args.world}` again "
              "to continue.")
        return 0
    print(f"{len(summary['cells'])} cells; report: {args.out}/study.md (plot: study.png, data: study.json)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from tinythinker_jax import study

    parser = subparsers.add_parser("study", help="the paper's ablations and self-reflection iterations over seeds "
                                                 "on the toy world; re-run to resume")
    parser.add_argument("--out", required=True, help="study directory (re-run to resume)")
    parser.add_argument("--grid", default="full", choices=sorted(study.GRIDS),
                        help="full: 3 seeds at the demo's sizes; quick: one seed, shorter phases")
    parser.add_argument("--world", default="noisy", choices=sorted(study.WORLDS),
                        help="noisy: a teacher wrong in 30%% of rationales (the study's setting); demo: never wrong")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="KEY=VALUE, also --gin.KEY=VALUE: a setting for every cell, e.g. --gin.EPOCHS=3")
    parser.set_defaults(func=_study)
