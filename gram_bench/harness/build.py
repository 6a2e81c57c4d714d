"""Building a run: the task (its data built once, under a lock, when missing) and the model
from the registries, initialised from the run's seed, and the execution settings resolved
before training: `train.precision` per phase and `train.compile`."""

from __future__ import annotations

import dataclasses
import json
import math
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from gram_bench.harness import dist
from gram_bench.harness.config import RunConfig
from gram_bench.harness.display import progress_bar
from gram_bench.core.errors import UsageError
from gram_bench.core.io import file_lock
from gram_bench.harness.precision import Precision, fixed, probe, probe_compile
from gram_bench.harness.rundir import lock_owner
from gram_bench.harness.training import train_step
from gram_bench.models import MODELS
from gram_bench.tasks import TASKS


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


def choose_precision(cfg: RunConfig, task, model, device: torch.device, console: Console,
                     rdir: Path | None = None) -> Precision:
    """`train.precision` resolved for training and sampling: an explicit dtype or CUDA's bf16
    as is; `auto` on a CPU reuses the choice recorded in `rdir`'s env.json (a resumed run),
    else times both dtypes on the run's own model and shapes (`gram_bench.harness.precision`).
    Under torchrun every rank takes rank 0's measurement."""
    prec = fixed(cfg.train.precision, device)
    if prec is None and rdir is not None:
        prec = recorded_precision(rdir)
    probe_batch = _ProbeBatch(cfg, task, device)
    if prec is None:
        es = task.eval_set(cfg.eval.split)
        rows = max(1, cfg.eval.batch_size // cfg.eval.samples)
        with console.status("train.precision=auto: timing fp32 and bf16 training steps and sampling batches"):
            prec = probe(model, probe_batch.get(), es.inputs[:rows].to(device), es.puzzle_ids[:rows].to(device),
                         cfg.eval.samples, device, probe_batch.step)
        if dist.world_size() > 1:
            prec = dist.gather_objects(prec)[0]
    prec = _choose_compile(cfg, model, device, console, prec, probe_batch)
    console.print(escape(prec.describe()))
    return prec


class _ProbeBatch:
    """The probes' training batch (the run's first local batch size of the training set, made
    on first use and then reused by both probes) and their training step."""

    def __init__(self, cfg: RunConfig, task, device: torch.device):
        self.cfg, self.task, self.device, self._batch = cfg, task, device, None

    def get(self) -> dict:
        if self._batch is None:
            data = self.task.train_set().to(self.device)
            n = min(dist.local_batch(self.cfg.train.batch_size), len(data))
            self._batch = data.batch(torch.arange(n, device=self.device))
        return self._batch

    def step(self, twin, opt, b, carry, bf16):
        return train_step(twin, opt, b, carry, device=self.device, bf16=bf16, grad_clip=self.cfg.train.grad_clip,
                          lr_scale=1.0)[2]


def _choose_compile(cfg: RunConfig, model, device: torch.device, console: Console, prec: Precision,
                    probe_batch: _ProbeBatch) -> Precision:
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
    with console.status("train.compile=auto: compiling a copy of the model and timing eager and compiled steps"):
        t = probe_compile(model, probe_batch.get(), device, probe_batch.step, prec.train, compile_cores)
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

