"""The runner: builds a task and a model from the registries, trains, samples, verifies,
and writes the run record (DESIGN.md section 5). It knows neither task nor model internals."""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gram_bench.harness.config import RunConfig, save_config
from gram_bench.harness.device import pick_device, use_bf16, autocast
from gram_bench.harness.errors import RunFailed, UsageError
from gram_bench.harness.evaluate import eval_name, evaluate, write_eval
from gram_bench.harness.io import append_jsonl, atomic_torch_save, read_jsonl, atomic_write_text
from gram_bench.harness.rundir import env_record, read_status, run_path, write_env, write_status
from gram_bench.models import MODELS
from gram_bench.tasks import TASKS


def progress_bar(console: Console, *fields: str) -> Progress:
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    cols += [TextColumn("{task.fields[%s]}" % f) for f in fields]
    cols += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    return Progress(*cols, console=console, transient=False)


def ensure_data(task, console: Console) -> None:
    if (task.data_dir / "manifest.json").exists():
        task.verify_files()
        return
    with progress_bar(console) as prog:
        tid = prog.add_task(f"building {task.dir_name()}", total=None)

        def cb(i: int, n: int) -> None:
            prog.update(tid, completed=i, total=n)

        manifest = task.build(progress=cb)
    console.print(f"built {escape(str(task.data_dir))}: {manifest['counts']}")


class EpochSampler:
    """Seeded shuffles, one per epoch; its state (epoch, position) is checkpointed."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._perm = self._make()

    def _make(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def next(self, k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._make()
            take = min(k, self.n - self.pos)
            out.append(self._perm[self.pos:self.pos + take])
            self.pos, k = self.pos + take, k - take
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
        self._perm = self._make()


class EMA:
    """Exponential moving average of parameters, with the warm-up-corrected decay
    min(decay, (1 + t) / (10 + t)). State keys that start or end with one of the model's
    `ema_exclude` entries (e.g. a sparse puzzle table) have no shadow: `applied` keeps them live."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        skip = tuple(getattr(model, "ema_exclude", ()))
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()
                       if v.dtype.is_floating_point and not (k.startswith(skip) or k.endswith(skip))}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)

    @contextmanager
    def applied(self, model: torch.nn.Module):
        backup = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict({**model.state_dict(), **{k: v.to(backup[k].dtype) for k, v in self.shadow.items()}})
        try:
            yield model
        finally:
            model.load_state_dict({**model.state_dict(), **backup})


