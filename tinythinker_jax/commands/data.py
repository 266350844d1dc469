"""`tinythinker data split|toyworld|preview`: make dataset directories and look at what the student sees."""

import argparse
import json

from tinythinker_jax.commands import fraction_below_one, positive_int
from tinythinker_jax.data.benchmarks import BENCHMARKS, SPLITS
from tinythinker_jax.errors import UserError

TOY_WORLDS = tuple(name for name in BENCHMARKS if name.startswith("toyworld"))


def _split(args) -> int:
    from tinythinker_jax.data import prepare

    prepared = prepare.prepare_benchmark(args.dataset, args.raw_dir, args.out_dir, args.seed, force=args.force)
    manifest = prepared.manifest
    counts = ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())
    state = "" if prepared.rebuilt else "; already there, unchanged"
    print(f"{args.dataset}: {counts} -> {args.out_dir} ({manifest['split_rule']}{state})")
    if prepared.stale_teacher_dir:
        print(f"teacher records of questions that changed split moved to {prepared.stale_teacher_dir}; "
              f"run `tinythinker teacher run` again (its response cache is kept)")
    return 0


def _toyworld(args) -> int:
    from tinythinker_jax.data import prepare

    manifest = prepare.prepare_toyworld(args.out_dir, args.dataset, args.seed, args.samples, args.teacher_noise)
    counts = ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())
    print(f"{args.dataset} (seed {args.seed}): {counts} -> {args.out_dir}")
    return 0


def _preview(args) -> int:

    import tinythinker_tasks
    from tinythinker_jax.data import locations, prepare

    dataset = tinythinker_tasks.dataset_of_task(args.task)
    data_dir = args.data_dir or locations.dataset_dir(dataset)
    prepare.ensure_prepared(dataset, data_dir)
    tinythinker_tasks.register_dataset(dataset, data_dir, args.vocab)
    task = _task(args.task, dataset)
    tinythinker_tasks.load_vocabularies(args.task)
    if args.split not in task.splits:
        raise UserError(f"--split {args.split}: {args.task} has only {', '.join(task.splits)} (stage tasks read the "
                        f"training questions' teacher records; tinythinker.{dataset}.questions has every split)")
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


def _task(name: str, dataset: str):
    """The registered task or mixture `name`, or a UserError listing the dataset's names."""
    import seqio

    registered = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    if name not in registered:
        names = sorted(n for n in registered if n.startswith(f"tinythinker.{dataset}.") and ".reflect_" not in n)
        raise UserError(f"--task {name}: no such task or mixture; {dataset} has {', '.join(names)}")
    return seqio.get_mixture_or_task(name)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare datasets and preview stage examples")
    commands = data.add_subparsers(dest="data_command", required=True)

    split = commands.add_parser("split", help="write a benchmark's paper splits, manifest and TFDS build")
    split.add_argument("--dataset", required=True, choices=sorted(BENCHMARKS))
    split.add_argument("--raw_dir", required=True, help="directory with the upstream files")
    split.add_argument("--out_dir", required=True,
                       help="the dataset directory to write; splits, manifest and TFDS build are replaced together")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--force", action="store_true",
                       help="write splits that move questions out of the split OUT_DIR/teacher/ records were made "
                            "for, moving those records to OUT_DIR/teacher/stale-<time>/ (refused without it)")
    split.set_defaults(func=_split)

    toy = commands.add_parser("toyworld", help="generate the built-in toy world as a ready dataset directory")
    toy.add_argument("--out_dir", required=True)
    toy.add_argument("--dataset", default="toyworld", choices=TOY_WORLDS)
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--samples", type=positive_int, default=2, help="template-teacher rationales per question")
    toy.add_argument("--teacher_noise", type=fraction_below_one, default=0.0,
                     help="share of rationales that put the entity in a wrong category (a teacher's mistakes)")
    toy.set_defaults(func=_toyworld)

    preview = commands.add_parser("preview", help="print the exact seqio inputs/targets of a task")
    preview.add_argument("--task", required=True, help="e.g. tinythinker.toyworld.analyze")
    preview.add_argument("--split", default="train", choices=SPLITS)
    preview.add_argument("--num", type=positive_int, default=5)
    preview.add_argument("--format", choices=["text", "jsonl"], default="text")
    preview.add_argument("--data_dir", help="the dataset directory (default: $TINYTHINKER_DATA_ROOT/<dataset>)")
    preview.add_argument("--vocab", help="SentencePiece model (default: $TINYTHINKER_VOCABULARY, else T5's on Google "
                                         "Cloud Storage; the toy world's own for toyworld)")
    preview.set_defaults(func=_preview)
