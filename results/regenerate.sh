#!/bin/bash
# Regenerate results/ from the finished runs under runs/: copies their run records
# (everything but checkpoint.pt) to results/runs/, then renders the leaderboard, the tables
# and the plots from those copies only. Run from anywhere: bash results/regenerate.sh
set -euo pipefail
cd "$(dirname "$0")/.." && . .venv/bin/activate
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
  gram-bench table multi-solution --runs-dir results/runs --format $f -o results/tables/multi-solution.$ext
  gram-bench table ablation --dataset graph-coloring-8 --runs-dir results/runs --format $f \
    -o results/tables/ablation-graph-coloring-8.$ext
  gram-bench table scaling --dataset graph-coloring-8 --runs-dir results/runs --format $f \
    -o results/tables/scaling-graph-coloring-8.$ext
done
# the profile's own runs (no training overrides) of 8-node graph coloring
gc=$(python - <<'PY'
import glob, yaml
from gram_bench.leaderboards.load import training_overrides
for d in sorted(glob.glob("results/runs/graph-coloring/*/cpu-seed0-*")):
    if not training_overrides(yaml.safe_load(open(d + "/config.yaml")).get("overrides") or {}):
        print(d)
PY
)
gram-bench plot curves $gc -o results/plots/graph-coloring-8-curves.png
gram-bench plot solutions $gc -o results/plots/graph-coloring-8-solutions.png
gram=$(echo "$gc" | grep /gram/)
gram-bench plot scaling $gram -o results/plots/graph-coloring-8-gram-scaling.png
gram-bench plot coverage $gc -o results/plots/graph-coloring-8-coverage.png
