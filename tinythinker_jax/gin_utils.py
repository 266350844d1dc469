"""T5X-style gin handling: `--gin_file` (repeatable), `--gin.KEY=VALUE` bindings and search paths."""

import argparse
import os
from typing import Sequence

import gin

GIN_BINDING_PREFIX = "--gin."


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.KEY=VALUE` -> `--gin_bindings KEY=VALUE`, which argparse understands."""
    rewritten = []
    for arg in argv:
        if arg.startswith(GIN_BINDING_PREFIX):
            rewritten += ["--gin_bindings", arg[len(GIN_BINDING_PREFIX):]]
        else:
            rewritten.append(arg)
    return rewritten


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gin_file", action="append", default=[], help="gin file; repeat to add more")
    parser.add_argument("--gin_bindings", action="append", default=[], help="KEY=VALUE; also --gin.KEY=VALUE")
    parser.add_argument("--gin_search_paths", default=".",
                        help="comma-separated directories for gin files and includes (default: the current one)")


def parse_gin_flags(args: argparse.Namespace) -> None:
    for path in args.gin_search_paths.split(","):
        if path:
            gin.add_config_file_search_path(os.path.abspath(path))
    gin.parse_config_files_and_bindings(args.gin_file, args.gin_bindings)
