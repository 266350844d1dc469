#!/usr/bin/env bash
# Runs a tinythinker pipeline (or SFT) on a Cloud TPU VM or slice. See launch/README.md.
# shellcheck disable=SC2016  # the remote commands' $HOME is the worker's: it must expand there, not here
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [STEP] [FLAGS] [-- TINYTHINKER_ARGS...]

Steps:
  up       (default) create, setup, run
  create   create the TPU VM or slice
  setup    copy or clone the project onto every worker, install it, fetch --data and --checkpoint
  run      run the tinythinker command on every worker (one process per worker)
  resume   up, repeated: a preempted TPU is deleted, recreated and set up again, and the same
           command reruns (it resumes from MODEL_DIR); stops when the command succeeds, or when it
           fails on a TPU that was not preempted
  delete   delete the TPU VM or slice

TPU flags:
  --name NAME               TPU name (default: tinythinker)
  --zone ZONE               (default: us-central2-b)
  --project PROJECT         (default: gcloud's configured project)
  --accelerator_type TYPE   e.g. v4-8, v4-32, v5litepod-8, v6e-8 (default: v4-8)
  --version VERSION         TPU software version (default: chosen from the accelerator type)
  --spot                    a Spot TPU: cheap, can be preempted at any time
  --preemptible             a legacy preemptible TPU (use --spot where possible)
Project flags:
  --repo URL                clone this repository on the workers (default: copy this checkout,
                            with uncommitted changes, from this machine)
  --ref REF                 branch, tag or commit to check out with --repo (default: the remote's HEAD)
  --data GCS_DIR            sync this data root (e.g. gs://BUCKET/data holding csqa/) to every worker
                            and point TINYTHINKER_DATA_ROOT at it
  --checkpoint GCS_DIR      sync this converted checkpoint to every worker and pass it as
                            INITIAL_CHECKPOINT_PATH
Command flags:
  --command CMD             tinythinker subcommand: pipeline (default) or train
  --experiment NAME         gin/experiments/NAME.gin (default: csqa_t5_base_pipeline, or
                            csqa_t5_base_sft with --command train)
  --model_dir GCS_DIR       MODEL_DIR, required by run, up and resume; on GCS, so that it outlives the VM
Other flags:
  --max_attempts N          resume: give up after N attempts (default: 50)
  --wait SECONDS            resume: pause between attempts and state checks (default: 60)
  --dry_run                 print every command, one per line after "+ ", and run none
  -h, --help                this help

Everything after -- goes to the tinythinker command, e.g. -- --gin.TRAIN_STEPS=10.
Example:
  launch/tpu_vm.sh up --spot --model_dir gs://BUCKET/runs/csqa_t5_base \
    --data gs://BUCKET/data --checkpoint gs://BUCKET/ckpt/t5-base --dry_run
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REMOTE_DIR='$HOME/tinythinker-jax'
STEP=up
NAME=tinythinker
ZONE=us-central2-b
PROJECT=
ACCELERATOR_TYPE=v4-8
VERSION=
CAPACITY=
REPO=
REF=HEAD
DATA=
CHECKPOINT=
COMMAND=pipeline
EXPERIMENT=
MODEL_DIR=
MAX_ATTEMPTS=50
WAIT=60
DRY_RUN=0
EXTRA=()

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }
say() { echo "tpu_vm.sh: $*" >&2; }
value() { [[ $# -ge 2 ]] || die "$1 needs a value"; echo "$2"; }

# One shell-safe line, so that a printed plan can be pasted and run as it is.
quote() {
  local word out=() plain='^[A-Za-z0-9_./:=@%+,-]+$' dquoted='^[A-Za-z0-9_./:=@%+,"-]+$'
  local flag="^(--[A-Za-z0-9_.-]+=)([^']*)$"
  for word in "$@"; do
    if [[ $word =~ $plain ]]; then
      out+=("$word")
    elif [[ $word =~ $dquoted ]]; then  # gin strings: --gin.MODEL_DIR=\"gs://b/d\", as the README writes them
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

while [[ $# -gt 0 ]]; do
  if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case $1 in
    up | create | setup | run | resume | delete) STEP=$1; shift ;;
    --name) NAME=$(value "$@"); shift 2 ;;
    --zone) ZONE=$(value "$@"); shift 2 ;;
    --project) PROJECT=$(value "$@"); shift 2 ;;
    --accelerator_type) ACCELERATOR_TYPE=$(value "$@"); shift 2 ;;
    --version) VERSION=$(value "$@"); shift 2 ;;
    --spot) CAPACITY=--spot; shift ;;
    --preemptible) CAPACITY=--preemptible; shift ;;
    --repo) REPO=$(value "$@"); shift 2 ;;
    --ref) REF=$(value "$@"); shift 2 ;;
    --data) DATA=$(value "$@"); shift 2 ;;
    --checkpoint) CHECKPOINT=$(value "$@"); shift 2 ;;
    --command) COMMAND=$(value "$@"); shift 2 ;;
    --experiment) EXPERIMENT=$(value "$@"); shift 2 ;;
    --model_dir) MODEL_DIR=$(value "$@"); shift 2 ;;
    --max_attempts) MAX_ATTEMPTS=$(value "$@"); shift 2 ;;
    --wait) WAIT=$(value "$@"); shift 2 ;;
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
if [[ -z $VERSION ]]; then
  case $ACCELERATOR_TYPE in
    v5litepod-* | v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) VERSION=tpu-ubuntu2204-base ;;
  esac
