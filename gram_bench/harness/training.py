"""Training: the seeded data sampler, the EMA, the learning-rate schedule, the optimizer, one
optimizer step (`train_step`, shared with `gram-bench bench`), and the loop (`train`) that
logs, evaluates periodically, checkpoints and resumes from a checkpoint (see `checkpoint`
for what one holds).

A NaN/inf loss part or gradient stops the run before the update (`train.nonfinite=stop`)
or drops that step (`skip`)."""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from gram_bench.harness import dist
from gram_bench.harness.checkpoint import (check_checkpoint, load_checkpoint, load_model_state, rng_state,
                                           set_rng_state, tree_to)
from gram_bench.harness.config import RunConfig
from gram_bench.harness.device import autocast
from gram_bench.harness.display import progress_bar, train_stats
from gram_bench.core.errors import RunFailed, UsageError
from gram_bench.harness.evaluate import evaluate
from gram_bench.core.io import append_jsonl, atomic_torch_save, atomic_write_text, read_jsonl
from gram_bench.harness.precision import Precision


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
    min(decay, (1 + t) / (10 + t)). State keys that start or end with one of the `exclude`
    entries (`Model.ema_exclude`, e.g. a sparse puzzle table) have no shadow: `applied` keeps
    them live."""

    def __init__(self, model: torch.nn.Module, decay: float, exclude: tuple[str, ...] = ()):
        self.decay = decay
        skip = tuple(exclude)
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
    ema = EMA(model, tc.ema, model.ema_exclude) if tc.ema > 0 else None
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
                carry = tree_to(ck["carry"], device) if ck.get("carry") is not None else None
                set_rng_state(ck["rng"], device)
            elif len(ck.get("ranks") or []) == world:  # this rank's carry and RNG streams
                mine = ck["ranks"][dist.rank()]
                carry = tree_to(mine["carry"], device) if mine.get("carry") is not None else None
                set_rng_state(mine["rng"], device)
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
            ranks = dist.gather_objects({"carry": tree_to(carry, torch.device("cpu")), "rng": rng_state(device)})
        ckpt_step = step_now
        if not main:
            return
        atomic_torch_save(ckpt_path, {
            "step": step_now, "fingerprint": cfg.fingerprint(), "config": cfg.to_dict(),
            "model": model.state_dict(), "ema": ema.shadow if ema else None,
            "optimizer": opt.state_dict(), "sampler": sampler.state_dict(),
            "carry": carry, "rng": rng_state(device), "elapsed": elapsed,
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

