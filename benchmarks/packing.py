"""Non-padding target tokens per second of the SFT train step with the stage streams packed
(`trainer.train(pack=True)`) against unpacked, over one epoch of every stage stream of a dataset.

    python benchmarks/packing.py [--config t5_1_0_small --batch_size 8 --datasets toyworld,csqa --scan_layers \
        --out packing.json]

Packing keeps a stream's widths, so it changes how many steps an epoch takes, not what a step costs (but for
the segment masks). Per stage, the script counts the epoch's batches each way (one seeded shuffle, packed as
`data/packing.py` packs it) and times the train step (forward, backward, AdamW, dropout 0.1) on the epoch's
first batch each way; an epoch's target tokens, the same either way, over the time of its steps is the rate,
and packed over unpacked is the gain. The datasets:

- `toyworld`: the built-in toy world as `tinythinker data toyworld` makes it (seed 0, 5 options, two
  template-teacher rationales per training question), tokenised with its own vocabulary.
- `csqa`: CSQA-shaped lengths. CSQA's teacher rationales cannot be had offline, so each stage's input and
  target lengths are drawn, independently (their correlation there is under 0.01), from the quantiles of
  the stage examples of `benchmarks/rehearsal.py`'s scripted teacher: replies with the official exemplars'
  word counts for the 8,520 training questions, 8 each, tokenised with the T5 vocabulary (the maxima are
  `docs/rehearsal_csqa.md`'s, the means within 2% of its, which it took from 400 records).

Each stream is as wide as the trainer makes it, the shape bucket of its longest example; `--input_length`
and `--decode_length` are not used. Token ids are random: only lengths matter here.
"""

import os
import tempfile

import common
import jax
import numpy as np
import sentencepiece
from flax import nnx

from tinythinker_jax import formats, partitioning
from tinythinker_jax.data import examples, lengths, packing, toyworld
from tinythinker_jax.models import batching, t5
from tinythinker_jax.phases import optimizers
from tinythinker_jax.phases.step import make_train_step
from tinythinker_jax.training import losses

TOY_TEACHER_SAMPLES = 2  # rationales per question, as `tinythinker data toyworld` writes them
CSQA_QUESTIONS, CSQA_SAMPLES, CSQA_OPTIONS = 8520, 8, 5
# Tokens (EOS included) of each CSQA stage's inputs and targets at the quantiles `CSQA_LEVELS` (the tails
# finer: the longest examples decide how many fit a row).
CSQA_LEVELS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
CSQA_QUANTILES = {
    "recall": ((30, 33, 35, 37, 39, 41, 43, 44, 46, 48, 51, 55, 59, 70, 87, 102),
               (16, 17, 20, 21, 24, 26, 27, 29, 31, 33, 35, 37, 40, 44, 48, 54)),
    "analyze": ((55, 63, 67, 70, 73, 76, 79, 81, 83, 86, 89, 94, 99, 110, 126, 155),
                (12, 13, 16, 18, 20, 22, 24, 25, 26, 28, 30, 33, 35, 40, 45, 54)),
    "summarize": ((157, 187, 197, 202, 209, 214, 218, 222, 226, 231, 236, 244, 250, 263, 280, 300), (8,) * 16),
}


def toyworld_lengths() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Input and target tokens (EOS included) of every toy-world stage example, as the trainer reads them."""
    world = toyworld.ToyWorld.generate(seed=0)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "spiece.model")
        world.train_vocabulary(path)
        processor = sentencepiece.SentencePieceProcessor(model_file=path)
    records = [world.teacher_record(question, TOY_TEACHER_SAMPLES) for question in world.questions["mc5"]["train"]]
    stages = {}
    for stage in formats.stages_of("full"):
        rows = examples.stage_examples(records, stage)
        stages[stage] = tuple(np.array([len(ids) + 1 for ids in processor.encode([row[feature] for row in rows])])
                              for feature in ("inputs", "targets"))
    return stages


def csqa_lengths(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CSQA-sized stage streams with lengths drawn from `CSQA_QUANTILES`."""
    rng = np.random.default_rng(seed)
    stages = {}
    for stage, quantiles in CSQA_QUANTILES.items():
        count = CSQA_QUESTIONS * CSQA_SAMPLES * (CSQA_OPTIONS if stage == formats.ANALYZE else 1)
        stages[stage] = tuple(np.rint(np.interp(rng.random(count), CSQA_LEVELS, values)).astype(np.int64)
                              for values in quantiles)
    return stages


