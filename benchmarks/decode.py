"""Decoding throughput of the Flax T5 against PyTorch `transformers.generate`, on the same random weights.

    python benchmarks/decode.py [--config t5_1_0_small --batch_size 16 --input_length 200 \
        --decode_length 128 --out decode.json]

Both sides decode the full length (EOS disabled) so they do the same work; greedy and top-k sampling.

Also reports the memory floor: at these batch sizes a decoding step is bound by memory bandwidth, since
it reads every decoder weight, the logits layer and the whole KV cache to emit one token per row. The
floor is the tokens/s of an implementation that moves only those bytes at this machine's measured read
bandwidth (encoder time excluded): no implementation of the same step decodes faster.
"""

import common
import jax
import jax.numpy as jnp
import torch
from flax import nnx

from tinythinker_jax.models import decoding

TOP_K = 50  # transformers' default for sampling


def read_bandwidth(num_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes/s read by a sum over a float32 array far larger than the caches."""
    x = jnp.ones(num_bytes // 4, jnp.float32)
    total = jax.jit(jnp.sum)
    return num_bytes * common.calls_per_second(lambda: total(x), repeats)


def bytes_per_step(model, batch_size: int, input_length: int, decode_length: int) -> int:
    """What one decoding step must read: decoder weights, the logits layer, the cross-attention keys and
    values, and (on average over the steps) half of the self-attention cache."""
    config = model.config
    itemsize = config.compute_dtype.itemsize
    params = nnx.state(model, nnx.Param)
    weights = sum(x.size for x in jax.tree.leaves(params["decoder"])) + config.vocab_size * config.d_model
    per_position = 2 * config.num_decoder_layers * config.num_heads * config.d_kv  # keys and values
    cache = batch_size * per_position * (input_length + decode_length / 2)
    return int((weights + cache) * itemsize)


def main() -> None:
    parser = common.parser(__doc__, "decode.json")
    parser.add_argument("--profile", help="also write a jax.profiler trace of one greedy call to this directory")
    args = parser.parse_args()
    model, reference, device = common.models(args.config, args.dtype, args.seed, scan_layers=args.scan_layers)
    inputs, _ = common.token_batches(args)
    input_lists, torch_inputs = inputs.tolist(), torch.tensor(inputs, device=device)

    def ours(sampling):
        # No token id is -1: every row decodes the whole length.
        decoding.generate(model, input_lists, max_decode_length=args.decode_length, sampling=sampling,
                          batch_size=args.batch_size, eos_id=-1, max_input_length=args.input_length)

    def theirs(**sampling):
        with torch.no_grad():
            out = reference.generate(input_ids=torch_inputs, max_new_tokens=args.decode_length, **sampling)
        assert out.shape[1] == args.decode_length + 1

    cases = {
        "greedy": (lambda: ours(decoding.SamplingConfig()), lambda: theirs(do_sample=False)),
        "sampled": (lambda: ours(decoding.SamplingConfig(temperature=1.0, top_k=TOP_K)),
                    lambda: theirs(do_sample=True, temperature=1.0, top_k=TOP_K)),
    }
    results = common.compare(cases, args.batch_size * args.decode_length, args.repeats)
    if args.profile:
        with jax.profiler.trace(args.profile, create_perfetto_trace=True):
            cases["greedy"][0]()
    bandwidth = read_bandwidth()
    step_bytes = bytes_per_step(model, args.batch_size, args.input_length, args.decode_length)
    results["memory_floor"] = {"read_bandwidth_gb_per_s": bandwidth / 1e9, "bytes_per_step": step_bytes,
                               "tokens_per_s": args.batch_size * bandwidth / step_bytes}
    print(f"memory floor {results['memory_floor']['tokens_per_s']:9.1f} tok/s ({step_bytes / 1e6:.0f} MB per step"
          f" at {bandwidth / 1e9:.1f} GB/s)")
    common.write_report(args, device, results)


if __name__ == "__main__":
    main()
