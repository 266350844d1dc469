"""`tinythinker reflect` (one self-reflection iteration) and `tinythinker pipeline` (the whole method)."""

import argparse

from tinythinker_jax import gin_utils
from tinythinker_jax.commands.train import add_distributed_flags, initialize_distributed


def _reflect(args) -> int:
    initialize_distributed(args)
    import gin
    from tinythinker_jax.reflection import iteration

    gin_utils.parse_gin_flags(args, configurables=[iteration.run_iteration])
    result = gin.get_configurable(iteration.run_iteration)()
    if not result.preempted:
        print(f"Iteration {result.iteration}: {result.pairs['recall']} recall and {result.pairs['analyze']} "
              f"analyze pairs; best validation accuracy {result.best_accuracy:.4f} at step {result.best_step}.")
    return 0


def _pipeline(args) -> int:
    initialize_distributed(args)
    import gin
    from tinythinker_jax import pipeline

    gin_utils.parse_gin_flags(args, configurables=pipeline.CONFIGURABLES)
    state = gin.get_configurable(pipeline.run_pipeline)()
    if state is not None:
        for phase in state["phases"]:
            print(f"{phase['name']:>12}: validation {phase['validation_accuracy']:.4f}, "
                  f"test {phase['test_accuracy']:.4f}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    reflect = subparsers.add_parser("reflect", help="phase 2: one self-reflection iteration (--gin.ITERATION=i)")
    pipeline = subparsers.add_parser("pipeline", help="phase 1, the self-reflection iterations, test, report; "
                                                      "re-run to resume")
    for parser, func in ((reflect, _reflect), (pipeline, _pipeline)):
        gin_utils.add_gin_flags(parser)
        add_distributed_flags(parser)
        parser.set_defaults(func=func)
