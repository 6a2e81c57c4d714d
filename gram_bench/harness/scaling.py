"""Width x depth scaling of a trained run (the paper's Figure 4 left).

At every depth (supervision steps) the run is sampled once with the largest width N_max;
every smaller width N is the first N samples of those records with votes and scores
recomputed (`metrics.records.truncate`), which is what an N-sample evaluation would see
in distribution, at 1/len(widths) of the cost. The grid, every cell with its 95% CI for
each selection rule, goes to `eval/scaling.json`, and the plots to
`plots/scaling-<rule>.png`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gram_bench.core.errors import UsageError
from gram_bench.core.io import atomic_write_json
from gram_bench.metrics.records import truncate
from gram_bench.metrics.summary import summarize

GRID_METRICS = ("accuracy_vote", "accuracy_lprm", "accuracy_first", "accuracy_oracle", "exact_vote", "exact_lprm",
                "conflicts_mean")  # conflicts still move when accuracy is 0


def grid_cells(eval_files: list[Path], widths: list[int]) -> list[dict]:
    """One cell per (depth, width): the GRID_METRICS the records allow, with CIs."""
    cells = []
    for path in eval_files:
        summary = json.loads(path.read_text())
        with gzip.open(path.with_name(path.stem + ".examples.jsonl.gz"), "rt") as f:
            records = [json.loads(line) for line in f]
        for n in sorted(widths):
            if n > summary["samples"]:
                raise UsageError(f"{path} has {summary['samples']} samples per input, fewer than N={n}.")
            m = summarize([truncate(r, n) for r in records], slices=False)
            cells.append({"samples": n, "steps": summary["steps"], "eval": path.stem, "n_examples": len(records),
                          "metrics": {k: m[k] for k in GRID_METRICS if k in m}})
    return cells


def scale_run(run_dir: Path, widths: list[int], depths: list[int], *, limit: int | None = None,
              device_name: str = "auto", data_root: Path = Path("data"),
              console: Console | None = None) -> Path:
    """Evaluate `run_dir` at N_max = max(widths) for each depth (evals already written are
    reused), then write eval/scaling.json and plots/scaling-<rule>.png; returns the JSON path."""
    from gram_bench.harness.runner import evaluate_run
    from gram_bench.leaderboards.plots import plot_grid

    console = console or Console()
    run_dir = Path(run_dir)
    own = _own_eval(run_dir, max(widths), limit)
    todo = [d for d in depths if d not in own]
    done = evaluate_run(run_dir, [max(widths)], todo, limit=limit, device_name=device_name, data_root=data_root,
                        console=console, skip_existing=True) if todo else []
    made = dict(zip(todo, done))
    files = [own.get(d) or made[d] for d in depths]
    cells = grid_cells(files, widths)
    out = run_dir / "eval" / "scaling.json"
    atomic_write_json(out, {"widths": sorted(widths), "depths": depths, "n_max": max(widths),
                            "method": "one evaluation per depth at N_max; smaller N = its first N samples",
                            "cells": cells})
    rules = [r for r in ("vote", "lprm") if f"accuracy_{r}" in cells[0]["metrics"]]
    for rule in rules:
        plot_grid(cells, rule, run_dir / "plots" / f"scaling-{rule}", title=f"{run_dir.parent.name} {run_dir.name}")
    print_grid(console, cells, rules)
    console.print(f"wrote {out} and {', '.join(f'plots/scaling-{r}.png' for r in rules)}")
    return out


def _own_eval(run_dir: Path, n_max: int, limit: int | None) -> dict[int, Path]:
    """{depth: eval/test.json} when the run's own final eval can serve as a grid column: at
    least n_max samples, and the same test inputs (no other --limit asked)."""
    p = run_dir / "eval" / "test.json"
    if not p.exists():
        return {}
    s = json.loads(p.read_text())
    if s.get("samples", 0) < n_max or (limit is not None and limit != s.get("limit")):
        return {}
    return {int(s["steps"]): p}


def print_grid(console: Console, cells: list[dict], rules: list[str]) -> None:
    depths = sorted({c["steps"] for c in cells})
    widths = sorted({c["samples"] for c in cells})
    by = {(c["samples"], c["steps"]): c["metrics"] for c in cells}
    for rule in rules:
        t = Table(title=f"accuracy ({rule}) %, 95% CI: rows N samples, columns supervision steps")
        t.add_column("N")
        for d in depths:
            t.add_column(f"{d} steps")
        for n in widths:
            row = []
            for d in depths:
                m = by.get((n, d), {}).get(f"accuracy_{rule}")
                row.append("-" if m is None else
                           f"{100 * m['value']:.1f} [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}]")
            t.add_row(str(n), *row)
        console.print(t)
