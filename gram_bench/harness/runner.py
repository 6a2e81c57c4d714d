"""The runner: builds a task and a model from the registries, trains, samples, verifies,
and writes the run record (DESIGN.md section 5). It knows neither task nor model internals.

Reliability: the process writing a run directory holds its lock (`.lock`) and writes every
file atomically (`io`); the checkpoint (`checkpoint`) lets a run killed at any moment resume
bit-identical; `training` decides what a non-finite step does."""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from gram_bench.harness import dist
from gram_bench.harness.build import build, choose_precision, recorded_precision
from gram_bench.harness.checkpoint import check_checkpoint, load_checkpoint, load_model_state
from gram_bench.harness.config import RunConfig, save_config
from gram_bench.harness.device import pick_device
from gram_bench.harness.display import print_summary, progress_bar
from gram_bench.core.errors import RunFailed, UsageError
from gram_bench.harness.evaluate import eval_name, evaluate, write_eval
from gram_bench.core.io import remove_stale_temp
from gram_bench.harness.lifecycle import Terminated, clear_run_dir, refuse_or_skip, sigterm_as_exception
from gram_bench.harness.precision import Precision, fixed
from gram_bench.core.runs import is_locked, safe_name
from gram_bench.harness.rundir import env_record, in_use_message, read_status, run_lock, run_path, write_env, write_status
from gram_bench.harness.training import train
from gram_bench.models import MODELS


def run(cfg: RunConfig, runs_dir: Path = Path("runs"), data_root: Path = Path("data"), device_name: str = "auto",
        resume: bool = False, force: bool = False, console: Console | None = None) -> Path:
    """Train and evaluate one (task, model, seed); returns the run directory.

    Under torchrun (WORLD_SIZE > 1) every rank calls this: they join one process group, train
    data-parallel and evaluate a shard each; rank 0 alone takes the lock and writes files."""
    device_name = dist.init(device_name)
    main = dist.is_main()
    console = console or Console()
    if not main:
        console = Console(quiet=True)
    device = pick_device(device_name)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # compiled kernels are cached beside the runs, so the next run of a shape compiles from cache
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(runs_dir).resolve() / ".inductor-cache"))
    rdir = run_path(runs_dir, cfg)
    skip = refuse_or_skip(rdir, resume, force, console, check_lock=main)
    dist.barrier()  # every rank has read the status before rank 0 writes anything
    if skip:
        return rdir
    dist.local_batch(cfg.train.batch_size)  # refuses a global batch that does not split evenly
    task, model = build(cfg, data_root, device, console)
    prec = choose_precision(cfg, task, model, device, console, rdir if resume else None)
    if not main:
        with sigterm_as_exception():
            train(cfg, task, model, rdir, device, prec, console)
            final_eval(cfg, task, model, rdir, device, prec.sample, console)
        return rdir
    rdir.mkdir(parents=True, exist_ok=True)
    with run_lock(rdir), sigterm_as_exception():
        if refuse_or_skip(rdir, resume, force, console, check_lock=False):  # again, now that we hold the lock
            return rdir
        if force:
            clear_run_dir(rdir)
        remove_stale_temp(rdir)
        _run_locked(cfg, task, model, rdir, device, prec, resume, console)
    return rdir


