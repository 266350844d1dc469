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
        print(f"{result.name}: {result.pairs['recall']} recall and {result.pairs['analyze']} "
              f"analyze pairs; best validation accuracy {result.best_accuracy:.4f} at step {result.best_step}.")
    return 0


def check_pipeline_settings() -> None:
    """Checks, as gin binds them, the settings of the pipeline and of the phases it will run, so that a bad
    phase-2 setting stops the run before phase 1 spends hours.

    Raises:
        UserError: Naming the first bad setting as the user set it.
    """
    from tinythinker_jax import pipeline
    from tinythinker_jax.reflection import iteration
    from tinythinker_jax.training import trainer

    arguments = gin_utils.bound_arguments(pipeline.run_pipeline)
    pipeline.check_settings(arguments)
    for check, phase in ((trainer.check_settings, trainer.train),
                         (iteration.check_settings, iteration.run_iteration)):
        check({"mixture_or_task_name": arguments["mixture_or_task_name"], **gin_utils.bound_arguments(phase)})


def parse_pipeline_gin(files, bindings, search_paths=()) -> None:
    """Parses a pipeline's gin (`gin_utils.parse`, resolving what the pipeline calls) and checks its settings."""
    from tinythinker_jax import pipeline
    from tinythinker_jax.reflection import iteration
    from tinythinker_jax.training import trainer

    gin_utils.parse(files, bindings, search_paths, configurables=(pipeline.run_pipeline, trainer.train,
                                                                  iteration.run_iteration))
    check_pipeline_settings()


def _pipeline(args) -> int:
    initialize_distributed(args)
    import gin
    from tinythinker_jax import pipeline

    gin_utils.require_gin_files(args)
    parse_pipeline_gin(args.gin_file, args.gin_bindings, args.gin_search_paths.split(","))
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
