"""Decoding and scoring throughput of the Flax T5 against PyTorch `transformers`, on the same random weights.

    python benchmarks/decode_speed.py [--config t5_1_0_small --batch_size 16 --input_length 200 \
        --decode_length 128 --out decode_speed.json]

TinyThinker's shapes by default: inputs of 200 tokens, 128 generated. Both sides decode the full length
(EOS disabled) so they do the same work. Reports tokens/s for greedy decoding, sampling and scoring (a
teacher-forced forward pass summing target log-likelihoods), and our/reference ratios; writes them as JSON.
Runs unchanged on a GPU (both frameworks pick it up).
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("USE_TF", "0")

import jax
import numpy as np
import torch
import transformers
from flax import nnx

from tinythinker_jax.models import decoding, hf_convert, scoring, t5

TOP_K = 50  # transformers' default for sampling


def _best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _models(config_name: str, dtype: str, seed: int):
    config = t5.model_config(config_name, dropout_rate=0.0, dtype=dtype)
    hf_config = transformers.T5Config(**{**hf_convert.config_to_hf(config), "eos_token_id": None})
    torch.manual_seed(seed)
    reference = transformers.T5ForConditionalGeneration(hf_config).eval()
    tensors = {name: tensor.float().numpy() for name, tensor in reference.state_dict().items()}
    graphdef, state = nnx.split(t5.abstract_model(config))
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, hf_convert.params_from_hf(tensors, config)))
    if dtype == "bfloat16":
        reference = reference.to(torch.bfloat16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return nnx.merge(graphdef, state), reference.to(device), device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="t5_1_0_small")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--input_length", type=int, default=200)
    parser.add_argument("--decode_length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="decode_speed.json")
    args = parser.parse_args()

    model, reference, device = _models(args.config, args.dtype, args.seed)
    rng = np.random.RandomState(args.seed)
    inputs = rng.randint(3, 32000, (args.batch_size, args.input_length))
    targets = rng.randint(3, 32000, (args.batch_size, args.decode_length))
    input_lists, target_lists = inputs.tolist(), targets.tolist()
    torch_inputs = torch.tensor(inputs, device=device)
    torch_targets = torch.tensor(targets, device=device)
    generated_tokens = args.batch_size * args.decode_length
    results = {}

    def ours_decode(sampling):
        # No token id is -1: every row decodes the whole length.
        decoding.generate(
            model, input_lists, max_decode_length=args.decode_length, sampling=sampling,
            batch_size=args.batch_size, eos_id=-1,
        )

    def reference_decode(**sampling):
        with torch.no_grad():
            out = reference.generate(input_ids=torch_inputs, max_new_tokens=args.decode_length, **sampling)
        assert out.shape[1] == args.decode_length + 1

    def ours_score():
        scoring.score(model, input_lists, target_lists, batch_size=args.batch_size)

    def reference_score():
        with torch.no_grad():
            logits = reference(input_ids=torch_inputs, labels=torch_targets).logits.float()
            torch.log_softmax(logits, -1).gather(-1, torch_targets[..., None]).sum().item()

    cases = {
        "greedy": (
            lambda: ours_decode(decoding.SamplingConfig()),
            lambda: reference_decode(do_sample=False),
        ),
        "sampled": (
            lambda: ours_decode(decoding.SamplingConfig(temperature=1.0, top_k=TOP_K)),
            lambda: reference_decode(do_sample=True, temperature=1.0, top_k=TOP_K),
        ),
        "score": (ours_score, reference_score),
    }
    for name, (ours, theirs) in cases.items():
        ours()  # compile
        theirs()  # warm up
        ours_s, theirs_s = _best_time(ours, args.repeats), _best_time(theirs, args.repeats)
        results[name] = {
            "ours_tokens_per_s": generated_tokens / ours_s,
            "reference_tokens_per_s": generated_tokens / theirs_s,
            "speedup": theirs_s / ours_s,
        }
        print(f"{name:8s} ours {generated_tokens / ours_s:9.1f} tok/s   reference {generated_tokens / theirs_s:9.1f}"
              f" tok/s   speedup x{theirs_s / ours_s:.2f}", flush=True)

    report = {
        "settings": vars(args),
        "jax_device": str(jax.devices()[0]),
        "torch_device": device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "results": results,
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
