#!/usr/bin/env bash
# Runs a tinythinker pipeline (or SFT) on this machine's GPUs: one process that sees every GPU. See launch/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=launch/common.sh  # followed with shellcheck -x
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [FLAGS] [-- TINYTHINKER_ARGS...]

  --command CMD          tinythinker subcommand: pipeline (default), train (SFT alone) or reflect (one
                         self-reflection iteration: -- --gin.ITERATION=i)
  --experiment NAME      gin/experiments/NAME.gin (default: csqa_t5_base_sft)
  --model_dir DIR        MODEL_DIR: a local path or a mounted filesystem, e.g. gcsfuse at /gcs/BUCKET; gs:// URLs
                         are not supported yet (default: out/EXPERIMENT in the repository)
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

GPUS=
MEM_FRACTION=0.9
INSTALL=0
CUDA=12

own_flag() {
  TOOK=2
  case $1 in
    --gpus) GPUS=$(value "$@") ;;
    --mem_fraction) MEM_FRACTION=$(value "$@") ;;
    --install) INSTALL=1; TOOK=1 ;;
    --cuda) CUDA=$(value "$@") ;;
    *) TOOK=0 ;;
  esac
}

parse_args "$@"
resolve_command csqa_t5_base_sft csqa_t5_base_sft
local_model_dir

# JAX_PLATFORMS=cuda: a broken CUDA install stops the run instead of training on the CPU for days.
# One process owns every GPU (the input pipeline keeps TensorFlow off them), so JAX may take most of the memory.
ENV=(JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION")
[[ -z $GPUS ]] || ENV+=(CUDA_VISIBLE_DEVICES="$GPUS")

run cd "$ROOT"
# pip resolves jax[cudaN] at the version pyproject.toml pins.
[[ $INSTALL == 0 ]] || run python3 -m pip install -e . "jax[cuda$CUDA]"
run_here "${ENV[@]}"
