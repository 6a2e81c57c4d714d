#!/bin/bash
# Make every cpu-profile run behind results/, then render results/ from them
# (results/regenerate.sh). Each run is the command results/README.md lists, at the profile's
# settings, one at a time; a finished run is skipped and a stopped one resumed (`run --resume`), so the
# script can be stopped at any point and started again. Several CPU-hours on 2 cores; the
# tasks run in the order below. Run from anywhere: bash results/reproduce.sh [TASK ...]
# (TASK in nqueens mnist sudoku arc graph-coloring ablation; default all).
# DRY_RUN=1 lists every run with its status (new, finished, or stopped) and runs nothing.
# THREADS=1 runs every command at one torch thread (train.threads, not part of a run id), so
# that two copies of the script, each with its own tasks, can share a 2-core machine; the
# profile's wall-clock caps (train.max_minutes) still apply, and each run's log records
# where a cap stopped it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate   # the active environment, else the README's .venv

sets=()
if [ -n "${THREADS:-}" ]; then
  export OMP_NUM_THREADS=$THREADS
  sets=(--set "train.threads=$THREADS")
fi
dry=${DRY_RUN:-}
run() {
  if [ -n "$dry" ]; then gram-bench run --dry-run "$@"; else gram-bench run --resume "${sets[@]}" "$@"; fi
}

# the run directory of `gram-bench run ARGS` (cpu profile, seed 0)
run_dir() { gram-bench run --dry-run "$@" | cut -f1; }

# gram-bench eval RUN --steps LIST [--samples N], unless eval/test-n<N>-s<S>.json exists for every S
eval_depths() {
  local rdir=$1 steps=$2 n=${3:-20} s todo=""
  for s in ${steps//,/ }; do [ -e "$rdir/eval/test-n$n-s$s.json" ] || todo="$todo,$s"; done
  if [ -z "$todo" ]; then return; fi
  if [ -n "$dry" ]; then echo -e "$rdir\teval --samples $n --steps ${todo#,}"; return; fi
  gram-bench eval "$rdir" --samples "$n" --steps "${todo#,}"
}

scale() {  # gram-bench scale RUN ARGS, which reuses the evaluations it already wrote
  if [ -n "$dry" ]; then echo -e "$1\tscale ${*:2}"; else gram-bench scale "$@"; fi
}

nqueens() {
  for m in gram trm hrm looped-tf ar; do run --task nqueens --model $m; done
  # 100 denoising steps over 64 tokens: a seeded 256 (D3PM absorbing 128) of the 773 inputs
  run --task nqueens --model mdlm --set eval.limit=256
  run --task nqueens --model d3pm --set eval.limit=256
  run --task nqueens --model d3pm --set model.transition=absorbing --set eval.limit=128
}

mnist() {
  for m in gram trm vae d3pm; do run --task mnist --model $m; done
  eval_depths "$(run_dir --task mnist --model gram)" 4,8,32
}

sudoku() {
  for m in gram trm; do
    run --task sudoku-extreme --model $m --set task.source=generated --set train.max_minutes=6 --set eval.limit=200
  done
  scale "$(run_dir --task sudoku-extreme --model gram --set task.source=generated)" --samples 1,5,10,20 --steps 4,8
  for m in gram d3pm; do run --task sudoku-uncond --model $m --set task.source=generated --set train.max_minutes=6; done
}

arc() {
  run --task arc-agi-1 --model gram   # on a CPU a pipeline check (the profile's 60 steps), not a result
}

graph-coloring() {
  # GRAM and the deterministic models: three seeds each, as one seed's spread on this task is
  # larger than the gaps between models (the leaderboard averages them with a t-interval)
  for m in gram trm hrm direct looped-tf; do run --task graph-coloring --model $m --seeds 0,1,2; done
  for m in ar d3pm mdlm; do run --task graph-coloring --model $m; done
  run --task graph-coloring --model d3pm --set model.transition=absorbing
  run --task graph-coloring --model gram --set model.ce_reduce=mean   # the CE-reduction finding
  eval_depths "$(run_dir --task graph-coloring --model gram)" 1,2,4,16
}

ablate() {  # gram-bench ablation --task graph-coloring ARGS
  if [ -n "$dry" ]; then gram-bench ablation --task graph-coloring "$@" --dry-run
  else gram-bench ablation --task graph-coloring "$@" "${sets[@]}"; fi
}

ablation() {  # on graph coloring; it reuses the plain GRAM, TRM and Looped TF runs, or makes them
  ablate   # every cell at seed 0
  ablate --seeds 0,1,2 --only gram,no-guidance,noise-only,mean-only   # GRAM's guidance ablations at GRAM's seeds
}

if [ $# -gt 0 ]; then tasks=("$@"); else tasks=(nqueens mnist sudoku arc graph-coloring ablation); fi
for t in "${tasks[@]}"; do
  case $t in
    nqueens|mnist|sudoku|arc|graph-coloring|ablation) ;;
    *) echo "reproduce.sh: unknown task '$t'; choose from nqueens mnist sudoku arc graph-coloring ablation." >&2; exit 2 ;;
  esac
done
for t in "${tasks[@]}"; do $t; done
# results/ renders every finished run under runs/: only after all of them, or it would drop rows
if [ -n "$dry" ]; then exit 0; fi
if [ $# -eq 0 ]; then bash results/regenerate.sh; else echo "now: bash results/regenerate.sh (once every task has run)"; fi
