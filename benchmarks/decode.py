"""Decoding throughput of the Flax T5 against PyTorch `transformers.generate`, on the same random weights.

    python benchmarks/decode.py [--config t5_1_0_small --batch_size 16 --input_length 200 \
        --decode_length 128 --out decode.json]

Both sides decode the full length (EOS disabled) so they do the same work; greedy and top-k sampling.
"""

import torch

import common
from tinythinker_jax.models import decoding

TOP_K = 50  # transformers' default for sampling


def main() -> None:
    args = common.parser(__doc__, "decode.json").parse_args()
    model, reference, device = common.models(args.config, args.dtype, args.seed)
    inputs, _ = common.token_batches(args)
    input_lists, torch_inputs = inputs.tolist(), torch.tensor(inputs, device=device)

    def ours(sampling):
        # No token id is -1: every row decodes the whole length.
        decoding.generate(model, input_lists, max_decode_length=args.decode_length, sampling=sampling,
                          batch_size=args.batch_size, eos_id=-1)

    def theirs(**sampling):
        with torch.no_grad():
            out = reference.generate(input_ids=torch_inputs, max_new_tokens=args.decode_length, **sampling)
        assert out.shape[1] == args.decode_length + 1

    cases = {
        "greedy": (lambda: ours(decoding.SamplingConfig()), lambda: theirs(do_sample=False)),
        "sampled": (lambda: ours(decoding.SamplingConfig(temperature=1.0, top_k=TOP_K)),
                    lambda: theirs(do_sample=True, temperature=1.0, top_k=TOP_K)),
    }
    common.write_report(args, device, common.compare(cases, args.batch_size * args.decode_length, args.repeats))


if __name__ == "__main__":
    main()
