# shellcheck shell=bash
# What launch/tpu_vm.sh, launch/gpu.sh and launch/local.sh share: messages, the flags they all take, and the plan's
# printing and running. Sourced, not run. A script that sources it defines
#   usage       prints its --help
#   own_flag    takes one of its own flags from "$@" ($1 is the flag, $2 its value) and sets TOOK to the number of
#               words it used: 1 or 2, or 0 when $1 is not one of its flags
# then calls parse_args "$@" and resolve_command.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT=$(basename "$0")
COMMAND=pipeline
EXPERIMENT=
MODEL_DIR=
DRY_RUN=0
EXTRA=()
TOOK=0

die() { echo "$SCRIPT: $*" >&2; exit 2; }
say() { echo "$SCRIPT: $*" >&2; }
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

# Plan lines go to fd 3 (stdout), so that $(...) captures only what a command itself prints.
exec 3>&1
show() { echo "+ $*" >&3; }
run() {
  show "$(quote "$@")"
  [[ $DRY_RUN == 1 ]] || "$@"
}

# --flag value or --flag=value; the flags every script takes here, the others through own_flag.
parse_args() {
  while [[ $# -gt 0 ]]; do
    if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
    case $1 in
      --command) COMMAND=$(value "$@"); shift 2 ;;
      --experiment) EXPERIMENT=$(value "$@"); shift 2 ;;
      --model_dir) MODEL_DIR=$(value "$@"); shift 2 ;;
      --dry_run) DRY_RUN=1; shift ;;
      -h | --help) usage; exit 0 ;;
      --) shift; EXTRA=("$@"); break ;;
      *)
        own_flag "$@"
        [[ $TOOK -gt 0 ]] || die "unknown argument: $1 (see --help)"
        shift "$TOOK"
        ;;
    esac
  done
}

# Sets RUN_GIN, GIN_FILES and EXPERIMENT, which defaults to $1 for pipeline and reflect and to $2 for train.
resolve_command() {
  case $COMMAND in
    pipeline) RUN_GIN=gin/runs/pipeline.gin; EXPERIMENT=${EXPERIMENT:-$1} ;;
    reflect) RUN_GIN=gin/runs/reflect.gin; EXPERIMENT=${EXPERIMENT:-$1} ;;
    train) RUN_GIN=gin/runs/sft.gin; EXPERIMENT=${EXPERIMENT:-$2} ;;
    *) die "--command must be pipeline, train or reflect, not $COMMAND" ;;
  esac
  GIN_FILES=(--gin_file="$RUN_GIN" --gin_file="gin/experiments/$EXPERIMENT.gin")
}

# gpu.sh and local.sh: MODEL_DIR on this machine, out/EXPERIMENT in the repository unless given. The code writes it
# with Python's open and os, so it must be a local path or a mounted filesystem (e.g. gcsfuse at /gcs/BUCKET).
local_model_dir() {
  MODEL_DIR=${MODEL_DIR:-$ROOT/out/$EXPERIMENT}
  if [[ $MODEL_DIR == *://* ]]; then
    die "--model_dir must be a local path or a mounted filesystem, not $MODEL_DIR (gs:// URLs are not supported" \
      "yet: mount the bucket, e.g. gcsfuse --implicit-dirs BUCKET /gcs/BUCKET, and pass /gcs/BUCKET/...)"
  fi
  # Relative to where the user stands (the run happens in the repository root), and Orbax wants absolute paths.
  [[ $MODEL_DIR == /* ]] || MODEL_DIR=$PWD/$MODEL_DIR
}

# gpu.sh and local.sh: the command on this machine, with the environment assignments given, from the repository
# root (the gin files' paths are relative to it; run `run cd "$ROOT"` first).
run_here() {
  run env "$@" tinythinker "$COMMAND" "${GIN_FILES[@]}" --gin.MODEL_DIR="\"$MODEL_DIR\"" ${EXTRA[@]+"${EXTRA[@]}"}
}
