"""The `tinythinker` console command: one subcommand group per module in `tinythinker_jax.commands`."""

import argparse
import importlib
import os
import re
import sys

from tinythinker_jax import errors, tensorflow_runtime

# Each module defines `add_parser(subparsers)`, which registers its subcommands and sets
# `func(args) -> int` on them. Heavy imports (TensorFlow, JAX) happen inside `func`, so
# `tinythinker --help` stays fast.
COMMAND_MODULES = ("demo", "data", "teacher", "model", "train", "reflect", "evaluate", "plan", "report",
                   "study")
# The command groups that never read data through TensorFlow (which takes seconds to start).
WITHOUT_TENSORFLOW = ("teacher", "report")
# Gin appends this to an error raised inside a configurable it called (once per level of nesting).
GIN_CALL_SUFFIX = re.compile(r"\s*In call to configurable '[^']*' \(<[^>]*>\)(?: in scope '[^']*')?")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose mistakes (a bad flag value, a missing flag) are one `UserError` line like every
    other mistake, instead of argparse's usage block; `--help` shows the usage."""

    def error(self, message: str):
        raise errors.UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="tinythinker", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error instead of its one line (also {errors.DEBUG_ENV}=1)")
    subparsers = parser.add_subparsers(dest="command", required=True)  # subcommands' parsers are ArgumentParsers
    for name in COMMAND_MODULES:
        importlib.import_module(f"tinythinker_jax.commands.{name}").add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides our output
    from tinythinker_jax.gin_utils import rewrite_gin_args

    debug = os.environ.get(errors.DEBUG_ENV, "") not in ("", "0")
    try:
        args = build_parser().parse_args(rewrite_gin_args(sys.argv[1:] if argv is None else argv))
        debug = debug or args.debug
        if args.command not in WITHOUT_TENSORFLOW:
            tensorflow_runtime.start_for_data(show_everything=debug)
        return args.func(args) or 0
    except errors.UserError as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return errors.EXIT_CODE


def one_line(error: errors.UserError) -> str:
    """The error's message on one line, whatever its own layout, without gin's note of where it was raised."""
    return " ".join(GIN_CALL_SUFFIX.sub("", str(error)).split())


if __name__ == "__main__":
    sys.exit(main())
