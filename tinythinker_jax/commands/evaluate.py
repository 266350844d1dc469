"""`tinythinker evaluate`: the three-stage pipeline of a checkpoint on any split, greedy or self-consistent.

Configured by flags, or T5X-style by gin (`--gin_file=gin/runs/evaluate.gin` plus an experiment gin and
`--gin.CHECKPOINT_PATH=... --gin.EVAL_OUTPUT_DIR=...`).
"""

import argparse
import dataclasses

from tinythinker_jax import formats, gin_utils
from tinythinker_jax.commands import (
    non_negative_float,
    non_negative_int,
    positive_int,
    positive_int_or_all,
    probability,
)
from tinythinker_jax.commands.train import add_distributed_flags, initialize_distributed
from tinythinker_jax.data import benchmarks
from tinythinker_jax.errors import UserError

STAGES = formats.STAGES
# The flags that set a `chains.ChainSettings` field of the same name.
CHAIN_FLAGS = ("max_input_length", "max_decode_length", "max_summary_length", "batch_size")


def _evaluate(args) -> int:
    initialize_distributed(args)
    import gin
    import tinythinker_tasks
    from tinythinker_jax import chains, evaluation, partitioning
    from tinythinker_jax.data import locations

    if args.gin_file:
        gin_utils.parse_gin_flags(args, configurables=[evaluation.evaluate_checkpoint])
        result = gin.get_configurable(evaluation.evaluate_checkpoint)()
    else:
        missing = [f"--{name}" for name in ("checkpoint", "dataset", "out_dir") if not getattr(args, name)]
        if missing:
            raise UserError(f"evaluate needs {', '.join(missing)} (or --gin_file=gin/runs/evaluate.gin)")
        locations.require_local(args.out_dir, "--out_dir")
        result = evaluation.evaluate_checkpoint(
            checkpoint_path=args.checkpoint, mixture_or_task_name=tinythinker_tasks.stage_mixture_name(
                args.dataset, args.stage_type), output_dir=args.out_dir, split=args.split, num_chains=args.num_chains,
            sampling=_sampling(args, evaluation.default_sampling(args.num_chains)),
            sampled_stages=args.sampled_stages,
            chain_settings=chains.ChainSettings(**{  # a flag not given keeps the ChainSettings default
                name: getattr(args, name) for name in CHAIN_FLAGS if getattr(args, name) is not None}),
            data_dir=args.data_dir, max_questions=args.max_questions, seed=args.seed, dtype=args.dtype,
            partitioner=partitioning.Partitioner(data=args.mesh_data, model=args.mesh_model,
                                                 parameter_partitioning_dims=args.parameter_partitioning_dims))
    print(f"accuracy {result.accuracy:.4f} on {result.num_questions} questions -> {result.summary_path}")
    return 0


def _sampling(args, default):
    """`default` (greedy for one chain, the official self-consistency for several) with the sampling flags
    that were given."""
    given = {name: getattr(args, name) for name in ("temperature", "top_k", "top_p") if getattr(args, name) is not None}
    return dataclasses.replace(default, **given)


def _stages(text: str) -> tuple[str, ...]:
    """`--sampled_stages recall,analyze` -> ("recall", "analyze"), every name a stage."""
    stages = tuple(text.split(","))
    if not set(stages) <= set(STAGES):
        raise argparse.ArgumentTypeError(f"expected stages from {','.join(STAGES)}, comma-separated, got {text!r}")
    return stages


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="run the three-stage pipeline of a checkpoint on a split")
    gin_utils.add_gin_flags(parser)
    add_distributed_flags(parser)
    parser.add_argument("--checkpoint", help="a model checkpoint, e.g. MODEL_DIR/best")
    parser.add_argument("--dataset", choices=sorted(benchmarks.BENCHMARKS))
    parser.add_argument("--data_dir", help="the dataset directory (default: $TINYTHINKER_DATA_ROOT/<dataset>)")
    parser.add_argument("--split", default="test", choices=benchmarks.SPLITS)
    parser.add_argument("--out_dir")
    parser.add_argument("--stage_type", default="full", choices=list(formats.STAGE_TYPES),
                        help="the chain's stages, as phase 1 trained them")
    parser.add_argument("--num_chains", type=positive_int, default=1,
                        help="chains per question; >1 votes (self-consistency)")
    parser.add_argument("--temperature", type=non_negative_float,
                        help="of the sampled stages; 0 decodes greedily (default: 0.7 with --num_chains > 1, "
                             "as the official self-consistency, else 0)")
    parser.add_argument("--top_k", type=non_negative_int, help="0 keeps every token (default: 0)")
    parser.add_argument("--top_p", type=probability, help="1 keeps every token (default: 1)")
    parser.add_argument("--sampled_stages", type=_stages, default=STAGES[:2],
                        help="the stages that sample, the others decode greedily (default: the official "
                             "self-consistency's, recall,analyze; recall,analyze,summarize samples every stage)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_questions", type=positive_int)
    parser.add_argument("--max_input_length", type=positive_int,
                        help="cut longer stage inputs to this many tokens and count them in the summary "
                             "(default: no cut, as the official code)")
    parser.add_argument("--max_decode_length", type=positive_int,
                        help="tokens a recall or analysis may run to (default: 200, the official limit)")
    parser.add_argument("--max_summary_length", type=positive_int,
                        help="tokens a summary may run to (default: 200, the official limit)")
    parser.add_argument("--batch_size", type=positive_int, help="decoded rows per call (default: 64)")
    parser.add_argument("--dtype", help="compute dtype, e.g. bfloat16 on accelerators (default: as saved)")
    parser.add_argument("--mesh_data", type=positive_int_or_all, default=-1,
                        help="the mesh's 'data' axis (-1: the devices left)")
    parser.add_argument("--mesh_model", type=positive_int_or_all, default=1, help="the mesh's 'model' axis")
    parser.add_argument("--parameter_partitioning_dims", type=int, choices=(1, 2), default=1,
                        help="2 also shards the parameters over 'data'")
    parser.set_defaults(func=_evaluate)
