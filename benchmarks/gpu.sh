#!/usr/bin/env bash
# The benchmarks as run on one GPU, bf16 compute with fp32 parameters, in order of what they decide:
# the t5-base SFT step's MFU first, then decoding, self-reflection's chains and scoring at TinyThinker's shapes.
#
#   [TINYTHINKER_VOCAB=t5_spiece.model] benchmarks/gpu.sh [OUT_DIR]   # one JSON report per run in OUT_DIR
#
# They need only jax, flax, optax, orbax, sentencepiece, torch and transformers: no seqio or TensorFlow.
set -uo pipefail
out=$(realpath "${1:-.}")
cd "$(dirname "$0")" || exit 2
# The package from this checkout, installed or not.
root=$(cd .. && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# JAX takes 75% of the GPU's memory by default; the PyTorch reference runs in the same process.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 USE_TF=0 PYTHONUNBUFFERED=1
failed=0

run() {
  local name=$1
  shift
  echo "== $name: $*"
  timeout 300 python3 "$@" --dtype bfloat16 --out "$out/$name.json" || { echo "!! $name failed"; failed=1; }
}

run train_step_base_b64 train_step.py --config t5_1_0_base --steps 10 --profile "$out/trace_base_b64"
run decode_small_b16 decode.py --config t5_1_0_small
run reflect_small reflect.py --config t5_1_0_small
run reflect_small_16x10 reflect.py --config t5_1_0_small --questions 16 --num_samples 10
run train_step_base_b128 train_step.py --config t5_1_0_base --batch_size 128 --steps 10
run score_small_b16 score.py --config t5_1_0_small
run decode_small_b64 decode.py --config t5_1_0_small --batch_size 64
run train_step_small_b64 train_step.py --config t5_1_0_small --steps 10
# Issue 21: the large end. Compile and step time unrolled vs scanned, the planner against the device's peak, a
# scanned t5-large step against PyTorch, the planner's estimate for a real t5-3B step (no PyTorch copy).
run scan_large_b32 scan_layers.py --config t5_1_0_large --batch_size 32 --steps 5
run plan_accuracy_base_b64 plan_accuracy.py --config t5_1_0_base --batch_size 64 --input_length 384 --decode_length 128
run plan_accuracy_large_scan_full plan_accuracy.py --config t5_1_0_large --batch_size 64 --input_length 384 \
  --decode_length 128 --scan_layers --remat full
run train_step_large_scan_b32 train_step.py --config t5_1_0_large --batch_size 32 --steps 5 --scan_layers
run plan_accuracy_3b_scan_full plan_accuracy.py --config t5_1_0_3b --batch_size 16 --input_length 384 \
  --decode_length 128 --scan_layers --remat full
run decode_base_b64_scan decode.py --config t5_1_0_base --batch_size 64 --scan_layers
exit $failed
