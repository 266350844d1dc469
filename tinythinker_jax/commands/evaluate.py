"""`tinythinker evaluate`: the three-stage pipeline of a checkpoint on any split, greedy or self-consistent."""

import argparse


def _evaluate(args) -> int:
    import tinythinker_tasks
    from tinythinker_jax import chains, evaluation
    from tinythinker_jax.data import locations, prepare
    from tinythinker_jax.models import checkpoints, decoding

    data_dir = args.data_dir or locations.dataset_dir(args.dataset)
    prepare.ensure_prepared(args.dataset, data_dir)
    tinythinker_tasks.register_dataset(args.dataset, data_dir, checkpoints.vocab_path(args.checkpoint))
    questions = tinythinker_tasks.load_questions(args.dataset, args.split)[: args.max_questions]
    sampling = decoding.SamplingConfig(args.temperature, args.top_k, args.top_p)
    settings = chains.ChainSettings(
        recall=sampling, analyze=sampling, summarize=sampling, max_input_length=args.max_input_length,
        max_decode_length=args.max_decode_length, batch_size=args.batch_size,
    )
    model = checkpoints.load_model(args.checkpoint, dtype=args.dtype)
    runner = chains.ChainRunner(model, checkpoints.load_vocabulary(args.checkpoint), settings)
    result = evaluation.evaluate(
        runner, questions, args.out_dir, split=args.split, stage_type=args.stage_type, num_chains=args.num_chains,
        seed=args.seed, extra_summary={"checkpoint": args.checkpoint, "dataset": args.dataset,
                                       "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p},
    )
    print(f"{args.dataset} {args.split}: accuracy {result.accuracy:.4f} on {result.num_questions} questions "
          f"-> {result.summary_path}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="run the three-stage pipeline of a checkpoint on a split")
    parser.add_argument("--checkpoint", required=True, help="a model checkpoint, e.g. MODEL_DIR/best")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_dir", help="the dataset directory (default: $TINYTHINKER_DATA_ROOT/<dataset>)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--stage_type", default="full", help="full, summarize, recall_summarize, analyze_summarize")
    parser.add_argument("--num_chains", type=int, default=1, help="chains per question; >1 votes (self-consistency)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily")
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_questions", type=int)
    parser.add_argument("--max_input_length", type=int, default=200)
    parser.add_argument("--max_decode_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--dtype", help="compute dtype, e.g. bfloat16 on accelerators (default: as saved)")
    parser.set_defaults(func=_evaluate)
