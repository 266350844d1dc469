"""Self-reflection's cost centre, generation, against PyTorch: sampled three-stage chains per second, as in
step 1 of an iteration (recall sampled at temperature 0.7, every option analysed greedily, summary greedy),
with our ChainRunner and with `transformers.generate` doing the same chains on the same random weights;
plus the DPO train step's examples/s.

    TINYTHINKER_VOCAB=path/to/t5_spiece.model python benchmarks/reflect.py [--config t5_1_0_small \
        --questions 8 --num_samples 4 --batch_size 64 --out reflect.json]

Questions come from the toy world (5 options, like CSQA). Random weights rarely emit EOS, so both sides
mostly decode the full 128 tokens per stage: the same work. Needs neither seqio nor TensorFlow, so it runs
on a bare GPU image too.
"""

import tempfile

import common
import jax
import numpy as np
import sentencepiece
import torch
from flax import nnx

from tinythinker_jax import chains, formats, partitioning
from tinythinker_jax.data.toyworld import ToyWorld
from tinythinker_jax.models import decoding, testing
from tinythinker_jax.phases import optimizers
from tinythinker_jax.phases.step import make_train_step
from tinythinker_jax.reflection import losses


class Vocabulary:
    """`seqio.SentencePieceVocabulary`'s encode and decode (ids past the pieces, T5's extra ids, decode as
    unknown) straight on SentencePiece, since seqio needs TensorFlow."""

    def __init__(self, path: str):
        self.processor = sentencepiece.SentencePieceProcessor(model_file=path)

    def encode(self, text: str) -> list[int]:
        return self.processor.encode_as_ids(text)

    def decode(self, ids) -> str:
        size, unknown = self.processor.get_piece_size(), self.processor.unk_id()
        return self.processor.decode_ids([unknown if i >= size else int(i) for i in ids])


def torch_chains(reference, device, vocabulary, questions, num_samples, settings: chains.ChainSettings):
    """The same chains as ChainRunner.run, written the way a PyTorch user would: one generate call per batch."""
    def generate(texts, max_length, **sampling):
        outputs = []
        for start in range(0, len(texts), settings.batch_size):
            ids = [list(vocabulary.encode(t))[: settings.max_input_length - 1] + [1]
                   for t in texts[start:start + settings.batch_size]]
            padded = np.zeros((len(ids), max(map(len, ids))), np.int64)
            for row, seq in enumerate(ids):
                padded[row, : len(seq)] = seq
            inputs = torch.tensor(padded, device=device)
            with torch.no_grad():
                out = reference.generate(input_ids=inputs, attention_mask=inputs != 0, max_new_tokens=max_length,
                                         **sampling)
            outputs += [vocabulary.decode(decoding.until_eos(row[1:].tolist(), 1)) for row in out.cpu()]
        return outputs

    keys = [(q, c) for q in range(len(questions)) for c in range(num_samples)]
    recalls = generate([formats.recall_input(questions[q]) for q, _ in keys], settings.max_decode_length,
                       do_sample=True, temperature=0.7, top_k=0)
    requests = [(key, label) for key, recall in zip(keys, recalls) for label in questions[key[0]].labels]
    analyses = generate([formats.analyze_input(questions[q], recalls[keys.index((q, c))], label)
                         for (q, c), label in requests], settings.max_decode_length, do_sample=False)
    by_key = {key: {} for key in keys}
    for ((q, c), label), text in zip(requests, analyses):
        by_key[(q, c)][label] = text
    generate([formats.summarize_input(questions[q], recall, by_key[(q, c)]) for (q, c), recall in zip(keys, recalls)],
             settings.max_summary_length, do_sample=False)


def dpo_examples_per_second(model, args) -> float:
    """One DPO+RPO step (policy only; reference scores precomputed) on random pairs of TinyThinker's lengths."""
    rng = np.random.RandomState(args.seed)
    batch = {
        "encoder_input_tokens": rng.randint(3, 32000, (args.dpo_batch_size, args.input_length)).astype(np.int32),
        "chosen_targets": rng.randint(3, 32000, (args.dpo_batch_size, args.decode_length)).astype(np.int32),
        "rejected_targets": rng.randint(3, 32000, (args.dpo_batch_size, args.decode_length)).astype(np.int32),
        "reference_chosen": rng.randn(args.dpo_batch_size).astype(np.float32) - 300,
        "reference_rejected": rng.randn(args.dpo_batch_size).astype(np.float32) - 300,
        "pair_weights": np.ones(args.dpo_batch_size, np.float32),
    }
    mesh, rules = partitioning.create_mesh(), partitioning.standard_logical_axis_rules()
    optimizer = optimizers.create_optimizer(1000, learning_rate=5e-6)
    with partitioning.activate(mesh, rules):
        graphdef, params, rest = nnx.split(partitioning.shard_model(model, mesh, rules), nnx.Param, ...)
        opt_state = jax.jit(optimizer.transform.init)(params)
        step_fn = make_train_step(graphdef, rest, optimizer.transform, losses.dpo_loss_fn(0.5, 0.5))
        batch_arrays = partitioning.global_batch(batch, mesh, rules)
        state = {"params": params, "opt_state": opt_state, "step": 0}

        def step():
            state["params"], state["opt_state"], values = step_fn(
                state["params"], state["opt_state"], batch_arrays, state["step"], jax.random.key(0))
            state["step"] += 1
            jax.block_until_ready(values)

        step()
        return args.dpo_batch_size / common.best_time(step, args.repeats)


def main() -> None:
    parser = common.parser(__doc__, "reflect.json")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--dpo_batch_size", type=int, default=32)
    parser.set_defaults(batch_size=64, repeats=1)
    args = parser.parse_args()
    model, reference, device = common.models(args.config, args.dtype, args.seed, scan_layers=args.scan_layers)
    reference.generation_config.eos_token_id = 1
    with tempfile.TemporaryDirectory() as tmp:
        vocabulary = Vocabulary(testing.sentencepiece_model(tmp))
    questions = ToyWorld.generate(seed=0).questions["mc5"]["train"][: args.questions]
    settings = chains.ChainSettings(recall=decoding.SamplingConfig(temperature=0.7), batch_size=args.batch_size,
                                    max_input_length=args.input_length, max_decode_length=args.decode_length)
    runner = chains.ChainRunner(model, vocabulary, settings)
    num_chains = args.questions * args.num_samples
    seeds = iter(range(1000))
    cases = {"chains": (lambda: runner.run(questions, "full", num_chains=args.num_samples, seed=next(seeds)),
                        lambda: torch_chains(reference, device, vocabulary, questions, args.num_samples, settings))}
    results = common.compare(cases, num_chains, args.repeats, unit="chains")
    chain = results["chains"]
    chain["ours_chains_per_s"] = chain.pop("ours_tokens_per_s")
    chain["reference_chains_per_s"] = chain.pop("reference_tokens_per_s")
    results["dpo_train_step"] = {"ours_examples_per_s": dpo_examples_per_second(model, args)}
    print(f"DPO step: {results['dpo_train_step']['ours_examples_per_s']:.1f} pairs/s "
          f"(batch {args.dpo_batch_size}, {args.input_length}/{args.decode_length} tokens)")
    common.write_report(args, device, results)


if __name__ == "__main__":
    main()
