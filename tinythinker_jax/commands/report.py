"""`tinythinker report DIR [DIR ...]`: a pipeline run's results report, or one table comparing several runs."""

import argparse
import sys


def _report(args) -> int:
    from tinythinker_jax import report
    from tinythinker_jax.data.records import DataError

    try:
        summaries = [report.write_report(run_dir) for run_dir in args.run_dirs]
        table = report.compare(args.run_dirs) if len(args.run_dirs) > 1 or args.out else None
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if len(summaries) == 1:
        print(report.render_markdown(summaries[0]), end="")
    else:
        print(table)
    if args.out:
        report.write_text(args.out, table + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="write a run's report.md, report.json and accuracy.png; compare several runs",
        description="For each run directory (one with pipeline.json), (re)write report.md, report.json and "
        "accuracy.png. One directory: print its report.md. Several: print a table comparing them.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="DIR", help="a pipeline run directory")
    parser.add_argument("--out", metavar="FILE", help="also write the comparison table (markdown) to FILE")
    parser.set_defaults(func=_report)
