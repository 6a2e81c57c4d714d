"""The `gram-bench` command line (DESIGN.md section 4).

Exit codes: 0 success, 1 a run failed, 2 bad usage or bad input. Every error is one line on
stderr starting with `error:` (argument parsing errors included), never a traceback;
`gram-bench --debug ...` raises the exception instead."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from gram_bench.core.errors import UsageError
from gram_bench.harness.cli_support import (STATE, OneLineErrors, build_task, console, default_data_dir, handle_errors,
                                            launch_torchrun, load_runs_noting_skips, parse_ints, parse_seeds,
                                            parse_sets, write_or_print)

app = typer.Typer(add_completion=False, no_args_is_help=True, cls=OneLineErrors, pretty_exceptions_enable=False,
                  help="GRAM and its baselines on one bench: train, sample, verify, tabulate.")
data_app = typer.Typer(no_args_is_help=True, help="Build or verify datasets.")
app.add_typer(data_app, name="data")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    STATE["debug"] = debug


# ----------------------------------------------------------------------------- list


@app.command("list")
@handle_errors
def list_cmd(what: str = typer.Argument("all", help="tasks | models | profiles | tables | all")):
    """List registered tasks, models, profiles and tables."""
    from gram_bench.harness.config import PROFILES, load_profile
    from gram_bench.models import MODELS
    from gram_bench.tasks import TASKS

    choices = ("tasks", "models", "profiles", "tables", "all")
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
    if what in ("tables", "all"):
        from gram_bench.leaderboards.tables import TABLES

        t = Table(title="tables (gram-bench table NAME)")
        t.add_column("name")
        t.add_column("description")
        for name, fn in TABLES.items():
            t.add_row(name, (fn.__doc__ or "").strip().splitlines()[0])
        console.print(t)


# ----------------------------------------------------------------------------- data


@data_app.command("build")
@handle_errors
def data_build(task: str = typer.Option(..., "--task", help="Task name (see `gram-bench list tasks`)."),
               set_: Optional[List[str]] = typer.Option(None, "--set", help="task.KEY=VALUE, repeatable."),
               data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Default: $GRAM_BENCH_DATA or ./data"),
               force: bool = typer.Option(False, "--force", help="Rebuild even if the directory exists.")):
    """Build a dataset directory deterministically, with a manifest of counts and hashes."""
    from gram_bench.harness.build import data_lock
    from gram_bench.harness.display import progress_bar

    t = build_task(task, set_, data_dir)
    if t.data_dir.exists() and not force:
        manifest = t.verify_files()
        console.print(f"{escape(str(t.data_dir))} exists and verifies: {manifest['counts']} (use --force to rebuild)")
        return
    with data_lock(t, console), progress_bar(console) as prog:
        tid = prog.add_task(f"building {t.dir_name()}", total=None)
        manifest = t.build(force=True, progress=lambda i, n: prog.update(tid, completed=i, total=n))
    console.print(f"built {escape(str(t.data_dir))}: {manifest['counts']}")


@data_app.command("verify")
@handle_errors
def data_verify(task: str = typer.Option(..., "--task"),
                set_: Optional[List[str]] = typer.Option(None, "--set", help="task.KEY=VALUE, repeatable."),
                data_dir: Optional[Path] = typer.Option(None, "--data-dir")):
    """Check a dataset directory against its manifest (sha256 of every file) and load every file."""
    t = build_task(task, set_, data_dir)
    manifest = t.verify_files()
    t.arrays()  # every .npy parses (allow_pickle=False)
    console.print(f"[green]ok[/] {escape(str(t.data_dir))}: {len(manifest['files'])} files match; counts {manifest['counts']}")


# ----------------------------------------------------------------------------- run / eval


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
        force: bool = typer.Option(False, "--force", help="Delete an existing run directory and start over."),
        nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes on this machine: launches "
                                  "torchrun --nproc-per-node N (one per GPU, or gloo on CPU)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print each run's directory and status "
                                     "(new, finished, or the status of a stopped run); run nothing.")):
    """Train a model on a task, sample, verify, and write a run record."""
    from gram_bench.harness.config import resolve
    from gram_bench.harness.rundir import read_status, run_path
    from gram_bench.harness.runner import run as run_one

    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}.")
    if nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1 and not dry_run:
        args = ["run", "--task", task, "--model", model, "--profile", profile, "--device", device,
                "--runs-dir", str(runs_dir)]
        args += ["--seeds", seeds] if seeds else []
        args += [a for kv in (set_ or []) for a in ("--set", kv)]
        args += ["--samples", str(samples)] if samples is not None else []
        args += ["--data-dir", str(data_dir)] if data_dir is not None else []
        args += ["--resume"] if resume else []
        args += ["--force"] if force else []
        raise typer.Exit(launch_torchrun(nproc, args))
    sets = parse_sets(set_)
    if samples is not None:
        if samples < 1:
            raise UsageError(f"--samples must be at least 1, got {samples}.")
        sets["eval.samples"] = samples
    if resume and force:
        raise UsageError("--resume and --force contradict each other; pass one of them.")
    cfgs = [resolve(task, model, profile, sets, seed) for seed in parse_seeds(seeds)]
    if dry_run:  # plain lines, one per run, for scripts (results/reproduce.sh)
        for cfg in cfgs:
            rdir = run_path(runs_dir, cfg)
            print(f"{rdir}\t{read_status(rdir) or 'new'}")
        return
    for cfg in cfgs:
        run_one(cfg, runs_dir, default_data_dir(data_dir), device, resume=resume, force=force, console=console)


@app.command("eval")
@handle_errors
def eval_cmd(run_dir: Path = typer.Argument(..., help="A run directory (runs/<task>/<model>/<run-id>)."),
             samples: Optional[str] = typer.Option(None, "--samples", help="Samples per input (width); a list "
                                                   "like 1,5,20 evaluates each."),
             steps: Optional[str] = typer.Option(None, "--steps", help="Supervision steps (depth); a list like "
                                                 "8,16,32 evaluates each (the grid with --samples)."),
             select: str = typer.Option("vote", "--select", help="first | vote | lprm | halt (headline rule)"),
             limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate this many test inputs (0 = all)."),
             set_: Optional[List[str]] = typer.Option(None, "--set", help="Inference-only model override, e.g. "
                                                      "model.decode=sample or model.init=random."),
             device: str = typer.Option("auto", "--device"),
             data_dir: Optional[Path] = typer.Option(None, "--data-dir")):
    """Sample from a trained run again (other width/depth/decoding) and write eval/<name>.json."""
    from gram_bench.harness.runner import evaluate_run
    from gram_bench.metrics import SELECTIONS

    widths, depths = parse_ints(samples, "--samples"), parse_ints(steps, "--steps")
    if select not in SELECTIONS:
        raise UsageError(f"--select must be one of {', '.join(SELECTIONS)}, got '{select}'.")
    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 (all) or positive, got {limit}.")
    evaluate_run(run_dir, widths, depths, select=select, limit=limit, sets=parse_sets(set_), device_name=device,
                 data_root=default_data_dir(data_dir), console=console)


@app.command()
@handle_errors
def scale(run_dir: Path = typer.Argument(..., help="A run directory (runs/<task>/<model>/<run-id>)."),
          samples: str = typer.Option("1,5,10,20", "--samples", help="Widths N, comma-separated."),
          steps: str = typer.Option(..., "--steps", help="Depths (supervision steps), comma-separated, e.g. 8,16,32."),
          limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate this many test inputs (0 = all)."),
          device: str = typer.Option("auto", "--device"),
          data_dir: Optional[Path] = typer.Option(None, "--data-dir")):
    """Width x depth scaling grid: one evaluation per depth at the largest N (smaller N from its
    first samples), every cell with vote / LPRM / first accuracy and CIs in eval/scaling.json,
    and accuracy-vs-depth plots per N in plots/."""
    from gram_bench.harness.scaling import scale_run

    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 (all) or positive, got {limit}.")
    scale_run(run_dir, parse_ints(samples, "--samples"), parse_ints(steps, "--steps", example="8,16,32"),
              limit=limit, device_name=device, data_root=default_data_dir(data_dir), console=console)


# ----------------------------------------------------------------------------- tables, leaderboard, plots


@app.command()
@handle_errors
def bench(task: str = typer.Option(..., "--task", help="Task name (see `gram-bench list tasks`)."),
          model: str = typer.Option(..., "--model", help="Model name (see `gram-bench list models`)."),
          profile: str = typer.Option("cpu", "--profile", help="smoke | cpu | paper"),
          batch: Optional[int] = typer.Option(None, "--batch", help="Training batch (default: the profile's)."),
          steps: int = typer.Option(10, "--steps", help="Timed training steps per setting."),
          warmup: int = typer.Option(3, "--warmup", help="Untimed training steps first (and compilation)."),
          samples: Optional[str] = typer.Option("1,20", "--samples", help="Widths N to time sampling at."),
          sample_batch: int = typer.Option(16, "--sample-batch", help="Test inputs per sampling call."),
          sample_steps: Optional[int] = typer.Option(None, "--sample-steps", help="Depth for the sampling timings "
                                                     "(default: the model's own)."),
          compare: Optional[List[str]] = typer.Option(None, "--compare", help="KEY=V1,V2: time each value, "
                                                      "alternating in one process, e.g. train.precision=fp32,bf16; "
                                                      "repeatable, with as many values each: the i-th values of "
                                                      "all of them form setting i."),
          compile_core: bool = typer.Option(False, "--compile", help="torch.compile the block stacks "
                                            "(static shapes); the same as --set train.compile=true."),
          threads: int = typer.Option(0, "--threads", help="torch intra-op threads (0 = torch's default)."),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="KEY=VALUE override, repeatable."),
          device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
          data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Default: $GRAM_BENCH_DATA or ./data"),
          out: Optional[Path] = typer.Option(None, "-o", "--out", help="JSON file (default: bench/<task>-<model>-"
                                             "<profile>[-<compared key>].json).")):
    """Time training and sampling, count FLOPs, measure memory; print a table and write JSON."""
    from gram_bench.harness.bench import bench as run_bench
    from gram_bench.harness.bench import default_output, print_result, write_result

    if threads < 0:
        raise UsageError(f"--threads must be 0 (torch's default) or positive, got {threads}.")
    if sample_steps is not None and sample_steps < 1:
        raise UsageError(f"--sample-steps must be at least 1, got {sample_steps}.")
    result = run_bench(task, model, profile, parse_sets(set_), batch=batch, steps=steps, warmup=warmup,
                       samples=parse_ints(samples, "--samples"), sample_batch=sample_batch,
                       sample_steps=sample_steps, compare=compare,
                       compile_core=compile_core, threads=threads, device_name=device,
                       data_root=default_data_dir(data_dir), console=console)
    print_result(console, result)
    path = write_result(result, out or default_output(result))
    console.print(f"wrote {path}")


@app.command()
@handle_errors
def table(name: str = typer.Argument(..., help="multi-solution | structured | mnist | sudoku-gen | ablation | "
                                     "scaling"),
          runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
          fmt: str = typer.Option("markdown", "--format", help="markdown | latex | csv"),
          profile: Optional[str] = typer.Option(None, "--profile", help="Only runs of this profile (default: "
                                                "the profile with the most seeds per cell)."),
          select: str = typer.Option("vote", "--select", help="Selection rule for accuracy: first | vote | lprm | "
                                     "halt"),
          dataset: Optional[str] = typer.Option(None, "--dataset", help="ablation / scaling: the dataset, e.g. "
                                                "nqueens-8 or sudoku-extreme."),
          out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write to this file instead of stdout.")):
    """Render a paper-style table from run records, with CIs and the paper's numbers."""
    from gram_bench.leaderboards.render import FORMATS
    from gram_bench.leaderboards.tables import build_table
    from gram_bench.metrics import SELECTIONS

    if fmt not in FORMATS:
        raise UsageError(f"Unknown format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    if select not in SELECTIONS:
        raise UsageError(f"--select must be one of {', '.join(SELECTIONS)}, got '{select}'.")
    kw = {"profile": profile, "select": select}
    if dataset and name in ("ablation", "scaling"):
        kw["dataset"] = dataset
    elif dataset:
        raise UsageError(f"--dataset applies to the ablation and scaling tables, not '{name}'.")
    write_or_print(build_table(name, load_runs_noting_skips(runs_dir), **kw).render(fmt), out)


leaderboard_app = typer.Typer(no_args_is_help=True, help="Export a ranked leaderboard.")
app.add_typer(leaderboard_app, name="leaderboard")


@leaderboard_app.command("export")
@handle_errors
def leaderboard_export(runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
                       fmt: str = typer.Option("markdown", "--format", help="markdown | csv"),
                       out: Optional[Path] = typer.Option(None, "-o", "--out", help="e.g. LEADERBOARD.md")):
    """Rank models per dataset and metric, with params, N, steps, FLOPs/answer, hardware, links."""
    from gram_bench.leaderboards.export import export

    write_or_print(export(load_runs_noting_skips(runs_dir), fmt, out), out)


@app.command()
@handle_errors
def ablation(task: str = typer.Option("nqueens", "--task"),
             profile: str = typer.Option("cpu", "--profile"),
             seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
             only: Optional[str] = typer.Option(None, "--only", help="Comma-separated variant keys (default: all)."),
             dry_run: bool = typer.Option(False, "--dry-run", help="List the grid and what would run."),
             device: str = typer.Option("auto", "--device"),
             runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
             data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
             set_: Optional[List[str]] = typer.Option(None, "--set", help="KEY=VALUE for every run of the grid, "
                                                      "repeatable; only train.* keys outside the run id "
                                                      "(train.threads, train.max_minutes, ...)."),
             out: Optional[Path] = typer.Option(None, "-o", "--out", help="Table file (default: "
                                                "<runs-dir>/tables/ablation-<dataset>-<profile>.md).")):
    """Run the missing runs of the ablation grid (reusing finished ones), then write its table."""
    from gram_bench.harness.ablation import run_ablation
    from gram_bench.harness.config import resolve
    from gram_bench.core.identity import TRAIN_LOGGING
    from gram_bench.core.variants import VARIANTS
    from gram_bench.leaderboards.tables import build_table
    from gram_bench.tasks import TASKS

    keys = [v.key for v in VARIANTS]
    chosen = [k.strip() for k in only.split(",") if k.strip()] if only else None
    bad = [k for k in chosen or [] if k not in keys]
    if bad:
        raise UsageError(f"Unknown ablation variant(s) {', '.join(bad)}; choose from {', '.join(keys)}.")
    sets = parse_sets(set_)
    bad = [k for k in sets if not (k.startswith("train.") and k[6:] in TRAIN_LOGGING)]
    if bad:
        raise UsageError(f"ablation --set takes only the train keys outside the run id "
                         f"({', '.join('train.' + k for k in TRAIN_LOGGING)}), got {', '.join(bad)}; "
                         f"run a changed grid cell with `gram-bench run`.")
    data_root = default_data_dir(data_dir)
    run_ablation(task, profile, parse_seeds(seeds), runs_dir, data_root, device, console, chosen, dry_run, sets)
    if dry_run:
        return
    cfg = resolve(task, "gram", profile)
    dataset = TASKS.get(task)(cfg.task, data_root).dir_name()
    text = build_table("ablation", load_runs_noting_skips(runs_dir), profile=profile, dataset=dataset).render("markdown")
    write_or_print(text, out or runs_dir / "tables" / f"ablation-{dataset}-{profile}.md")


@app.command()
@handle_errors
def plot(kind: str = typer.Argument(..., help="scaling | solutions | coverage | curves"),
         run_dirs: List[Path] = typer.Argument(..., help="One or more run directories."),
         out: Path = typer.Option(Path("plot.png"), "-o", "--out", help="Writes this PNG and an SVG beside it."),
         select: str = typer.Option("vote", "--select")):
    """Plot width x depth scaling, accuracy vs solutions, coverage vs N, or training curves."""
    from gram_bench.leaderboards.plots import plot as draw
    from gram_bench.metrics import SELECTIONS

    if select not in SELECTIONS:
        raise UsageError(f"--select must be one of {', '.join(SELECTIONS)}, got '{select}'.")

    for p in draw(kind, run_dirs, out, select):
        console.print(f"wrote {escape(str(p))}")


def main() -> None:
    from gram_bench.harness import dist

    code: int | str | None = 1
    try:
        app()
        code = 0
    except SystemExit as e:
        code = e.code
        raise
    finally:  # SystemExit included: every exit path leaves the process group
        if dist.close() > 1:
            # One rank of a torchrun job: its files are written (unbuffered, see core.io) and
            # its group is gone; exit now, without the interpreter's teardown, where the
            # backend's C++ threads and stores are destroyed in an order that still aborts a
            # rank now and then (SIGABRT, "terminate called without an active exception").
            if isinstance(code, str):  # what sys.exit(message) prints
                print(code, file=sys.stderr)
            code = code if isinstance(code, int) else (0 if code is None else 1)
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)


if __name__ == "__main__":
    main()
