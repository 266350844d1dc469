"""`tinythinker report DIR [DIR ...]`: a pipeline run's results report, or one table comparing several runs."""

import argparse
import os
import sys


def _report(args) -> int:
    from tinythinker_jax import report
    from tinythinker_jax.data import locations
    from tinythinker_jax.errors import UserError

    # Everything is read and checked before anything is written, so a bad directory leaves the others as
    # they were.
    for run_dir in args.run_dirs:
        report.summarize(run_dir)
        locations.require_writable(run_dir, "DIR")
    if args.out:
        locations.require_local(args.out, "--out")
        if os.path.isdir(args.out):
            raise UserError(f"--out {args.out!r} is a directory; name the file to write the table to")
        locations.require_writable(os.path.dirname(os.path.abspath(args.out)), "--out's directory")
    summaries = [report.write_report(run_dir) for run_dir in args.run_dirs]
    table = report.compare(args.run_dirs) if len(args.run_dirs) > 1 or args.out else None
    if len(summaries) == 1:
        print(report.render_markdown(summaries[0]), end="")
    else:
        print(table)
    if args.out:
        assert table is not None  # --out is one of the cases that build the table
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
