"""The runner: builds a task and a model from the registries, trains, samples, verifies,
and writes the run record (DESIGN.md section 5). It knows neither task nor model internals.

Reliability: the process writing a run directory holds its lock (`.lock`); every
file is written atomically; the checkpoint holds everything the next step depends on (model,
EMA, optimizer, data position, carry, the partial log averages, and the torch, CUDA, numpy
and Python RNG states), so a run killed at any moment and resumed ends bit-identical to an
uninterrupted one. A NaN/inf loss part or gradient stops the run before the update
(`train.nonfinite=stop`) or drops that step (`skip`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import threading
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gram_bench.harness import dist
from gram_bench.harness.config import TRAIN_LOGGING, RunConfig, config_diff, save_config
from gram_bench.harness.device import autocast, pick_device
from gram_bench.harness.precision import Precision, fixed, probe, probe_compile
from gram_bench.harness.errors import RunFailed, UsageError
from gram_bench.harness.evaluate import eval_name, evaluate, write_eval
from gram_bench.harness.io import (append_jsonl, atomic_torch_save, atomic_write_text, file_lock, read_jsonl,
                                   remove_stale_temp)
from gram_bench.harness.rundir import (LOCK_NAME, env_record, in_use_message, is_locked, lock_owner, read_status,
                                       run_lock, run_path, safe_name, write_env, write_status)
from gram_bench.models import MODELS
from gram_bench.tasks import TASKS


def progress_bar(console: Console, *fields: str) -> Progress:
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    cols += [TextColumn("{task.fields[%s]}" % f) for f in fields]
    cols += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    return Progress(*cols, console=console, transient=False)


@contextmanager
def data_lock(task, console: Console):
    """Hold `<data root>/.<dataset>.lock` while building a dataset: two runs that need the same
    missing dataset build it once (the second waits, then verifies what the first built)."""
    def waiting(holder: str) -> None:
        console.print(f"waiting for {escape(holder or 'another process')} to finish building "
                      f"{escape(str(task.data_dir))}")

    with file_lock(task.data_root / f".{task.dir_name()}.lock", lock_owner(), wait=math.inf, on_wait=waiting):
        yield


def ensure_data(task, console: Console) -> None:
    if (task.data_dir / "manifest.json").exists():
        task.verify_files()
        return
    with data_lock(task, console):
        if (task.data_dir / "manifest.json").exists():  # built by another process while we waited
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
    """Linear warm-up, then constant (TRM) or a cosine decay to 0 at `cfg.steps`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        done = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
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
    if cfg.train.compile is True:
        check_compiler(device)
    task = TASKS.get(cfg.task_name)(cfg.task, data_root)
    if console is not None:
        if dist.is_main():  # under torchrun rank 0 builds, the others wait and verify
            ensure_data(task, console)
        dist.barrier()
        if not dist.is_main():
            task.verify_files()
    else:
        task.verify_files()
    torch.manual_seed(cfg.seed)
    model = MODELS.get(cfg.model_name)(cfg.model, task.layout).to(device)
    if cfg.train.compile is True:
        compile_cores(model)
    return task, model


def has_compiler(device: torch.device) -> bool:
    """Whether torch.compile can build kernels here: on a CPU it needs a C++ compiler."""
    import os
    import shutil

    return device.type != "cpu" or any(shutil.which(c) for c in (os.environ.get("CXX") or "c++", "g++", "clang++"))


def check_compiler(device: torch.device) -> None:
    """torch.compile on a CPU builds C++ kernels: refuse up front when no compiler is found
    (inductor would fail inside the first training step)."""
    if not has_compiler(device):
        raise UsageError("train.compile=true on a CPU needs a C++ compiler (c++, g++ or clang++ on PATH, or $CXX); "
                         "install one, or drop train.compile.")


def compile_cores(model) -> int:
    """torch.compile (static shapes) the modules the model names (`Model.compile_targets`)
    in place, so parameter names, and checkpoints, are unchanged. Returns how many."""
    targets = model.compile_targets()
    for m in targets:
        m.compile(dynamic=False)
    return len(targets)


CHECKPOINT_KEYS = ("step", "fingerprint", "config", "model", "optimizer", "sampler", "rng")


