#!/usr/bin/env bash
# Runs a tinythinker pipeline (or SFT) on this machine's GPUs: one process that sees every GPU. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [FLAGS] [-- TINYTHINKER_ARGS...]

  --command CMD          tinythinker subcommand: pipeline (default) or train
  --experiment NAME      gin/experiments/NAME.gin (default: csqa_t5_base_pipeline, or csqa_t5_base_sft with
                         --command train)
  --model_dir DIR        MODEL_DIR, local or gs:// (default: out/EXPERIMENT in the repository)
  --gpus LIST            CUDA_VISIBLE_DEVICES, e.g. 0,1 (default: every GPU)
  --mem_fraction F       XLA_PYTHON_CLIENT_MEM_FRACTION: share of each GPU's memory JAX takes (default: 0.9)
  --install              first pip install the project with jax[cudaN] into the current Python environment
  --cuda N               the CUDA major version of jax[cudaN] for --install: 12 (default) or 13
  --dry_run              print every command, one per line after "+ ", and run none
  -h, --help             this help

Everything after -- goes to the tinythinker command, e.g. -- --gin.TRAIN_STEPS=10. Rerunning the same command
resumes from MODEL_DIR.
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COMMAND=pipeline
EXPERIMENT=
MODEL_DIR=
GPUS=
MEM_FRACTION=0.9
INSTALL=0
CUDA=12
DRY_RUN=0
EXTRA=()

die() { echo "gpu.sh: $*" >&2; exit 2; }
value() { [[ $# -ge 2 ]] || die "$1 needs a value"; echo "$2"; }

# One shell-safe line, so that a printed plan can be pasted and run as it is.
quote() {
  local word out=() plain='^[A-Za-z0-9_./:=@%+,-]+$' dquoted='^[A-Za-z0-9_./:=@%+,"-]+$'
  local flag="^(--[A-Za-z0-9_.-]+=)([^']*)$"
  for word in "$@"; do
    if [[ $word =~ $plain ]]; then
      out+=("$word")
    elif [[ $word =~ $dquoted ]]; then  # gin strings: --gin.MODEL_DIR=\"out/x\", as the README writes them
      out+=("${word//\"/\\\"}")
    elif [[ $word =~ $flag ]]; then
      out+=("${BASH_REMATCH[1]}'${BASH_REMATCH[2]}'")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

run() {
  echo "+ $(quote "$@")"
  [[ $DRY_RUN == 1 ]] || "$@"
}

while [[ $# -gt 0 ]]; do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    --command) COMMAND=$(value "$@"); shift 2 ;;
    --experiment) EXPERIMENT=$(value "$@"); shift 2 ;;
    --model_dir) MODEL_DIR=$(value "$@"); shift 2 ;;
    --gpus) GPUS=$(value "$@"); shift 2 ;;
    --mem_fraction) MEM_FRACTION=$(value "$@"); shift 2 ;;
    --install) INSTALL=1; shift ;;
    --cuda) CUDA=$(value "$@"); shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

case $COMMAND in
  pipeline) RUN_GIN=gin/runs/pipeline.gin; EXPERIMENT=${EXPERIMENT:-csqa_t5_base_pipeline} ;;
  train) RUN_GIN=gin/runs/sft.gin; EXPERIMENT=${EXPERIMENT:-csqa_t5_base_sft} ;;
  *) die "--command must be pipeline or train, not $COMMAND" ;;
esac
MODEL_DIR=${MODEL_DIR:-$ROOT/out/$EXPERIMENT}
# Relative to where the user stands (the run happens in the repository root), and Orbax wants absolute paths.
[[ $MODEL_DIR == /* || $MODEL_DIR == *://* ]] || MODEL_DIR=$PWD/$MODEL_DIR

# JAX_PLATFORMS=cuda: a broken CUDA install stops the run instead of training on the CPU for days.
# One process owns every GPU (the input pipeline keeps TensorFlow off them), so JAX may take most of the memory.
ENV=(JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION")
[[ -z $GPUS ]] || ENV+=(CUDA_VISIBLE_DEVICES="$GPUS")

run cd "$ROOT"  # the gin files' paths are relative to the repository root
# pip resolves jax[cudaN] at the version setup.py pins.
[[ $INSTALL == 0 ]] || run python3 -m pip install -e . "jax[cuda$CUDA]"
run env "${ENV[@]}" tinythinker "$COMMAND" --gin_file="$RUN_GIN" --gin_file="gin/experiments/$EXPERIMENT.gin" \
  --gin.MODEL_DIR="\"$MODEL_DIR\"" ${EXTRA[@]+"${EXTRA[@]}"}
