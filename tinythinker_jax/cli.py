"""The `tinythinker` console command: one subcommand group per module in `tinythinker_jax.commands`."""

import argparse
import importlib
import os
import sys

from tinythinker_jax import errors

# Each module defines `add_parser(subparsers)`, which registers its subcommands and sets
# `func(args) -> int` on them. Heavy imports (TensorFlow, JAX) happen inside `func`, so
# `tinythinker --help` stays fast.
COMMAND_MODULES = ("demo", "data", "teacher", "model", "train", "reflect", "evaluate", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinythinker", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error instead of its one line (also {errors.DEBUG_ENV}=1)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"tinythinker_jax.commands.{name}").add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides our output
    from tinythinker_jax.gin_utils import rewrite_gin_args

    args = build_parser().parse_args(rewrite_gin_args(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args) or 0
    except errors.UserError as e:
        if args.debug or os.environ.get(errors.DEBUG_ENV, "") not in ("", "0"):
            raise
        message = " ".join(str(e).split())  # one line, whatever the message's own layout
        print(f"error: {message}", file=sys.stderr)
        return errors.EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