def load_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True: tensors and plain containers only, so a checkpoint
    can never run code (a pickle that names any other callable is refused)."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 64": the error below says it all
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        msg = " ".join(str(e).split())
        if "Weights only load failed" in msg:  # torch's advice (weights_only=False) is the one thing not to do
            why = re.search(r"WeightsUnpickler error: (.*?)(?: Please use| Check the documentation|$)", msg)
            reason = why.group(1).strip() if why else ""
            msg = f"refused by the weights-only loader{': ' + reason if reason else ''}"
        if len(msg) > 300:
            msg = msg[:300] + " ..."
        raise UsageError(f"Cannot load checkpoint {path} ({type(e).__name__}: {msg}); it is corrupt, or not a "
                         f"gram-bench checkpoint (only tensors and plain containers are ever unpickled).") from None
    if not isinstance(ck, dict) or not all(k in ck for k in CHECKPOINT_KEYS) or not isinstance(ck["model"], dict):
        keys = ", ".join(map(str, ck)) if isinstance(ck, dict) else type(ck).__name__
        raise UsageError(f"Cannot load checkpoint {path}: it is not a gram-bench checkpoint (it holds {keys}).")
    return ck


def identity_view(d: dict) -> dict:
    """The parts of a saved config (`RunConfig.to_dict()`) that make a run what it is: task
    data fields, model, training (less logging), seed, profile; not eval or overrides."""
    if not isinstance(d, dict):
        return {}
    out = {k: d.get(k) for k in ("task", "model", "seed", "profile")}
    out["task"] = {k: v for k, v in (d.get("task") or {}).items() if k not in ("data_dir", "eval_variants", "tie_break")}
    out["train"] = {k: v for k, v in (d.get("train") or {}).items() if k not in TRAIN_LOGGING}
    return out


def check_checkpoint(ck: dict, cfg: RunConfig, path: Path, *, strict: bool = True, ignore: tuple[str, ...] = ()
                     ) -> None:
    """Refuse a checkpoint written for another config or model, naming what differs.
    `strict` (resume): the fingerprints must match. Otherwise (eval): every setting both
    configs have must agree, except `ignore` (e.g. inference-only `model.decode`)."""
    if strict and ck.get("fingerprint") == cfg.fingerprint():
        return
    diff = [d for d in config_diff(identity_view(ck.get("config")), identity_view(cfg.to_dict()))
            if d.split(":", 1)[0] not in ignore and (strict or "<unset>" not in d)]
    if not diff and not strict:
        return
    what = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    if not what:
        what = f"fingerprint {ck.get('fingerprint')} in the checkpoint, {cfg.fingerprint()} for this config"
    raise UsageError(f"{path} was written by another config (checkpoint -> this run: {what}); use --force to start "
                     f"over.")


def load_model_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    """`model.load_state_dict`, with a refusal that names the missing, unexpected and
    mis-shaped weights when the checkpoint belongs to another model."""
    try:
        model.load_state_dict(state)
        return
    except (RuntimeError, TypeError, ValueError, AttributeError, KeyError):
        pass
    own = model.state_dict()
    shape = lambda v: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__  # noqa: E731
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    bad = [f"{k} {shape(state[k])} vs {shape(own[k])}" for k in own if k in state and shape(state[k]) != shape(own[k])]
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("shape (checkpoint vs model)", bad)):
        if items:
            parts.append(f"{label}: {', '.join(map(str, items[:3]))}" + (f" (+{len(items) - 3})" if len(items) > 3 else ""))
    raise UsageError(f"{path} does not fit this model ({'; '.join(parts) or 'unreadable weights'}); it was written "
                     f"by another model or config.")


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
            "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]}}


