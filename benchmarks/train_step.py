"""Training throughput of one SFT step (forward, backward, AdamW) against the same step in PyTorch
`transformers`, on the same random weights and batch.

    python benchmarks/train_step.py [--config t5_1_0_small --batch_size 64 --input_length 200 \
        --decode_length 64 --out train_step.json]

Reports examples/s and tokens/s (input + target tokens) of both and their ratio; on a GPU also our
model FLOPs utilisation (the matrix products' FLOPs, attention included, as PaLM counts them) against the
chip's dense bf16 peak. Everywhere it also reports the compute floor: the tokens/s of a step doing nothing but
those model FLOPs at the best matrix-multiply rate measured here, which no implementation exceeds.
"""

import common
import flops as flops_count
import jax
import numpy as np
import torch
from flax import nnx

from tinythinker_jax import partitioning
from tinythinker_jax.models import scoring
from tinythinker_jax.phases import optimizers
from tinythinker_jax.phases.step import make_train_step
from tinythinker_jax.training import losses

# Dense bf16 peak FLOP/s by `device_kind` prefix.
PEAK_FLOPS = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5": 459e12}


def matmul_rate(config, rows: int, repeats: int = 3) -> float:
    """FLOP/s of the feed-forward layer's input product at this batch, in the compute dtype, on random data."""
    a = jax.random.normal(jax.random.key(1), (rows, config.d_model), config.compute_dtype)
    b = jax.random.normal(jax.random.key(2), (config.d_model, config.d_ff), config.compute_dtype)
    product = jax.jit(lambda a, b: a @ b)
    return 2 * rows * config.d_model * config.d_ff * common.calls_per_second(lambda: product(a, b), repeats)


def main() -> None:
    parser = common.parser(__doc__, "train_step.json")
    parser.add_argument("--steps", type=int, default=1,
                        help="steps per timed call, synchronised once at the end (on a GPU, 10 hides dispatch)")
    parser.add_argument("--profile", help="also write a jax.profiler trace of one timed call to this directory")
    parser.set_defaults(batch_size=64, decode_length=64, repeats=3)
    args = parser.parse_args()
    # SFT's dropout (T5's 0.1) on both sides: the step as phase 1 runs it.
    model, reference, device = common.models(args.config, args.dtype, args.seed, dropout_rate=0.1,
                                             scan_layers=args.scan_layers)
    inputs, targets = common.token_batches(args)
    weights = np.ones_like(targets)
    batch = {"encoder_input_tokens": inputs,
             "decoder_input_tokens": np.asarray(scoring.shift_right(targets.astype(np.int32))),
             "decoder_target_tokens": targets, "decoder_loss_weights": weights}
    batch = {k: np.asarray(v, np.int32) for k, v in batch.items()}

    mesh = partitioning.create_mesh()
    rules = partitioning.standard_logical_axis_rules()
    optimizer = optimizers.create_optimizer(1000)
    with partitioning.activate(mesh, rules):
        # Placed as the trainer places them, so the first step's output matches its input and nothing recompiles.
        graphdef, params, rest = nnx.split(partitioning.shard_model(model, mesh, rules), nnx.Param, ...)
        opt_state = jax.jit(optimizer.transform.init)(params)
        train_step = make_train_step(graphdef, rest, optimizer.transform, losses.sft_loss)
        batch_arrays = partitioning.global_batch(batch, mesh, rules)
        rng = jax.random.key(0)
        state = {"params": params, "opt_state": opt_state, "step": 0}

        def ours():
            # Dispatch runs ahead of the device, as in the trainer, which fetches metrics every `log_every` steps.
            for _ in range(args.steps):
                state["params"], state["opt_state"], values = train_step(
                    state["params"], state["opt_state"], batch_arrays, state["step"], rng)
                state["step"] += 1
            jax.block_until_ready(values)

        reference.train()
        torch_optimizer = torch.optim.AdamW(reference.parameters(), lr=5e-4, weight_decay=0.0)
        torch_inputs = torch.tensor(inputs, device=device)
        torch_targets = torch.tensor(targets, device=device)

        def theirs():
            for _ in range(args.steps):
                torch_optimizer.zero_grad()
                reference(input_ids=torch_inputs, labels=torch_targets).loss.backward()
                torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
                torch_optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()

        tokens = args.steps * args.batch_size * (args.input_length + args.decode_length)
        results = common.compare({"train_step": (ours, theirs)}, tokens, args.repeats)
        if args.profile:
            with jax.profiler.trace(args.profile, create_perfetto_trace=True):
                ours()
        step = results["train_step"]
        step["ours_examples_per_s"] = step["ours_tokens_per_s"] / (args.input_length + args.decode_length)
        step["reference_examples_per_s"] = step["reference_tokens_per_s"] / (args.input_length + args.decode_length)
        flops = flops_count.train_flops(flops_count.parameter_groups(model.config), args.input_length,
                                        args.decode_length)
        rate = matmul_rate(model.config, args.batch_size * args.input_length)
        results["compute_floor"] = {"matmul_flops_per_s": rate, "model_flops_per_example": flops,
                                    "tokens_per_s": rate / flops * (args.input_length + args.decode_length)}
        print(f"compute floor {results['compute_floor']['tokens_per_s']:9.1f} tok/s ({flops / 1e9:.1f} GFLOP"
              f" per example at {rate / 1e9:.0f} GFLOP/s)")
        kind = jax.devices()[0].device_kind
        peak = next((flops for prefix, flops in PEAK_FLOPS.items() if kind.startswith(prefix)), None)
        if peak:
            step["ours_mfu"] = flops * step["ours_examples_per_s"] / peak
            print(f"MFU {step['ours_mfu']:.1%} of {kind}'s {peak / 1e12:.0f} TFLOP/s")
    common.write_report(args, device, results)


if __name__ == "__main__":
    main()
