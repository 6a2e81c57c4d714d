#!/bin/bash
# Regenerate results/ from the finished runs under runs/: copies their run records
# (everything but checkpoint.pt) to results/runs/, then renders the leaderboard, the tables
# and the plots from those copies only. Run from anywhere: bash results/regenerate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate   # the active environment, else the README's .venv
rm -rf results/runs results/tables results/plots
mkdir -p results/runs results/tables results/plots
for d in runs/*/*/*/; do
  [ "$(cat "$d/status" 2>/dev/null)" = finished ] || continue
  mkdir -p "$(dirname "results/$d")"
  cp -r "$d" "results/$d" && rm -f "results/$d/checkpoint.pt"
done
gram-bench leaderboard export --runs-dir results/runs -o results/LEADERBOARD.md
for f in markdown latex csv; do
  ext=$([ $f = markdown ] && echo md || ([ $f = latex ] && echo tex || echo csv))
  for t in multi-solution structured sudoku-gen mnist; do
    gram-bench table $t --runs-dir results/runs --format $f -o results/tables/$t.$ext
  done
  gram-bench table ablation --dataset graph-coloring-8 --runs-dir results/runs --format $f \
    -o results/tables/ablation-graph-coloring-8.$ext
  for ds in graph-coloring-8 sudoku-extreme-gen; do
    gram-bench table scaling --dataset $ds --runs-dir results/runs --format $f -o results/tables/scaling-$ds.$ext
  done
done
# the profile's own runs (no training overrides) of one task, one per model
own_runs() {
  python - "$1" <<'PY'
import glob, sys, yaml
from gram_bench.leaderboards.load import training_overrides
for d in sorted(glob.glob(f"results/runs/{sys.argv[1]}/*/cpu-seed0-*")):
    cfg = yaml.safe_load(open(d + "/config.yaml"))
    if not training_overrides(cfg.get("overrides") or {}) and cfg["task"].get("n", 8) == 8:
        print(d)
PY
}
for task in graph-coloring nqueens; do
  runs=$(own_runs $task)
  name=$([ $task = nqueens ] && echo nqueens-8 || echo graph-coloring-8)
  gram-bench plot curves $runs -o results/plots/$name-curves.png
  gram-bench plot solutions $runs -o results/plots/$name-solutions.png
  gram-bench plot coverage $runs -o results/plots/$name-coverage.png
done
gram-bench plot scaling $(own_runs graph-coloring | grep /gram/) -o results/plots/graph-coloring-8-gram-scaling.png
sx=$(own_runs sudoku-extreme | grep /gram/ || true)
[ -n "$sx" ] && gram-bench plot scaling $sx -o results/plots/sudoku-extreme-gen-gram-scaling.png
# MNIST sample grids (written by every mnist eval)
for f in results/runs/mnist/*/cpu-seed0-*/eval/*.samples.png; do
  [ -e "$f" ] || continue
  model=$(basename "$(dirname "$(dirname "$(dirname "$f")")")")
  cp "$f" "results/plots/mnist-$model-$(basename "$f" .samples.png).png"
done
exit 0