def lr_at(step: int, cfg) -> float:
    """Linear warm-up then constant (TRM)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def check_fit(task_name: str, model_name: str) -> None:
    """Refuse a model that cannot work on a task: image tasks need a model that writes images
    (`Model.supports_image`), image-only models (the VAE) need an image task (`Task.images`)."""
    image = TASKS.get(task_name).images

    def fits(name: str) -> bool:
        cls = MODELS.get(name)
        return cls.supports_image if image else not cls.image_only

    if not fits(model_name):
        raise UsageError(f"Model '{model_name}' cannot {'generate images' if image else 'solve token tasks'} "
                         f"(task '{task_name}'); use one of: {', '.join(n for n in MODELS.names() if fits(n))}.")


def build(cfg: RunConfig, data_root: Path, device: torch.device, console: Console | None = None):
    """The task (its data built first when `console` is given: a layout may depend on the data,
    e.g. ARC's number of puzzle ids) and the model, initialised from the run's seed."""
    check_fit(cfg.task_name, cfg.model_name)
    task = TASKS.get(cfg.task_name)(cfg.task, data_root)
    if console is not None:
        ensure_data(task, console)
    else:
        task.verify_files()
    torch.manual_seed(cfg.seed)
    model = MODELS.get(cfg.model_name)(cfg.model, task.layout).to(device)
    return task, model


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise UsageError(f"Cannot load checkpoint {path} ({type(e).__name__}: {e}); it may be corrupt or not "
                         f"a gram-bench checkpoint.") from None


def _tree_to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _tree_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_tree_to(v, device) for v in obj)
    return obj


def run(cfg: RunConfig, runs_dir: Path = Path("runs"), data_root: Path = Path("data"), device_name: str = "auto",
        resume: bool = False, force: bool = False, console: Console | None = None) -> Path:
    """Train and evaluate one (task, model, seed); returns the run directory."""
    console = console or Console()
    device = pick_device(device_name)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    bf16 = use_bf16(cfg.train.precision, device)
    rdir = run_path(runs_dir, cfg)
    status = read_status(rdir)
    if status is not None and not force:
        if status == "finished" and not resume:
            console.print(f"[green]{escape(str(rdir))} already finished[/]; pass --force to run it again.")
            return rdir
        if not resume:
            raise UsageError(f"Run directory {rdir} exists (status: {status}); pass --resume to continue it "
                             f"or --force to start over.")
    if force and rdir.exists():
        shutil.rmtree(rdir)
    task, model = build(cfg, data_root, device, console)
    rdir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, rdir / "config.yaml")
    env = env_record(device, bf16)
    env["params"] = model.num_params()
    env["dataset"] = task.dir_name()
    old_env = rdir / "env.json"
    if resume and old_env.exists():  # keep the first start time; list every resume
        try:
            old = json.loads(old_env.read_text())
            env["resumed_at"] = old.get("resumed_at", []) + [env["start_time"]]
            env["start_time"] = old.get("start_time", env["start_time"])
        except json.JSONDecodeError:
            pass
    write_env(rdir, env)
    write_status(rdir, "running")
    console.print(f"[bold]{cfg.task_name} x {cfg.model_name}[/] profile={cfg.profile} seed={cfg.seed} "
                  f"params={model.num_params():,} device={device} bf16={bf16} -> {escape(str(rdir))}")
    try:
        train(cfg, task, model, rdir, device, bf16, console)
        final_eval(cfg, task, model, rdir, device, bf16, console)
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
    return rdir


def make_optimizer(model: torch.nn.Module, tc, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices outside the embeddings (fused on CUDA)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=device.type == "cuda")


def train(cfg: RunConfig, task, model, rdir: Path, device: torch.device, bf16: bool, console: Console) -> None:
    tc = cfg.train
    data = task.train_set().to(device)
    sampler = EpochSampler(len(data), cfg.seed)
    opt = make_optimizer(model, tc, device)
    ema = EMA(model, tc.ema) if tc.ema > 0 else None
    step, carry, elapsed_before = 0, None, 0.0
    ckpt_path = rdir / "checkpoint.pt"
    log_path = rdir / "train.jsonl"
    if ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        if ck.get("fingerprint") != cfg.fingerprint():
            raise UsageError(f"{ckpt_path} was written by another config; use --force to start over.")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if ema is not None and ck.get("ema") is not None:
            ema.shadow = {k: v.to(device) for k, v in ck["ema"].items()}
        sampler.load_state_dict(ck["sampler"])
        carry = _tree_to(ck["carry"], device) if ck.get("carry") is not None else None
        torch.set_rng_state(ck["rng"]["torch"])
        if device.type == "cuda" and ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ck["rng"]["cuda"], device)
        step, elapsed_before = int(ck["step"]), float(ck.get("elapsed", 0.0))
        if log_path.exists():  # drop log lines written after the checkpoint
            kept = [r for r in read_jsonl(log_path) if r.get("step", 0) <= step]
            atomic_write_text(log_path, "".join(json.dumps(r, separators=(",", ":")) + "\n"
                                                for r in kept))
        console.print(f"resumed from step {step}")
    elif log_path.exists():
        log_path.unlink()
    if step >= tc.steps:
        return

    def save(step_now: int, elapsed: float) -> None:
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        atomic_torch_save(ckpt_path, {
            "step": step_now, "fingerprint": cfg.fingerprint(), "config": cfg.to_dict(),
            "model": model.state_dict(), "ema": ema.shadow if ema else None,
            "optimizer": opt.state_dict(), "sampler": sampler.state_dict(),
            "carry": carry, "rng": rng, "elapsed": elapsed,
        })

    model.train()
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
    n_acc, t_start = 0, time.perf_counter()
    t_log, ex_log = time.perf_counter(), 0
    with progress_bar(console, "stats") as prog:
        tid = prog.add_task("train", total=tc.steps, completed=step, stats="")
        while step < tc.steps:
            idx = sampler.next(tc.batch_size).to(device)
            batch = data.batch(idx)
            if carry is None:
                carry = model.initial_carry(batch, device)
            lr = lr_at(step, tc)
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast(device, bf16):
                loss, logs, carry = model.loss(batch, carry)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if step % tc.log_every == 0 or step + 1 == tc.steps:
                bad = [k for k, v in {"loss": loss, **logs, "grad_norm": gnorm}.items() if not torch.isfinite(v)]
                if bad:
                    raise RunFailed(f"non-finite {', '.join(bad)} at step {step + 1}; the last good checkpoint "
                                    f"is kept")
            opt.step()
            model.sparse_step(lr / tc.lr)
            if ema is not None:
                ema.update(model, step)
            step += 1
            for k, v in {"loss": loss.detach(), "grad_norm": gnorm.detach(), **logs}.items():
                sums[k] = sums[k] + v.float()
            n_acc += 1
            ex_log += tc.batch_size
            if step % tc.log_every == 0 or step == tc.steps:
                now = time.perf_counter()
                row = {"step": step, "lr": lr, **{k: round(float(v) / n_acc, 5) for k, v in sums.items()},
                       "examples_per_s": round(ex_log / max(now - t_log, 1e-9), 1),
                       "elapsed_s": round(elapsed_before + now - t_start, 2)}
                append_jsonl(rdir / "train.jsonl", row)
                sums.clear()
                n_acc, t_log, ex_log = 0, now, 0
                stats = f"loss {row['loss']:.3f} acc {row.get('exact', 0):.2f} {row['examples_per_s']:.0f} ex/s"
                prog.update(tid, stats=stats)
                if not console.is_terminal and step % max(tc.log_every, tc.steps // 20) < tc.log_every:
                    console.print(f"step {step}/{tc.steps} {stats} elapsed {row['elapsed_s']:.0f}s")
            if tc.eval_every and step % tc.eval_every == 0 and step < tc.steps:
                row = periodic_eval(cfg, task, model, ema, device, bf16)
                append_jsonl(rdir / "train.jsonl", {"step": step, **row})
                console.print(f"step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items()))
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                save(step, elapsed_before + time.perf_counter() - t_start)
            prog.update(tid, completed=step)
            if tc.max_minutes and elapsed_before + time.perf_counter() - t_start > 60 * tc.max_minutes:
                console.print(f"[yellow]train.max_minutes={tc.max_minutes} reached at step {step}; stopping "
                              f"training early[/]")
                save(step, elapsed_before + time.perf_counter() - t_start)
                append_jsonl(rdir / "train.jsonl", {"step": step, "stopped_early": True})
                break


def periodic_eval(cfg: RunConfig, task, model, ema, device, bf16) -> dict:
    tc = cfg.train
    with (ema.applied(model) if ema else nullcontext()):
        _, summary = evaluate(model, task, samples=tc.eval_samples, steps=model.default_steps,
                              limit=tc.eval_examples, batch_rows=cfg.eval.batch_size, device=device, bf16=bf16)
    m = summary["metrics"]
    out = {"eval_accuracy_first": m["accuracy_first"]["value"], "eval_accuracy_oracle": m["accuracy_oracle"]["value"]}
    if "coverage" in m:
        out["eval_coverage"] = m["coverage"]["value"]
    return out



def final_eval(cfg: RunConfig, task, model, rdir: Path, device, bf16, console: Console,
               samples: int | None = None, steps: int | None = None, selection: str = "vote",
               name: str | None = None) -> dict:
    """Evaluate with EMA weights into eval/<name>.json; the run's own final eval is
    eval/<split>.json, and `gram-bench eval` names its files so that it never overwrites it."""
    ec = cfg.eval
    samples = samples or ec.samples
    steps = steps or ec.steps or model.default_steps
    ckpt = rdir / "checkpoint.pt"
    ema_state = None
    if ckpt.exists():
        ck = load_checkpoint(ckpt)
        model.load_state_dict(ck["model"])
        ema_state = ck.get("ema")
    if ema_state is not None:
        model.load_state_dict({**model.state_dict(), **{k: v.to(device) for k, v in ema_state.items()}})
    with progress_bar(console, "rate") as prog:
        tid = prog.add_task(f"eval {ec.split} N={samples} steps={steps}", total=None, rate="")
        records, summary = evaluate(model, task, samples=samples, steps=steps, split=ec.split, limit=ec.limit,
                                    batch_rows=ec.batch_size, device=device, bf16=bf16,
                                    progress=lambda i, n: prog.update(tid, completed=i, total=n))
    name = name or eval_name(ec.split, samples, steps, own=True)
    summary["model_params"] = model.num_params()
    summary["ema"] = ema_state is not None
    path = write_eval(rdir, name, records, summary, selection)
    for extra in task.write_artifacts(rdir / "eval", name, records):
        console.print(f"wrote {escape(str(extra))}")
    print_summary(console, summary, title=f"{cfg.task_name} x {cfg.model_name} ({rdir.name}) -> {path}")
    return summary


def print_summary(console: Console, summary: dict, title: str = "") -> None:
    from rich.table import Table

    from gram_bench.metrics.summary import is_fraction

    t = Table(title=escape(title))
    for col in ("metric", "value", "95% CI", "n"):
        t.add_column(col)
    for k, m in summary["metrics"].items():
        if k.endswith("_multi") and not k.startswith(("accuracy_first", "accuracy_vote", "coverage")):
            continue
        f = (lambda x: f"{100 * x:.1f}") if is_fraction(k) else (lambda x: f"{x:.2f}")
        t.add_row(k, f(m["value"]), f"[{f(m['ci_low'])}, {f(m['ci_high'])}]", str(m["n"]))
    console.print(t)
    console.print(f"{summary['n_examples']} inputs x {summary['samples']} samples, {summary['steps']} steps, "
                  f"{summary['answers_per_second']} answers/s; CI: {summary['ci_method']}")


def evaluate_run(run_dir: Path, widths: list[int], depths: list[int], *, select: str = "vote",
                 limit: int | None = None, sets: dict | None = None, device_name: str = "auto",
                 data_root: Path = Path("data"), console: Console | None = None, skip_existing: bool = False
                 ) -> list[Path]:
    """Evaluate a trained run at every (width, depth) pair into eval/test-n<N>-s<steps>[...].json.

    `sets` may change inference-only model fields (e.g. model.decode=sample); the file name
    then ends in `+decode=sample`. With `skip_existing`, files already written are kept."""
    import dataclasses

    from gram_bench.harness.config import build_dataclass, load_config

    console = console or Console()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise UsageError(f"{run_dir} is not a run directory (no config.yaml); pass runs/<task>/<model>/<run-id>.")
    if not (run_dir / "checkpoint.pt").exists():
        raise UsageError(f"{run_dir} has no checkpoint.pt; train it first with gram-bench run ... --resume.")
    cfg = load_config(run_dir / "config.yaml")
    sets = dict(sets or {})
    if sets:
        allowed = getattr(MODELS.get(cfg.model_name).Config, "inference_fields", ())
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
    out = []
    for n in widths or [cfg.eval.samples]:
        for d in depths or [cfg.eval.steps or model.default_steps]:
            name = eval_name(cfg.eval.split, n, d, limit=cfg.eval.limit if cfg.eval.limit != own_limit else 0,
                             tag=tag)
            path = run_dir / "eval" / f"{name}.json"
            if not (skip_existing and path.exists()):
                final_eval(cfg, task, model, run_dir, device, use_bf16(cfg.train.precision, device), console,
                           samples=n, steps=d, selection=select, name=name)
            out.append(path)
    return out
