"""What the benchmark scripts share: the same random T5 in Flax and in PyTorch `transformers`, the inputs,
the timing and the JSON report. Runs unchanged on a GPU (both frameworks pick it up)."""

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

from tinythinker_jax.models import hf_convert, t5


def parser(description: str, out: str, scan_option: bool = True) -> argparse.ArgumentParser:
    """TinyThinker's generation shapes by default: inputs of 200 tokens, 128 generated; `--scan_layers` unless
    the benchmark compares both layouts itself."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="t5_1_0_small")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--input_length", type=int, default=200)
    p.add_argument("--decode_length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    if scan_option:
        p.add_argument("--scan_layers", action="store_true", help="our model scans over its stacked layers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=out)
    return p


def models(config_name: str, dtype: str, seed: int, dropout_rate: float = 0.0, scan_layers: bool = False):
    """Our model and the reference with identical random weights (EOS disabled on the reference); dropout,
    where a benchmark trains, at the same rate on both; our layers stacked for a scan with `scan_layers`."""
    config = t5.model_config(config_name, dropout_rate=dropout_rate, dtype=dtype)
    hf_config = transformers.T5Config(**{**hf_convert.config_to_hf(config), "eos_token_id": None})
    torch.manual_seed(seed)
    reference = transformers.T5ForConditionalGeneration(hf_config).eval()
    tensors = {name: tensor.float().numpy() for name, tensor in reference.state_dict().items()}
    graphdef, state = nnx.split(t5.abstract_model(config))
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, hf_convert.params_from_hf(tensors, config)))
    if dtype == "bfloat16":
        reference = reference.to(torch.bfloat16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return t5.with_scan_layers(nnx.merge(graphdef, state), scan_layers), reference.to(device), device


def token_batches(args):
    rng = np.random.RandomState(args.seed)
    inputs = rng.randint(3, 32000, (args.batch_size, args.input_length))
    targets = rng.randint(3, 32000, (args.batch_size, args.decode_length))
    return inputs, targets


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def calls_per_second(call, repeats: int) -> float:
    """Rate of a jitted `call`, about 0.2 s of calls per timing. On an accelerator they are dispatched back
    to back, which hides launch and synchronisation latency, and only the last is waited for (one stream
    runs them in order); on a CPU each is waited for, since independent calls would share the cores."""
    pipelined = jax.default_backend() != "cpu"

    def calls(count: int):
        def run():
            for _ in range(count):
                result = call()
                if not pipelined:
                    jax.block_until_ready(result)
            jax.block_until_ready(result)
        return run

    count = max(1, round(0.2 / best_time(calls(1), 2)))
    return count / best_time(calls(count), repeats)


def compare(cases: dict, tokens: int, repeats: int, unit: str = "tok") -> dict:
    """Tokens (or other `unit`s) per second of ours and the reference for each case, after one
    compile/warm-up call each; the result keys say tokens whatever the unit."""
    results = {}
    for name, (ours, theirs) in cases.items():
        ours()
        theirs()
        ours_s, theirs_s = best_time(ours, repeats), best_time(theirs, repeats)
        results[name] = {"ours_tokens_per_s": tokens / ours_s, "reference_tokens_per_s": tokens / theirs_s,
                         "speedup": theirs_s / ours_s}
        print(f"{name:8s} ours {tokens / ours_s:9.1f} {unit}/s   reference {tokens / theirs_s:9.1f}"
              f" {unit}/s   speedup x{theirs_s / ours_s:.2f}", flush=True)
    return results


def write_report(args, device: str, results: dict) -> None:
    report = {
        "settings": vars(args), "jax_device": str(jax.devices()[0]), "torch_device": device,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "results": results,
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")
