"""The `gram-bench` command line (DESIGN.md section 4).

Exit codes: 0 success, 1 a run failed, 2 bad usage or bad input. Errors are one sentence;
`--debug` shows the traceback."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gram_bench.harness.errors import GramBenchError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="GRAM and its baselines on one bench: train, sample, verify, tabulate.")
data_app = typer.Typer(no_args_is_help=True, help="Build or verify datasets.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)
STATE = {"debug": False}


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GramBenchError as e:
            if STATE["debug"]:
                raise
            err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130)
    return wrapper


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    STATE["debug"] = debug


def default_data_dir(data_dir: Optional[Path]) -> Path:
    return data_dir or Path(os.environ.get("GRAM_BENCH_DATA", "data"))


def _sets(values: Optional[List[str]]) -> dict:
    from gram_bench.harness.config import parse_set

    return parse_set(values or [])


# ----------------------------------------------------------------------------- list


@app.command("list")
@handle_errors
def list_cmd(what: str = typer.Argument("all", help="tasks | models | profiles | all")):
    """List registered tasks, models and profiles."""
    from gram_bench.harness.config import PROFILES, load_profile
    from gram_bench.models import MODELS
    from gram_bench.tasks import TASKS

    choices = ("tasks", "models", "profiles", "all")
    if what not in choices:
        raise UsageError(f"Unknown list '{what}'; choose one of {', '.join(choices)}.")
    if what in ("tasks", "all"):
        t = Table(title="tasks")
        t.add_column("name")
        t.add_column("defaults")
        for name in TASKS:
            t.add_row(name, str(dataclasses.asdict(TASKS.get(name).Config())))
        console.print(t)
    if what in ("models", "all"):
        t = Table(title="models")
        t.add_column("name")
        t.add_column("description")
        for name in MODELS:
            cls = MODELS.get(name)
            doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
            t.add_row(name, doc)
        console.print(t)
    if what in ("profiles", "all"):
        t = Table(title="profiles")
        t.add_column("name")
        t.add_column("description")
        for name in PROFILES:
            t.add_row(name, str(load_profile(name).get("description", "")))
        console.print(t)


# ----------------------------------------------------------------------------- data


def _task(task: str, sets: Optional[List[str]], data_dir: Optional[Path]):
    from gram_bench.harness.config import build_dataclass
    from gram_bench.tasks import TASKS

    cls = TASKS.get(task)
    values = {}
    for k, v in _sets(sets).items():
        if not k.startswith("task."):
            raise UsageError(f"'data' commands take only task.* settings, got '{k}'.")
        values[k[5:]] = v
    cfg = build_dataclass(cls.Config, values, "task.")
    if hasattr(cfg, "check"):
        try:
            cfg.check()
        except ValueError as e:
            raise UsageError(f"{e} (a task setting).") from None
    return cls(cfg, default_data_dir(data_dir))


@data_app.command("build")
@handle_errors
def data_build(task: str = typer.Option(..., "--task", help="Task name (see `gram-bench list tasks`)."),
               set_: Optional[List[str]] = typer.Option(None, "--set", help="task.KEY=VALUE, repeatable."),
               data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Default: $GRAM_BENCH_DATA or ./data"),
               force: bool = typer.Option(False, "--force", help="Rebuild even if the directory exists.")):
    """Build a dataset directory deterministically, with a manifest of counts and hashes."""
    from gram_bench.harness.runner import progress_bar

    t = _task(task, set_, data_dir)
    if t.data_dir.exists() and not force:
        manifest = t.verify_files()
        console.print(f"{escape(str(t.data_dir))} exists and verifies: {manifest['counts']} (use --force to rebuild)")
        return
    with progress_bar(console) as prog:
        tid = prog.add_task(f"building {t.dir_name()}", total=None)
        manifest = t.build(force=True, progress=lambda i, n: prog.update(tid, completed=i, total=n))
    console.print(f"built {escape(str(t.data_dir))}: {manifest['counts']}")


@data_app.command("verify")
@handle_errors
def data_verify(task: str = typer.Option(..., "--task"),
                set_: Optional[List[str]] = typer.Option(None, "--set", help="task.KEY=VALUE, repeatable."),
                data_dir: Optional[Path] = typer.Option(None, "--data-dir")):
    """Check a dataset directory against its manifest (sha256 of every file)."""
    t = _task(task, set_, data_dir)
    manifest = t.verify_files()
    console.print(f"[green]ok[/] {escape(str(t.data_dir))}: {len(manifest['files'])} files match; counts {manifest['counts']}")


# ----------------------------------------------------------------------------- run / eval


def parse_seeds(seeds: Optional[str]) -> list[Optional[int]]:
    if seeds is None:
        return [None]
    try:
        out = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds expects comma-separated integers like 0,1,2, got '{seeds}'.") from None
    if not out or any(s < 0 for s in out):
        raise UsageError(f"--seeds expects non-negative integers like 0,1,2, got '{seeds}'.")
    return out


@app.command()
@handle_errors
def run(task: str = typer.Option(..., "--task", help="Task name (see `gram-bench list tasks`)."),
        model: str = typer.Option(..., "--model", help="Model name (see `gram-bench list models`)."),
        profile: str = typer.Option("cpu", "--profile", help="smoke | cpu | paper"),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="KEY=VALUE override, repeatable "
                                                 "(task.*, model.*, train.*, eval.*, seed)."),
        samples: Optional[int] = typer.Option(None, "--samples", help="Samples per test input (eval.samples)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
        runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Default: $GRAM_BENCH_DATA or ./data"),
        resume: bool = typer.Option(False, "--resume", help="Continue a stopped run from its checkpoint."),
        force: bool = typer.Option(False, "--force", help="Delete an existing run directory and start over.")):
    """Train a model on a task, sample, verify, and write a run record."""
    from gram_bench.harness.config import resolve
    from gram_bench.harness.runner import run as run_one

    sets = _sets(set_)
    if samples is not None:
        if samples < 1:
            raise UsageError(f"--samples must be at least 1, got {samples}.")
        sets["eval.samples"] = samples
    if resume and force:
        raise UsageError("--resume and --force contradict each other; pass one of them.")
    cfgs = [resolve(task, model, profile, sets, seed) for seed in parse_seeds(seeds)]
    for cfg in cfgs:
        run_one(cfg, runs_dir, default_data_dir(data_dir), device, resume=resume, force=force, console=console)


@app.command("eval")
@handle_errors
def eval_cmd(run_dir: Path = typer.Argument(..., help="A run directory (runs/<task>/<model>/<run-id>)."),
             samples: Optional[int] = typer.Option(None, "--samples", help="Samples per input (width)."),
             steps: Optional[int] = typer.Option(None, "--steps", help="Supervision steps (depth)."),
             select: str = typer.Option("vote", "--select", help="first | vote | lprm | halt (headline rule)"),
             limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate this many test inputs (0 = all)."),
             device: str = typer.Option("auto", "--device"),
             data_dir: Optional[Path] = typer.Option(None, "--data-dir")):
    """Sample from a trained run again (other width/depth) and write eval/<name>.json."""
    import torch

    from gram_bench.harness.config import load_config
    from gram_bench.harness.device import pick_device, use_bf16
    from gram_bench.harness.evaluate import eval_name
    from gram_bench.harness.runner import build, final_eval
    from gram_bench.metrics import SELECTIONS

    if not (run_dir / "config.yaml").exists():
        raise UsageError(f"{run_dir} is not a run directory (no config.yaml); pass runs/<task>/<model>/<run-id>.")
    if not (run_dir / "checkpoint.pt").exists():
        raise UsageError(f"{run_dir} has no checkpoint.pt; train it first with gram-bench run ... --resume.")
    if samples is not None and samples < 1:
        raise UsageError(f"--samples must be at least 1, got {samples}.")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}.")
    if select not in SELECTIONS:
        raise UsageError(f"--select must be one of {', '.join(SELECTIONS)}, got '{select}'.")
    cfg = load_config(run_dir / "config.yaml")
    own_limit = cfg.eval.limit
    if limit is not None:
        if limit < 0:
            raise UsageError(f"--limit must be 0 (all) or positive, got {limit}.")
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, limit=limit))
    dev = pick_device(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    task_obj, model_obj = build(cfg, default_data_dir(data_dir), dev)
    task_obj.verify_files()
    samples = samples or cfg.eval.samples
    steps = steps or cfg.eval.steps or model_obj.default_steps
    name = eval_name(cfg.eval.split, samples, steps, limit=cfg.eval.limit if cfg.eval.limit != own_limit else 0)
    final_eval(cfg, task_obj, model_obj, run_dir, dev, use_bf16(cfg.train.precision, dev), console,
               samples=samples, steps=steps, selection=select, name=name)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
