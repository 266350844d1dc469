#!/usr/bin/env bash
# Runs a tinythinker pipeline (or SFT) on a Cloud TPU VM or slice. See launch/README.md.
# shellcheck disable=SC2016  # the remote commands' $HOME is the worker's: it must expand there, not here
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=launch/common.sh  # followed with shellcheck -x
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [STEP] [FLAGS] [-- TINYTHINKER_ARGS...]

Steps:
  up       (default) create, setup, run
  create   create the TPU VM or slice
  setup    copy or clone the project onto every worker, install it, mount --model_dir's bucket with gcsfuse,
           fetch --data and --checkpoint
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
  --command CMD             tinythinker subcommand: pipeline (default), train (SFT alone) or reflect (one
                            self-reflection iteration: -- --gin.ITERATION=i)
  --experiment NAME         gin/experiments/NAME.gin (default: csqa_t5_base_sft)
  --model_dir DIR           MODEL_DIR, required by run, up and resume: gs://BUCKET/DIR or /gcs/BUCKET/DIR, the
                            same place. On GCS, so that it outlives the VM; setup mounts BUCKET at /gcs/BUCKET on
                            every worker with gcsfuse, and the command writes to /gcs/BUCKET/DIR (it writes with
                            Python's open and os, which do not take gs:// URLs)
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

REMOTE_DIR='$HOME/tinythinker-jax'
GCS_MOUNTS=/gcs  # gcsfuse mounts bucket B at /gcs/B on every worker
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
MAX_ATTEMPTS=50
WAIT=60
BUCKET=

own_flag() {
  TOOK=2
  case $1 in
    up | create | setup | run | resume | delete) STEP=$1; TOOK=1 ;;
    --name) NAME=$(value "$@") ;;
    --zone) ZONE=$(value "$@") ;;
    --project) PROJECT=$(value "$@") ;;
    --accelerator_type) ACCELERATOR_TYPE=$(value "$@") ;;
    --version) VERSION=$(value "$@") ;;
    --spot) CAPACITY=--spot; TOOK=1 ;;
    --preemptible) CAPACITY=--preemptible; TOOK=1 ;;
    --repo) REPO=$(value "$@") ;;
    --ref) REF=$(value "$@") ;;
    --data) DATA=$(value "$@") ;;
    --checkpoint) CHECKPOINT=$(value "$@") ;;
    --max_attempts) MAX_ATTEMPTS=$(value "$@") ;;
    --wait) WAIT=$(value "$@") ;;
    *) TOOK=0 ;;
  esac
}

parse_args "$@"
resolve_command csqa_t5_base_sft csqa_t5_base_sft
if [[ -z $VERSION ]]; then
  case $ACCELERATOR_TYPE in
    v5litepod-* | v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) VERSION=tpu-ubuntu2204-base ;;
  esac
fi
if [[ -n $MODEL_DIR || $STEP =~ ^(up|run|resume)$ ]]; then
  # A recreated VM starts blank: only GCS keeps checkpoints across preemptions, and every worker must see them.
  # The code writes with Python's open and os, so the workers reach the bucket through a gcsfuse mount.
  [[ $MODEL_DIR =~ ^(gs:/|$GCS_MOUNTS)/([a-z0-9._-]+)/+([^/].*)$ ]] ||
    die "$STEP needs --model_dir gs://BUCKET/DIR or $GCS_MOUNTS/BUCKET/DIR, not '$MODEL_DIR'"
  BUCKET=${BASH_REMATCH[2]}
  MODEL_DIR=$GCS_MOUNTS/$BUCKET/${BASH_REMATCH[3]%/}
  MOUNT=$GCS_MOUNTS/$BUCKET
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
  # TPU images may lack python3-venv; pip then resolves jax[tpu] at the version pyproject.toml pins.
  install='(python3 -m venv .venv || (sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv .venv))'
  install+=' && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e . "jax[tpu]"'
  [[ -z $BUCKET ]] || sync+=" && $(mount_bucket)"
  # The readers open local files: data and the initial checkpoint are copied next to the project.
  if [[ -n $DATA ]]; then
    sync+=" && mkdir -p \$HOME/tinythinker-data && gcloud storage rsync --recursive $(quote "$DATA") \$HOME/tinythinker-data"
  fi
  if [[ -n $CHECKPOINT ]]; then
    sync+=" && mkdir -p $(checkpoint_dir) && gcloud storage rsync --recursive $(quote "$CHECKPOINT") $(checkpoint_dir)"
  fi
  on_workers "$fetch && $install$sync"
}

# gcsfuse from Google's apt repository, then BUCKET at MOUNT, owned by the worker's user (each step skipped when done).
# --rename-dir-limit: saving the best model renames directories, which gcsfuse refuses by default.
mount_bucket() {
  local keyring=/usr/share/keyrings/cloud.google.asc
  local apt="deb [signed-by=$keyring] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main"
  local mount
  mount=$(quote "$MOUNT")
  echo "(command -v gcsfuse >/dev/null || (curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg" \
    "| sudo tee $keyring >/dev/null && echo \"$apt\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null" \
    "&& sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse))" \
    "&& (mountpoint -q $mount || (sudo mkdir -p $mount && sudo chown \$(id -u):\$(id -g) $mount" \
    "&& gcsfuse --implicit-dirs --rename-dir-limit=100000 $(quote "$BUCKET") $mount))"
}

checkpoint_dir() { echo "\$HOME/tinythinker-ckpt/$(basename "$CHECKPOINT")"; }

command_line() {
  local mount line
  mount=$(quote "$MOUNT")
  # Without the mount, the run would write to the worker's disk, which a preemption wipes.
  line="{ mountpoint -q $mount || { echo \"$mount is not mounted: run launch/tpu_vm.sh setup with this --model_dir\""
  line+=" >&2; false; }; } && cd $REMOTE_DIR && "
  [[ -z $DATA ]] || line+='TINYTHINKER_DATA_ROOT=$HOME/tinythinker-data '
  line+=".venv/bin/tinythinker $COMMAND $(quote "${GIN_FILES[@]}" --gin.MODEL_DIR="\"$MODEL_DIR\"")"
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
