#!/usr/bin/env bash
# Runs the tinythinker pipeline (or SFT) on this machine's CPU, e.g. on the toy world. See launch/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=launch/common.sh  # followed with shellcheck -x
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/local.sh [FLAGS] [-- TINYTHINKER_ARGS...]

  --command CMD          tinythinker subcommand: pipeline (default), train (SFT alone) or reflect (one
                         self-reflection iteration: -- --gin.ITERATION=i)
  --experiment NAME      gin/experiments/NAME.gin (default: toyworld_yesno_t5_mini_pipeline, or
                         toyworld_yesno_t5_mini_sft with --command train)
  --model_dir DIR        MODEL_DIR, a local path or a mounted filesystem (default: out/EXPERIMENT in the repository)
  --install              first pip install the project into the current Python environment
  --dry_run              print every command, one per line after "+ ", and run none
  -h, --help             this help

Everything after -- goes to the tinythinker command, e.g. -- --gin.TRAIN_STEPS=10. Rerunning the same command
resumes from MODEL_DIR. The toy world is generated on first use.
EOF
}

INSTALL=0

own_flag() {
  TOOK=0
  [[ $1 != --install ]] || { INSTALL=1; TOOK=1; }
}

parse_args "$@"
resolve_command toyworld_yesno_t5_mini_pipeline toyworld_yesno_t5_mini_sft
local_model_dir

run cd "$ROOT"
[[ $INSTALL == 0 ]] || run python3 -m pip install -e .
# JAX_PLATFORMS=cpu: the same run on a machine that also has an accelerator stays off it.
run_here JAX_PLATFORMS=cpu
