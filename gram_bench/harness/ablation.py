"""`gram-bench ablation`: run the missing runs of the ablation grid, then write its table.

Each variant of `gram_bench.core.variants.VARIANTS` is a model plus `--set` overrides.
Variants that change training are their own runs (finished ones are reused, as
`gram-bench run` does); inference-only variants (TRM's stochastic decoder, random z0)
evaluate the plain model's run again with `gram-bench eval --set`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from gram_bench.harness.config import resolve
from gram_bench.harness.rundir import read_status, run_path
from gram_bench.harness.runner import evaluate_run, run
from gram_bench.core.variants import ABLATION_SAMPLES, VARIANTS, Variant


def variant_sets(v: Variant, task: str, profile: str) -> dict:
    """The variant's training overrides as `--set` keys; `$model.field` takes that field
    from another model's config in the same profile (e.g. GRAM's n_sup)."""
    out = {}
    for k, val in v.train_sets.items():
        if isinstance(val, str) and val.startswith("$"):
            other, field = val[1:].split(".", 1)
            val = getattr(resolve(task, other, profile).model, field)
        out[f"model.{k}"] = val
    return out


def run_ablation(task: str, profile: str, seeds: list[int | None], runs_dir: Path, data_root: Path,
                 device_name: str, console: Console, only: list[str] | None = None, dry_run: bool = False,
                 sets: dict | None = None) -> list[tuple[str, Path, str]]:
    """Returns (variant key, run dir, what happened) for every cell of the grid. `sets` are
    added to every cell's overrides (the CLI allows only keys outside the run id)."""
    variants = [v for v in VARIANTS if not only or v.key in only]
    plan = []
    for v in variants:
        for seed in seeds:
            cfg = resolve(task, v.model, profile, {**(sets or {}), **variant_sets(v, task, profile)}, seed)
            plan.append((v, cfg, run_path(runs_dir, cfg)))
    out = []
    for v, cfg, rdir in plan:
        status = read_status(rdir)
        todo = "reuse" if status == "finished" else ("resume" if status else "train")
        if v.eval_sets:
            todo += " + eval " + ",".join(f"{k}={val}" for k, val in v.eval_sets.items())
        console.print(f"[bold]{v.key}[/]: {cfg.model_name} seed {cfg.seed} -> {escape(str(rdir))} ({todo})")
        if dry_run:
            out.append((v.key, rdir, todo))
            continue
        if status != "finished":
            run(cfg, runs_dir, data_root, device_name, resume=status is not None, console=console)
        if v.eval_sets:
            evaluate_run(rdir, [ABLATION_SAMPLES], [], sets={f"model.{k}": val for k, val in v.eval_sets.items()},
                         device_name=device_name, data_root=data_root, console=console, skip_existing=True)
        out.append((v.key, rdir, todo))
    return out

