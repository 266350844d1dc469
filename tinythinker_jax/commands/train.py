"""`tinythinker train`: phase 1 (SFT) configured by gin, T5X-style."""

import argparse

from tinythinker_jax import gin_utils
from tinythinker_jax.commands import non_negative_int, positive_int_or_all
from tinythinker_jax.errors import UserError


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator_address", help="host:port of process 0, for multi-process runs")
    parser.add_argument("--num_processes", type=positive_int_or_all, default=1,
                        help="processes in the run (-1: as Cloud TPU's environment says)")
    parser.add_argument("--process_id", type=non_negative_int, default=0, help="this process, from 0")


def initialize_distributed(args: argparse.Namespace) -> None:
    """Joins a multi-process run when asked to (Cloud TPU sets its own environment: pass --num_processes -1)."""
    if args.num_processes > 1:
        if not args.coordinator_address:
            raise UserError(f"--num_processes {args.num_processes} needs --coordinator_address HOST:PORT "
                            f"(process 0's), or --num_processes -1 on Cloud TPU")
        if args.process_id >= args.num_processes:
            raise UserError(f"--process_id {args.process_id} is not below --num_processes {args.num_processes}")
    import jax

    if args.num_processes == -1:
        jax.distributed.initialize()
    elif args.num_processes > 1:
        jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)


def _train(args) -> int:
    initialize_distributed(args)
    import gin
    from tinythinker_jax.training import trainer

    gin_utils.parse_gin_flags(args, configurables=[trainer.train])
    result = gin.get_configurable(trainer.train)()
    if result.preempted:
        return 0
    print(f"Trained {result.step} steps; best validation accuracy {result.best_accuracy:.4f} "
          f"at step {result.best_step}.")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="phase 1: SFT on the three stage streams (gin-configured)")
    gin_utils.add_gin_flags(train)
    add_distributed_flags(train)
    train.set_defaults(func=_train)
