"""`tinythinker data split|toyworld|preview`: make dataset directories and look at what the student sees."""

import argparse
import json


def _split(args) -> int:
    from tinythinker_jax.data import prepare

    manifest = prepare.prepare_benchmark(args.dataset, args.raw_dir, args.out_dir, args.seed)
    counts = ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())
    print(f"{args.dataset}: {counts} -> {args.out_dir} ({manifest['split_rule']})")
    return 0


def _toyworld(args) -> int:
    from tinythinker_jax.data import prepare

    manifest = prepare.prepare_toyworld(args.out_dir, args.dataset, args.seed, args.samples)
    counts = ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())
    print(f"{args.dataset} (seed {args.seed}): {counts} -> {args.out_dir}")
    return 0


def _preview(args) -> int:
    import seqio

    import tinythinker_tasks
    from tinythinker_jax.data import locations, prepare

    dataset = tinythinker_tasks.dataset_of_task(args.task)
    data_dir = args.data_dir or locations.dataset_dir(dataset)
    prepare.ensure_prepared(dataset, data_dir)
    tinythinker_tasks.register_dataset(dataset, data_dir, args.vocab)
    task = seqio.get_mixture_or_task(args.task)
    examples = task.get_dataset(sequence_length=None, split=args.split, shuffle=False).take(args.num)
    for index, example in enumerate(examples.as_numpy_iterator()):
        row = {
            "inputs": example["inputs_pretokenized"].decode(),
            "targets": example["targets_pretokenized"].decode(),
            "inputs_tokens": int(len(example["inputs"])),  # EOS included, as the model sees it
            "targets_tokens": int(len(example["targets"])),
        }
        if args.format == "jsonl":
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(f"--- {args.task} [{args.split}] #{index}: "
                  f"{row['inputs_tokens']} input tokens, {row['targets_tokens']} target tokens")
            print(f"inputs:\n{row['inputs']}\ntargets:\n{row['targets']}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare datasets and preview stage examples")
    commands = data.add_subparsers(dest="data_command", required=True)

    split = commands.add_parser("split", help="write a benchmark's paper splits, manifest and TFDS build")
    split.add_argument("--dataset", required=True, help="csqa, obqa or strategyqa")
    split.add_argument("--raw_dir", required=True, help="directory with the upstream files")
    split.add_argument("--out_dir", required=True, help="the dataset directory to write")
    split.add_argument("--seed", type=int, default=0)
    split.set_defaults(func=_split)

    toy = commands.add_parser("toyworld", help="generate the built-in toy world as a ready dataset directory")
    toy.add_argument("--out_dir", required=True)
    toy.add_argument("--dataset", default="toyworld", choices=["toyworld", "toyworld_mc4", "toyworld_yesno"])
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--samples", type=int, default=2, help="template-teacher rationales per question")
    toy.set_defaults(func=_toyworld)

    preview = commands.add_parser("preview", help="print the exact seqio inputs/targets of a task")
    preview.add_argument("--task", required=True, help="e.g. tinythinker.toyworld.analyze")
    preview.add_argument("--split", default="train")
    preview.add_argument("--num", type=int, default=5)
    preview.add_argument("--format", choices=["text", "jsonl"], default="text")
    preview.add_argument("--data_dir", help="the dataset directory (default: $TINYTHINKER_DATA_ROOT/<dataset>)")
    preview.add_argument("--vocab", help="SentencePiece model (default: T5's; the toy world's own for toyworld)")
    preview.set_defaults(func=_preview)
