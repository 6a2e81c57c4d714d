"""Sampling N trajectories per test input, verifying them, and writing eval records."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gram_bench.harness.device import autocast
from gram_bench.core.io import atomic_write_json, atomic_write_jsonl_gz
from gram_bench.core.runs import safe_name
from gram_bench.harness.rundir import SCHEMA_VERSION
from gram_bench.metrics import example_records, summarize
from gram_bench.metrics.stats import CI_METHOD


def eval_subset(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Indices of the evaluated inputs: all, or the first `limit` of a seeded permutation."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


@torch.no_grad()
def evaluate(model, task, *, samples: int, steps: int, split: str = "test", limit: int = 0,
             batch_rows: int = 2048, device: torch.device, bf16: bool, seed: int = 0,
             progress: Callable[[int, int], None] | None = None, shard: bool = True) -> tuple[list[dict], dict]:
    """Returns (per-example records, summary). The global RNG is left untouched.

    Under torchrun each rank samples a contiguous shard of the inputs (rank r's sampling seed
    is seed + r) and every rank gets all the records, in input order; the summary is
    computed on rank 0 only (the others get {}). `shard=False`: this process alone evaluates
    every input (e.g. rank 0's periodic eval during training)."""
    from gram_bench.harness import dist

    world, rank = (dist.world_size(), dist.rank()) if shard else (1, 0)
    es = task.eval_set(split)
    es = es.subset(eval_subset(len(es), limit))
    n_all = len(es)
    was_training = model.training
    model.eval()
    per_chunk = max(1, batch_rows // samples)
    records: list[dict] = []
    t0 = time.perf_counter()
    forks = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forks):
        flops = flops_per_answer(model, es.inputs[:1].to(device), es.puzzle_ids[:1].to(device), steps)
        if world > 1:
            es = es.subset(np.array_split(np.arange(n_all), world)[rank])
        torch.manual_seed(seed + rank)
        for start in range(0, len(es), per_chunk):
            sl = slice(start, start + per_chunk)
            x = es.inputs[sl].to(device)
            with autocast(device, bf16):
                out = model.sample(x, es.puzzle_ids[sl].to(device), samples, steps)
            fields = {k: v.cpu().numpy() for k, v in task.verify(x, out.preds, es.ids[sl]).items()}
            preds = out.preds.cpu().numpy()
            exact = (out.preds == es.targets[sl].to(device).unsqueeze(1)).all(-1).cpu().numpy()
            keys = [task.canonical(p) for p in preds]
            scores = {k: v.float().cpu().numpy() for k, v in out.scores.items()}
            records += example_records(es.ids[sl], es.n_solutions[sl], keys, fields, exact, scores, preds)
            if progress:
                progress(min(start + per_chunk, len(es)), len(es))
    if world > 1:  # every rank's records, in input order (the shards are contiguous)
        records = [r for part in dist.gather_objects(records) for r in part]
    elapsed = time.perf_counter() - t0
    model.train(was_training)
    if rank != 0:
        return records, {}
    summary = {
        "schema_version": SCHEMA_VERSION,
        "split": split,
        "n_examples": len(records),
        "samples": samples,
        "steps": steps,
        "limit": limit,
        "seed": seed,
        "world_size": world,
        "ci_method": CI_METHOD,
        "seconds": round(elapsed, 3),
        "answers_per_second": round(len(records) * samples / max(elapsed, 1e-9), 2),
        "flops_per_answer": flops,
        "calls_per_answer": model.calls_per_answer(steps),
        "metrics": {**summarize(records, seed=0), **task.extra_metrics(records)},
    }
    return records, summary


def flops_per_answer(model, x: torch.Tensor, puzzle_ids: torch.Tensor, steps: int) -> int:
    """Floating-point operations to sample one answer for one input (matmuls and attention,
    counted by torch.utils.flop_counter on a single forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.sample(x, puzzle_ids, 1, steps)
    return int(counter.get_total_flops())


def eval_name(split: str, samples: int, steps: int, limit: int = 0, own: bool = False, tag: str = "") -> str:
    """`test` for the run's own final eval; `test-n{N}-s{steps}[-l{limit}][+{tag}]` for later
    evals (the tag names inference-only overrides, e.g. `+decode=sample`)."""
    if own:
        return split
    return f"{split}-n{samples}-s{steps}" + (f"-l{limit}" if limit else "") + (f"+{tag}" if tag else "")


def write_eval(run_dir: Path, name: str, records: list[dict], summary: dict, selection: str = "vote") -> Path:
    """The per-example records, then the summary, each atomically: a reader that finds the
    summary finds its records complete (an eval killed half-way is redone, never appended to)."""
    summary = {**summary, "selection": selection}
    safe_name(name, "eval name")
    out = Path(run_dir) / "eval"
    atomic_write_jsonl_gz(out / f"{name}.examples.jsonl.gz", records)
    atomic_write_json(out / f"{name}.json", summary)
    return out / f"{name}.json"
