#!/usr/bin/env bash
# Runs tinythinker SFT (or the pipeline) on this machine's CPU, e.g. on the toy world. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh [FLAGS] [-- TINYTHINKER_ARGS...]

  --command CMD          tinythinker subcommand: train (default) or pipeline
  --experiment NAME      gin/experiments/NAME.gin (default: toyworld_yesno_t5_mini_sft, or
                         toyworld_yesno_t5_mini_pipeline with --command pipeline)
  --model_dir DIR        MODEL_DIR (default: out/EXPERIMENT in the repository)
  --install              first pip install the project into the current Python environment
  --dry_run              print every command, one per line after "+ ", and run none
  -h, --help             this help

Everything after -- goes to the tinythinker command, e.g. -- --gin.TRAIN_STEPS=10. Rerunning the same command
resumes from MODEL_DIR. The toy world is generated on first use.
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COMMAND=train
EXPERIMENT=
MODEL_DIR=
INSTALL=0
DRY_RUN=0
EXTRA=()

die() { echo "local.sh: $*" >&2; exit 2; }
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
    --install) INSTALL=1; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

case $COMMAND in
  pipeline) RUN_GIN=gin/runs/pipeline.gin; EXPERIMENT=${EXPERIMENT:-toyworld_yesno_t5_mini_pipeline} ;;
  train) RUN_GIN=gin/runs/sft.gin; EXPERIMENT=${EXPERIMENT:-toyworld_yesno_t5_mini_sft} ;;
  *) die "--command must be pipeline or train, not $COMMAND" ;;
esac
MODEL_DIR=${MODEL_DIR:-$ROOT/out/$EXPERIMENT}
# Relative to where the user stands (the run happens in the repository root), and Orbax wants absolute paths.
[[ $MODEL_DIR == /* || $MODEL_DIR == *://* ]] || MODEL_DIR=$PWD/$MODEL_DIR

run cd "$ROOT"  # the gin files' paths are relative to the repository root
[[ $INSTALL == 0 ]] || run python3 -m pip install -e .
# JAX_PLATFORMS=cpu: the same run on a machine that also has an accelerator stays off it.
run env JAX_PLATFORMS=cpu tinythinker "$COMMAND" --gin_file="$RUN_GIN" --gin_file="gin/experiments/$EXPERIMENT.gin" \
  --gin.MODEL_DIR="\"$MODEL_DIR\"" ${EXTRA[@]+"${EXTRA[@]}"}