def _run_locked(cfg: RunConfig, task, model, rdir: Path, device: torch.device, prec: Precision, resume: bool,
                console: Console) -> None:
    save_config(cfg, rdir / "config.yaml")
    env = env_record(device, prec.train)
    env["precision"] = prec.record()
    env["params"] = model.num_params()
    env["dataset"] = task.dir_name()
    old_env = rdir / "env.json"
    if resume and old_env.exists():  # keep the first start time; list every resume
        try:
            old = json.loads(old_env.read_text())
            env["resumed_at"] = old.get("resumed_at", []) + [env["start_time"]]
            env["start_time"] = old.get("start_time", env["start_time"])
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, OSError):
            pass
    write_env(rdir, env)
    write_status(rdir, "running")
    console.print(f"[bold]{cfg.task_name} x {cfg.model_name}[/] profile={cfg.profile} seed={cfg.seed} "
                  f"params={model.num_params():,} device={device} -> {escape(str(rdir))}")
    try:
        train(cfg, task, model, rdir, device, prec, console)
        final_eval(cfg, task, model, rdir, device, prec.sample, console)
    except Terminated:
        write_status(rdir, "failed: terminated by SIGTERM (resume with --resume)")
        raise
    except KeyboardInterrupt:
        write_status(rdir, "failed: interrupted (resume with --resume)")
        raise
    except RunFailed as e:
        write_status(rdir, f"failed: {e}")
        raise
    except UsageError as e:
        write_status(rdir, f"failed: {e}")
        raise
    except Exception as e:
        write_status(rdir, f"failed: {type(e).__name__}: {e}")
        raise RunFailed(f"run {rdir} crashed: {type(e).__name__}: {e}") from e
    env["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_env(rdir, env)
    write_status(rdir, "finished")


def final_eval(cfg: RunConfig, task, model, rdir: Path, device, bf16, console: Console,
               samples: int | None = None, steps: int | None = None, selection: str = "vote",
               name: str | None = None, ignore: tuple[str, ...] = ()) -> dict:
    """Evaluate with EMA weights into eval/<name>.json; the run's own final eval is
    eval/<split>.json, and `gram-bench eval` names its files so that it never overwrites it.

    An interrupted evaluation is simply redone: its two files are each written atomically,
    records first and the summary last, and a run is `finished` only after both. A
    checkpoint whose settings differ from `cfg` (other than the `ignore`d keys) is refused."""
    ec = cfg.eval
    samples = samples or ec.samples
    steps = steps or ec.steps or model.default_steps
    ckpt = rdir / "checkpoint.pt"
    ema_state = None
    if ckpt.exists():
        ck = load_checkpoint(ckpt)
        check_checkpoint(ck, cfg, ckpt, strict=False, ignore=ignore)
        load_model_state(model, ck["model"], ckpt)
        ema_state = ck.get("ema")
    if ema_state is not None:
        try:
            load_model_state(model, {**model.state_dict(), **{k: v.to(device) for k, v in ema_state.items()}}, ckpt)
        except AttributeError:
            raise UsageError(f"{ckpt} holds malformed EMA weights; it is not a gram-bench checkpoint.") from None
    with progress_bar(console, "rate") as prog:
        tid = prog.add_task(f"eval {ec.split} N={samples} steps={steps}", total=None, rate="")
        records, summary = evaluate(model, task, samples=samples, steps=steps, split=ec.split, limit=ec.limit,
                                    batch_rows=ec.batch_size, device=device, bf16=bf16,
                                    progress=lambda i, n: prog.update(tid, completed=i, total=n))
    if not dist.is_main():  # under torchrun rank 0 writes the gathered records
        return summary
    name = name or eval_name(ec.split, samples, steps, own=True)
    summary["model_params"] = model.num_params()
    summary["ema"] = ema_state is not None
    path = write_eval(rdir, name, records, summary, selection)
    for extra in task.write_artifacts(rdir / "eval", name, records):
        console.print(f"wrote {escape(str(extra))}")
    print_summary(console, summary, title=f"{cfg.task_name} x {cfg.model_name} ({rdir.name}) -> {path}")
    return summary


def evaluate_run(run_dir: Path, widths: list[int], depths: list[int], *, select: str = "vote",
                 limit: int | None = None, sets: dict | None = None, device_name: str = "auto",
                 data_root: Path = Path("data"), console: Console | None = None, skip_existing: bool = False
                 ) -> list[Path]:
    """Evaluate a trained run at every (width, depth) pair into eval/test-n<N>-s<steps>[...].json.

    `sets` may change inference-only model fields (e.g. model.decode=sample); the file name
    then ends in `+decode=sample`. With `skip_existing`, files already written are kept."""
    import dataclasses

    from gram_bench.harness.config import build_dataclass, load_config

    device_name = dist.init(device_name)  # under torchrun: shard the inputs, rank 0 writes
    console = console or Console()
    if not dist.is_main():
        console = Console(quiet=True)
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise UsageError(f"{run_dir} is not a run directory (no config.yaml); pass runs/<task>/<model>/<run-id>.")
    if not (run_dir / "checkpoint.pt").exists():
        raise UsageError(f"{run_dir} has no checkpoint.pt; train it first with gram-bench run ... --resume.")
    if dist.is_main() and is_locked(run_dir):
        raise UsageError(in_use_message(run_dir))
    cfg = load_config(run_dir / "config.yaml")
    sets = dict(sets or {})
    if sets:
        allowed = MODELS.get(cfg.model_name).Config.inference_fields
        bad = [k for k in sets if not (k.startswith("model.") and k[6:] in allowed)]
        if bad:
            fields = ", ".join("model." + f for f in allowed) or "none for this model"
            raise UsageError(f"eval --set only takes inference-only model fields ({fields}), got "
                             f"{', '.join(bad)}; other settings need a new run.")
        model_cfg = build_dataclass(type(cfg.model), {**dataclasses.asdict(cfg.model),
                                                      **{k[6:]: v for k, v in sets.items()}}, "model.")
        try:
            model_cfg.check()
        except ValueError as e:
            raise UsageError(f"{e} (a model setting).") from None
        cfg = dataclasses.replace(cfg, model=model_cfg)
    tag = "+".join(f"{k[6:]}={v}" for k, v in sorted(sets.items()))
    own_limit = cfg.eval.limit
    if limit is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, limit=limit))
    device = pick_device(device_name)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    task, model = build(cfg, data_root, device)
    # sampling precision: explicit, CUDA's, or the one the run measured (fp32 when it has none)
    prec = fixed(cfg.train.precision, device) or recorded_precision(run_dir)
    sample_bf16 = bool(prec and prec.sample)
    out = []
    with run_lock(run_dir) if dist.is_main() else nullcontext():
        status = read_status(run_dir)
        if status != "finished" and dist.is_main():
            console.print(f"[yellow]note:[/] {escape(str(run_dir))} is not finished (status: {escape(str(status))}); "
                          f"evaluating its last checkpoint")
        if dist.is_main():
            remove_stale_temp(run_dir / "eval")
        for n in widths or [cfg.eval.samples]:
            for d in depths or [cfg.eval.steps or model.default_steps]:
                name = safe_name(eval_name(cfg.eval.split, n, d, limit=cfg.eval.limit if cfg.eval.limit != own_limit
                                           else 0, tag=tag), "eval name")
                path = run_dir / "eval" / f"{name}.json"
                if not (skip_existing and path.exists()):
                    final_eval(cfg, task, model, run_dir, device, sample_bf16, console,
                               samples=n, steps=d, selection=select, name=name,
                               ignore=tuple(sets))
                out.append(path)
    return out