fi
if [[ $STEP == up || $STEP == run || $STEP == resume ]]; then
  # A recreated VM starts blank: only GCS keeps checkpoints across preemptions, and every worker must see them.
  [[ $MODEL_DIR == gs://* ]] || die "$STEP needs --model_dir gs://BUCKET/DIR"
fi
if [[ -z $REPO && $STEP =~ ^(up|run|resume)$ ]]; then
  for gin in "$RUN_GIN" "gin/experiments/$EXPERIMENT.gin"; do
    # Fail here, before a TPU is paid for, rather than on the workers.
    if [[ ! -f $ROOT/$gin ]]; then
      if [[ $DRY_RUN == 1 ]]; then say "warning: $ROOT/$gin does not exist"; else die "$ROOT/$gin does not exist"; fi
    fi
  done
fi

TPU=(gcloud compute tpus tpu-vm)
LOCATION=(--zone="$ZONE")
[[ -z $PROJECT ]] || LOCATION+=(--project="$PROJECT")

create() {
  run "${TPU[@]}" create "$NAME" "${LOCATION[@]}" --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION" \
    ${CAPACITY:+"$CAPACITY"}
}

delete() { run "${TPU[@]}" delete "$NAME" "${LOCATION[@]}" --quiet; }

on_workers() { run "${TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=all --command="$1"; }

# Prints READY, PREEMPTED, CREATING, ... or nothing when the TPU does not exist.
state() {
  local describe=("${TPU[@]}" describe "$NAME" "${LOCATION[@]}" --format='value(state)')
  show "$(quote "${describe[@]}")"
  [[ $DRY_RUN == 1 ]] || "${describe[@]}" 2>/dev/null || true
}

# Functions called from `if` or `||` run without errexit, hence the explicit `|| return`.
setup() {
  local fetch install sync=''
  if [[ -n $REPO ]]; then
    fetch="( [ -d $REMOTE_DIR/.git ] || git clone --quiet $(quote "$REPO") $REMOTE_DIR ) && cd $REMOTE_DIR"
    fetch+=" && git fetch --quiet origin $(quote "$REF") && git checkout --quiet --detach FETCH_HEAD"
  else
    local tarball=${TMPDIR:-/tmp}/tinythinker-jax-$NAME.tar.gz
    # Tracked and untracked files, without what .gitignore names (virtual environments, builds, outputs).
    show "git -C $(quote "$ROOT") ls-files -z --cached --others --exclude-standard | tar -C $(quote "$ROOT") --null -T - -czf $(quote "$tarball")"
    if [[ $DRY_RUN == 0 ]]; then
      git -C "$ROOT" ls-files -z --cached --others --exclude-standard | tar -C "$ROOT" --null -T - -czf "$tarball" || return
    fi
    run "${TPU[@]}" scp "$tarball" "$NAME:tinythinker-jax.tar.gz" "${LOCATION[@]}" --worker=all || return
    fetch="mkdir -p $REMOTE_DIR && tar -xzf \$HOME/tinythinker-jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR"
  fi
  # TPU images may lack python3-venv; pip then resolves jax[tpu] at the version setup.py pins.
  install='(python3 -m venv .venv || (sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv .venv))'
  install+=' && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e . "jax[tpu]"'
  # The readers open local files: data and the initial checkpoint are copied next to the project.
  if [[ -n $DATA ]]; then
    sync+=" && mkdir -p \$HOME/tinythinker-data && gcloud storage rsync --recursive $(quote "$DATA") \$HOME/tinythinker-data"
  fi
  if [[ -n $CHECKPOINT ]]; then
    sync+=" && mkdir -p $(checkpoint_dir) && gcloud storage rsync --recursive $(quote "$CHECKPOINT") $(checkpoint_dir)"
  fi
  on_workers "$fetch && $install$sync"
}

checkpoint_dir() { echo "\$HOME/tinythinker-ckpt/$(basename "$CHECKPOINT")"; }

command_line() {
  local line="cd $REMOTE_DIR && "
  [[ -z $DATA ]] || line+='TINYTHINKER_DATA_ROOT=$HOME/tinythinker-data '
  line+=".venv/bin/tinythinker $COMMAND $(quote --gin_file="$RUN_GIN" --gin_file="gin/experiments/$EXPERIMENT.gin" \
    --gin.MODEL_DIR="\"$MODEL_DIR\"")"
  [[ -z $CHECKPOINT ]] || line+=" --gin.INITIAL_CHECKPOINT_PATH=\\\"$(checkpoint_dir)\\\""
  # -1: jax.distributed.initialize() finds the slice's other workers from the TPU environment.
  line+=' --num_processes -1'
  [[ ${#EXTRA[@]} -eq 0 ]] || line+=" $(quote "${EXTRA[@]}")"
  echo "$line"
}

run_command() { on_workers "$(command_line)"; }

up() { create && setup && run_command; }

resume() {
  if [[ $DRY_RUN == 1 ]]; then
    state
    echo "# if the TPU is preempted or stopped:" >&3
    delete
    echo "# if the TPU is missing (or was deleted):" >&3
    create
    echo "# then, until the command succeeds or fails on a TPU that was not preempted (at most $MAX_ATTEMPTS attempts):" >&3
    setup
    run_command
    return
  fi
  local attempt current
  for ((attempt = 1; attempt <= MAX_ATTEMPTS; attempt++)); do
    current=$(state)
    say "attempt $attempt/$MAX_ATTEMPTS: TPU $NAME is ${current:-missing}"
    case $current in
      READY) ;;
      CREATING | STARTING | RESTARTING | REPAIRING) sleep "$WAIT"; continue ;;
      '') create || { sleep "$WAIT"; continue; } ;;  # Spot capacity comes and goes
      *) { delete && create; } || { sleep "$WAIT"; continue; } ;;
    esac
    if setup && run_command; then
      say "the command finished on attempt $attempt"
      return 0
    fi
    sleep "$WAIT"  # the TPU's state may lag its preemption
    if [[ $(state) == READY ]]; then
      say "the command failed on a TPU that was not preempted; fix the cause, then run resume again"
      return 1
    fi
  done
  say "gave up after $MAX_ATTEMPTS attempts"
  return 1
}

case $STEP in
  up) up ;;
  create) create ;;
  setup) setup ;;
  run) run_command ;;
  resume) resume ;;
  delete) delete ;;
esac