def example_arrays(input_lengths: np.ndarray, target_lengths: np.ndarray, widths: tuple[int, int],
                   vocab_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Examples of these lengths (random ids, then EOS) in the trainer's unpacked layout."""
    def tokens(example_lengths: np.ndarray, width: int) -> np.ndarray:
        ids = rng.integers(3, vocab_size, (len(example_lengths), width), dtype=np.int32)
        ids[np.arange(width)[None, :] >= example_lengths[:, None]] = 0
        ids[np.arange(len(example_lengths)), example_lengths - 1] = 1
        return ids

    return lengths.encoder_decoder_arrays(tokens(input_lengths, widths[0]), tokens(target_lengths, widths[1]))


def stage_batches(input_lengths: np.ndarray, target_lengths: np.ndarray, batch_size: int, vocab_size: int,
                  seed: int) -> dict:
    """One epoch of a stage stream each way: its batches, rows and target fill, and its first batch."""
    widths = (batching.bucket_length(int(input_lengths.max())), batching.bucket_length(int(target_lengths.max())))
    order = np.random.default_rng(seed).permutation(len(input_lengths))
    inputs, targets = input_lengths[order], target_lengths[order]
    starts = packing.row_starts(inputs, targets, *widths)
    rng = np.random.default_rng(seed)
    first_rows = min(batch_size, len(starts) - 1)
    packed_first = example_arrays(inputs[:starts[first_rows]], targets[:starts[first_rows]], widths, vocab_size, rng)
    cases = {
        "unpacked": {"rows": len(order),
                     "first_batch": example_arrays(inputs[:batch_size], targets[:batch_size], widths, vocab_size,
                                                   rng)},
        "packed": {"rows": len(starts) - 1,
                   "first_batch": packing.pack_rows(packed_first, packing.example_lengths(packed_first),
                                                    np.arange(starts[first_rows]), starts[:first_rows + 1],
                                                    batch_size)},
    }
    for case in cases.values():
        case["batches"] = -(-case["rows"] // batch_size)
        case["examples_per_row"] = len(order) / case["rows"]
        case["target_fill"] = float(target_lengths.sum()) / (case["batches"] * batch_size * widths[1])
    return {"examples": len(order), "input_width": widths[0], "target_width": widths[1],
            "target_tokens": int(target_lengths.sum()), "cases": cases}


def main() -> None:
    parser = common.parser(__doc__, "packing.json")
    parser.add_argument("--datasets", default="toyworld,csqa", help="comma-separated: toyworld, csqa")
    parser.set_defaults(batch_size=8, repeats=3)
    args = parser.parse_args()
    # SFT's dropout (T5's 0.1).
    config = t5.model_config(args.config, dropout_rate=0.1, dtype=args.dtype, scan_layers=args.scan_layers)
    sources = {"toyworld": toyworld_lengths, "csqa": lambda: csqa_lengths(args.seed)}
    mesh = partitioning.create_mesh()
    rules = partitioning.standard_logical_axis_rules()
    optimizer = optimizers.create_optimizer(1000)
    results = {}
    with partitioning.activate(mesh, rules):
        model = partitioning.shard_model(t5.create_model(config, seed=args.seed), mesh, rules)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        state = {"params": params, "opt_state": jax.jit(optimizer.transform.init)(params), "step": 0}
        train_step = make_train_step(graphdef, rest, optimizer.transform, losses.sft_loss)
        rng = jax.random.key(0)

        def step_of(batch: dict[str, np.ndarray]):
            placed = partitioning.global_batch(batch, mesh, rules)

            def step():
                state["params"], state["opt_state"], values = train_step(
                    state["params"], state["opt_state"], placed, state["step"], rng)
                state["step"] += 1
                jax.block_until_ready(values)

            step()  # compiles
            return step

        def step_seconds(batches: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
            """The best time of one step on each batch, timed in turns so that drift in the machine's speed
            (other work on it) reaches every batch alike."""
            steps = {name: step_of(batch) for name, batch in batches.items()}
            times: dict[str, list[float]] = {name: [] for name in batches}
            for _ in range(args.repeats):
                for name, step in steps.items():
                    times[name].append(common.best_time(step, 1))
            return {name: min(seconds) for name, seconds in times.items()}

        for dataset in args.datasets.split(","):
            stages = {stage: stage_batches(*stage_lengths, args.batch_size, config.vocab_size, args.seed)
                      for stage, stage_lengths in sources[dataset]().items()}
            seconds = {"unpacked": 0.0, "packed": 0.0}
            for stage, entry in stages.items():
                timed = step_seconds({name: case.pop("first_batch") for name, case in entry["cases"].items()})
                for name, case in entry["cases"].items():
                    case["step_seconds"] = timed[name]
                    seconds[name] += case["batches"] * case["step_seconds"]
                print(f"{dataset} {stage}: {entry['examples']:,} examples, widths {entry['input_width']}/"
                      f"{entry['target_width']}; " + "; ".join(
                          f"{name} {case['rows']:,} rows ({case['examples_per_row']:.2f} per row), "
                          f"{case['batches']:,} batches of {case['step_seconds']:.3f} s"
                          for name, case in entry["cases"].items()), flush=True)
            tokens = sum(entry["target_tokens"] for entry in stages.values())
            rates = {name: tokens / total for name, total in seconds.items()}
            results[dataset] = {"stages": stages, "target_tokens_per_s": rates,
                                "ratio": rates["packed"] / rates["unpacked"]}
            print(f"{dataset}: non-padding target tokens/s over an epoch: unpacked {rates['unpacked']:.1f}, "
                  f"packed {rates['packed']:.1f}, x{results[dataset]['ratio']:.2f}", flush=True)
    common.write_report(args, "unused", results)


if __name__ == "__main__":
    main()