def _set_rng_state(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
    if rng.get("numpy") is not None:
        n = rng["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if rng.get("python") is not None:
        py = rng["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler pre-empting the job) turned into an exception, so the run records
    `failed: terminated` and cleans up its temp files on the way out."""


@contextmanager
def sigterm_as_exception():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("terminated by SIGTERM")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


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
    skip = _refuse_or_skip(rdir, resume, force, console, check_lock=main)
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
        if _refuse_or_skip(rdir, resume, force, console, check_lock=False):  # again, now that we hold the lock
            return rdir
        if force:
            clear_run_dir(rdir)
        remove_stale_temp(rdir)
        _run_locked(cfg, task, model, rdir, device, prec, resume, console)
    return rdir


def choose_precision(cfg: RunConfig, task, model, device: torch.device, console: Console,
                     rdir: Path | None = None) -> Precision:
    """`train.precision` resolved for training and sampling: an explicit dtype or CUDA's bf16
    as is; `auto` on a CPU reuses the choice recorded in `rdir`'s env.json (a resumed run),
    else times both dtypes on the run's own model and shapes (`gram_bench.harness.precision`).
    Under torchrun every rank takes rank 0's measurement."""
    prec = fixed(cfg.train.precision, device)
    if prec is None and rdir is not None:
        prec = recorded_precision(rdir)
    if prec is None:
        data, es = task.train_set().to(device), task.eval_set(cfg.eval.split)
        batch = data.batch(torch.arange(min(dist.local_batch(cfg.train.batch_size), len(data)), device=device))
        rows = max(1, cfg.eval.batch_size // cfg.eval.samples)
        tc = cfg.train

        def step(twin, opt, b, carry, bf16):
            return train_step(twin, opt, b, carry, device=device, bf16=bf16, grad_clip=tc.grad_clip, lr_scale=1.0)[2]

        with console.status("train.precision=auto: timing fp32 and bf16 training steps and sampling batches"):
            prec = probe(model, batch, es.inputs[:rows].to(device), es.puzzle_ids[:rows].to(device),
                         cfg.eval.samples, device, step)
        if dist.world_size() > 1:
            prec = dist.gather_objects(prec)[0]
    prec = _choose_compile(cfg, task, model, device, console, prec)
    console.print(escape(prec.describe()))
    return prec


def _choose_compile(cfg: RunConfig, task, model, device: torch.device, console: Console, prec: Precision) -> Precision:
    """`train.compile` resolved: true (already compiled by `build`) and false as asked; `auto`
    keeps a recorded choice (a resumed run), stays eager without a C++ compiler, else times
    eager and compiled training steps in the chosen dtype (`precision.probe_compile`) and
    compiles the model when the compiled step is faster."""
    want = cfg.train.compile
    if want != "auto":
        return dataclasses.replace(prec, compile=bool(want), compile_how="asked")
    if prec.how == "recorded" and prec.compile_how != "asked":
        if prec.compile:
            compile_cores(model)
        return prec
    if not has_compiler(device):
        return dataclasses.replace(prec, compile=False, compile_how="no C++ compiler")
    if not model.compile_targets():
        return dataclasses.replace(prec, compile=False, compile_how="nothing to compile")
    data = task.train_set().to(device)
    batch = data.batch(torch.arange(min(dist.local_batch(cfg.train.batch_size), len(data)), device=device))
    tc = cfg.train

    def step(twin, opt, b, carry, bf16):
        return train_step(twin, opt, b, carry, device=device, bf16=bf16, grad_clip=tc.grad_clip, lr_scale=1.0)[2]

    with console.status("train.compile=auto: compiling a copy of the model and timing eager and compiled steps"):
        t = probe_compile(model, batch, device, step, prec.train, compile_cores)
    if dist.world_size() > 1:
        t = dist.gather_objects(t)[0]
    on = t["compiled"] < t["eager"]
    if on:
        compile_cores(model)
    return dataclasses.replace(prec, compile=on, compile_how="probe", timings={**prec.timings, "compile_step": t})


def recorded_precision(rdir: Path) -> Precision | None:
    """The precision a run recorded in its env.json, or None."""
    try:
        return Precision.from_record(json.loads((Path(rdir) / "env.json").read_text())["precision"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _refuse_or_skip(rdir: Path, resume: bool, force: bool, console: Console, check_lock: bool = True) -> bool:
    """True when the run is finished and nothing is asked (skip it); UsageError when the run
    directory is in use, or exists unfinished without --resume or --force."""
    if check_lock and is_locked(rdir):
        raise UsageError(in_use_message(rdir))
    status = read_status(rdir)
    if status is None or force:
        return False
    if status == "finished" and not resume:
        console.print(f"[green]{escape(str(rdir))} already finished[/]; pass --force to run it again.")
        return True
    if not resume:
        gone = " (its process is gone: it was killed or crashed)" if status == "running" else ""
        raise UsageError(f"Run directory {rdir} exists (status: {status}){gone}; pass --resume to continue it or "
                         f"--force to start over.")
    return False


def clear_run_dir(rdir: Path) -> None:
    """--force: delete everything in the run directory but its lock (which we hold)."""
    for p in rdir.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


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


MAX_CONSECUTIVE_SKIPS = 10  # train.nonfinite=skip: this many non-finite steps in a row stop the run anyway


def _nonfinite_report(parts: dict[str, torch.Tensor], model: torch.nn.Module) -> str:
    """'loss part kl (kl=nan, loss=nan)' or 'gradient of f_L.0.w (grad_norm=inf)'."""
    bad = {k: v for k, v in parts.items() if not bool(torch.isfinite(v).all())}
    vals = ", ".join(f"{k}={float(v.float().reshape(-1)[0]):g}" for k, v in bad.items())
    losses = [k for k in bad if k != "grad_norm"]
    if losses:
        named = [k for k in losses if k != "loss"] or ["loss"]
        return f"loss part{'s' if len(named) > 1 else ''} {', '.join(named)} ({vals})"
    where = next((n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())),
                 None)
    return f"gradient{f' of {where}' if where else ''} ({vals})"


def make_optimizer(model: torch.nn.Module, tc, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices outside the embeddings (fused on CUDA)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=device.type == "cuda")


def train_step(model, opt, batch: dict, carry, *, device: torch.device, bf16: bool, grad_clip: float,
               lr_scale: float = 1.0, ddp=None, ema=None, step: int = 0):
    """One optimizer step, as `train` and `gram-bench bench` both run it: the model's loss
    (through `ddp` when data parallel), backward, gradient clipping, and, only if the loss, its
    logged parts and the gradient norm are all finite (on every rank), AdamW, the sparse
    puzzle update (`lr_scale` = schedule lr / base lr) and the EMA.

    Returns (finite, parts, new_carry): `parts` holds the detached loss, the model's logged
    values and `grad_norm`. After a non-finite step nothing was updated and the gradients are
    left in place, so the caller can name the parameter (see `train.nonfinite`); the next
    step clears them before its backward."""
    with autocast(device, bf16):
        loss, logs, new_carry = ddp(batch, carry) if ddp is not None else model.loss(batch, carry)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # under DDP the gradients are averaged over ranks here
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    parts = {"loss": loss.detach(), **{k: torch.as_tensor(v, device=device).detach() for k, v in logs.items()},
             "grad_norm": gnorm.detach()}
    # one host sync per step: the decision must be taken before the update is applied
    finite = bool(torch.isfinite(torch.cat([v.float().reshape(-1) for v in parts.values()])).all())
    if dist.world_size() > 1:  # every rank takes the same decision
        finite = not dist.any_rank(not finite)
    if finite:
        opt.step()
        model.sparse_step(lr_scale)
        if ema is not None:
            ema.update(model, step)
    return finite, parts, new_carry


def train(cfg: RunConfig, task, model, rdir: Path, device: torch.device, prec: Precision, console: Console) -> None:
    tc = cfg.train
    data = task.train_set().to(device)
    sampler = EpochSampler(len(data), cfg.seed)
    opt = make_optimizer(model, tc, device)
    ema = EMA(model, tc.ema) if tc.ema > 0 else None
    ddp = dist.wrap_ddp(model, device)  # None in a single process
    main, world = dist.is_main(), dist.world_size()
    step, carry, elapsed_before = 0, None, 0.0
    # running sums of the logged quantities since the last log line (checkpointed, so a
    # resumed run logs the same averages as an uninterrupted one)
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
    n_acc, ex_log, skipped, skipped_total, in_a_row, ckpt_step = 0, 0, 0, 0, 0, None
    ckpt_path = rdir / "checkpoint.pt"
    log_path = rdir / "train.jsonl"
    if ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        check_checkpoint(ck, cfg, ckpt_path)
        load_model_state(model, ck["model"], ckpt_path)
        try:
            opt.load_state_dict(ck["optimizer"])
            if ema is not None and ck.get("ema") is not None:
                shadow = {k: v.to(device) for k, v in ck["ema"].items()}
                if {k: v.shape for k, v in shadow.items()} != {k: v.shape for k, v in ema.shadow.items()}:
                    raise ValueError("its EMA weights do not match the model")
                ema.shadow = shadow
            sampler.load_state_dict(ck["sampler"])
            if world == 1:
                carry = _tree_to(ck["carry"], device) if ck.get("carry") is not None else None
                _set_rng_state(ck["rng"], device)
            elif len(ck.get("ranks") or []) == world:  # this rank's carry and RNG streams
                mine = ck["ranks"][dist.rank()]
                carry = _tree_to(mine["carry"], device) if mine.get("carry") is not None else None
                _set_rng_state(mine["rng"], device)
            else:  # another number of processes: fresh carried state and per-rank streams
                carry = None
                torch.manual_seed(cfg.seed + 1_000_003 * (dist.rank() + step))
            step, elapsed_before = int(ck["step"]), float(ck.get("elapsed", 0.0))
            acc = ck.get("log_acc") or {}
            sums.update({k: v.to(device) for k, v in (acc.get("sums") or {}).items()})
            n_acc, ex_log = int(acc.get("n", 0)), int(acc.get("examples", 0))
            skipped, skipped_total = int(acc.get("skipped", 0)), int(ck.get("nonfinite_skipped", 0))
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
            raise UsageError(f"{ckpt_path} cannot be resumed ({type(e).__name__}: {e}); use --force to start "
                             f"over.") from None
        ckpt_step = step
        if main and log_path.exists():  # drop log lines written after the checkpoint (and a torn last line)
            try:
                rows = read_jsonl(log_path)
            except ValueError as e:
                raise UsageError(f"{e}; fix or delete that line, then resume.") from None
            kept = [r for r in rows if isinstance(r.get("step", 0), int) and r.get("step", 0) <= step]
            atomic_write_text(log_path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept))
        console.print(f"resumed from step {step}")
    else:
        if main and log_path.exists():
            log_path.unlink()
        np.random.seed(cfg.seed)  # the global numpy and Python RNGs too (torch's was seeded by `build`):
        random.seed(cfg.seed)  # whatever a model or task draws from them is reproducible and checkpointed
        if dist.rank() > 0:  # data parallel: every rank its own stream (rank 0 keeps the single-process one)
            torch.manual_seed(cfg.seed + 1_000_003 * dist.rank())
    if step >= tc.steps:
        return

    def save(step_now: int, elapsed: float) -> None:
        nonlocal ckpt_step
        ranks = None
        if world > 1:  # every rank's carried state and RNG streams, gathered to rank 0
            ranks = dist.gather_objects({"carry": _tree_to(carry, torch.device("cpu")), "rng": _rng_state(device)})
        ckpt_step = step_now
        if not main:
            return
        atomic_torch_save(ckpt_path, {
            "step": step_now, "fingerprint": cfg.fingerprint(), "config": cfg.to_dict(),
            "model": model.state_dict(), "ema": ema.shadow if ema else None,
            "optimizer": opt.state_dict(), "sampler": sampler.state_dict(),
            "carry": carry, "rng": _rng_state(device), "elapsed": elapsed,
            "log_acc": {"sums": dict(sums), "n": n_acc, "examples": ex_log, "skipped": skipped},
            "nonfinite_skipped": skipped_total, "world_size": world, "ranks": ranks,
        })

    model.train()
    t_start = time.perf_counter()
    t_log = time.perf_counter()
    with progress_bar(console, "stats") as prog:
        tid = prog.add_task("train", total=tc.steps, completed=step, stats="")
        while step < tc.steps:
            idx = sampler.next(tc.batch_size).to(device)
            batch = data.batch(dist.my_slice(idx))  # this rank's share of the global batch
            if carry is None:
                carry = model.initial_carry(batch, device)
            lr = lr_at(step, tc)
            for g in opt.param_groups:
                g["lr"] = lr
            finite, parts, new_carry = train_step(model, opt, batch, carry, device=device, bf16=prec.train,
                                                  grad_clip=tc.grad_clip, lr_scale=lr / tc.lr, ddp=ddp,
                                                  ema=ema, step=step)
            if finite:
                carry, in_a_row = new_carry, 0
                for k in ("loss", "grad_norm", *(k for k in parts if k not in ("loss", "grad_norm"))):
                    sums[k] = sums[k] + parts[k].float()
                n_acc += 1
            else:
                what = f"non-finite {_nonfinite_report(parts, model)} at step {step + 1}"
                kept = f"the last good checkpoint (step {ckpt_step}) is kept" if ckpt_step is not None else \
                    "no checkpoint had been written yet"
                if tc.nonfinite == "stop":
                    raise RunFailed(f"{what}; the update was not applied and {kept}. Lower train.lr, or resume with "
                                    f"--set train.nonfinite=skip to drop such steps.")
                opt.zero_grad(set_to_none=True)  # the step is dropped: no optimizer, sparse or EMA update
                in_a_row += 1
                skipped += 1
                skipped_total += 1
                if in_a_row > MAX_CONSECUTIVE_SKIPS:
                    raise RunFailed(f"{what}, the {in_a_row}th such step in a row (train.nonfinite=skip gives up "
                                    f"after {MAX_CONSECUTIVE_SKIPS}); {kept}. Lower train.lr.")
                carry = None  # and restart the carried state (it came from the bad forward)
                console.print(f"[yellow]skipped step {step + 1}: {escape(what)}[/]")
            step += 1
            ex_log += tc.batch_size
            if step % tc.log_every == 0 or step == tc.steps:
                now = time.perf_counter()
                logged = dist.mean_across(dict(sums)) if world > 1 else sums  # averaged over ranks
                row = {"step": step, "lr": lr, **{k: round(float(v) / n_acc, 5) for k, v in logged.items() if n_acc},
                       "examples_per_s": round(ex_log / max(now - t_log, 1e-9), 1),
                       "elapsed_s": round(elapsed_before + now - t_start, 2)}
                if skipped:
                    row["nonfinite_skipped"] = skipped
                if world > 1:
                    row["world_size"] = world
                if main:
                    append_jsonl(log_path, row)
                sums.clear()
                n_acc, t_log, ex_log, skipped = 0, now, 0, 0
                stats = train_stats(row)
                prog.update(tid, stats=stats)
                if not console.is_terminal and step % max(tc.log_every, tc.steps // 20) < tc.log_every:
                    console.print(f"step {step}/{tc.steps} {stats} elapsed {row['elapsed_s']:.0f}s")
            if main and tc.eval_every and step % tc.eval_every == 0 and step < tc.steps:
                row = periodic_eval(cfg, task, model, ema, device, prec.sample)
                append_jsonl(log_path, {"step": step, **row})
                console.print(f"step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items()))
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                save(step, elapsed_before + time.perf_counter() - t_start)
            prog.update(tid, completed=step)
            over = bool(tc.max_minutes) and elapsed_before + time.perf_counter() - t_start > 60 * tc.max_minutes
            if world > 1 and tc.max_minutes:
                over = dist.any_rank(over)  # all ranks stop at the same step
            if over:
                console.print(f"[yellow]train.max_minutes={tc.max_minutes} reached at step {step}; stopping "
                              f"training early[/]")
                save(step, elapsed_before + time.perf_counter() - t_start)
                if main:
                    append_jsonl(log_path, {"step": step, "stopped_early": True})
                break


def train_stats(row: dict) -> str:
    """The progress line of a train.jsonl row. A model with a posterior shows its training
    exact (`post`, sees the answer), the prior's exact on the same batch (`prior`, what
    inference does) and the KL in nats per example; others show their exact (`acc`)."""
    if "prior_exact" in row:
        parts = f"post {row.get('exact', 0):.2f} prior {row['prior_exact']:.2f} kl {row.get('kl', 0):.1f}"
    else:
        parts = f"acc {row.get('exact', 0):.2f}"
    return f"loss {row.get('loss', float('nan')):.3f} {parts} {row['examples_per_s']:.0f} ex/s"


def periodic_eval(cfg: RunConfig, task, model, ema, device, bf16) -> dict:
    tc = cfg.train
    with (ema.applied(model) if ema else nullcontext()):
        _, summary = evaluate(model, task, samples=tc.eval_samples, steps=cfg.eval.steps or model.default_steps,
                              limit=tc.eval_examples, batch_rows=cfg.eval.batch_size, device=device, bf16=bf16,
                              shard=False)
    m = summary["metrics"]
    out = {"eval_accuracy_first": m["accuracy_first"]["value"], "eval_accuracy_oracle": m["accuracy_oracle"]["value"]}
    if "coverage" in m:
        out["eval_coverage"] = m["coverage"]["value"]
    return out



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
