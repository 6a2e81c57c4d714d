"""`gram-bench bench`: speed, FLOPs and memory of one task x model x profile, in one process.

For each setting (one, or two or more with `--compare KEY=V1,V2`; several `--compare`
options with as many values each are zipped: the i-th values of all of them form setting i):
- **train**: `warmup` optimizer steps, then `steps` timed steps (the runner's own
  `train_step`: the model's loss, backward, gradient clipping, the finiteness check, AdamW,
  the sparse puzzle update); the median
  step time, examples/s, the loss of every timed step, FLOPs per step (forward + backward,
  counted once by `torch.utils.flop_counter`), achieved FLOP/s = FLOPs / median step time,
  and its ratio to the peak (best of 9) of a large matmul timed in the same process and
  dtype (`utilisation`);
- **sample**: answers/s at each width N (`--samples 1,20`; one [B*N] batch of
  `--sample-batch` inputs at the model's default depth or `--sample-steps`; one untimed
  call, then the median of two), FLOPs per answer, and the width
  speedup = answers/s at the largest N over answers/s at N=1;
- **memory**: peak RSS of the process over the train phase on CPU (reset through
  /proc/self/clear_refs where Linux allows it, else the process peak), or the CUDA peak
  allocated.
With several settings the timed steps alternate between them (A, B, A, B, ...) so drift of
the machine hits every setting alike, each setting keeping its own RNG stream; ratios are
reported against the first setting.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from gram_bench.harness.device import autocast, pick_device
from gram_bench.core.errors import UsageError

BENCH_SCHEMA = 1


# ----------------------------------------------------------------------------- measurement helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 9) -> dict:
    """Peak FLOP/s of an n x n matmul (n = 1024 on CPU, 8192 on CUDA): the best of `repeats`
    (a peak, so a busy moment of the machine does not lower it)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    a @ b  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    best = min(times)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "seconds": best, "flops_per_s": 2 * n ** 3 / best,
            "median_flops_per_s": 2 * n ** 3 / statistics.median(times)}


def _reset_peak(device: torch.device) -> bool:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: "5" resets the peak resident set size (VmHWM) of the process
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_bytes(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "cpu_peak_rss"
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss_process"


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- one setting


class Setting:
    """A task, a model and its optimizer built from one resolved config, stepped on demand."""

    def __init__(self, label: str, cfg, data_root: Path, device: torch.device, console):
        from gram_bench.harness.build import build, choose_precision
        from gram_bench.harness.training import EpochSampler, make_optimizer, train_step

        self.label, self.cfg, self.device = label, cfg, device
        self.threads = cfg.train.threads or torch.get_num_threads()  # applied around each of its steps
        self.task, self.model = build(cfg, data_root, device, console)  # compiled with train.compile
        # `auto` is resolved as a run resolves it (measured on a CPU), per phase
        self.prec = choose_precision(cfg, self.task, self.model, device, console)
        self.bf16, self.sample_bf16 = self.prec.train, self.prec.sample
        self.data = self.task.train_set().to(device)
        self.sampler = EpochSampler(len(self.data), cfg.seed)
        self.opt = make_optimizer(self.model, cfg.train, device)
        self.carry = None
        self.train_step = train_step  # the runner's own step
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.losses: list[float] = []
        self.times: list[float] = []

    def _enter(self) -> None:
        torch.set_num_threads(self.threads)
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)

    def _leave(self) -> None:
        self.rng = torch.get_rng_state()
        if self.cuda_rng is not None:
            self.cuda_rng = torch.cuda.get_rng_state(self.device)

    def _step(self) -> torch.Tensor:
        """The runner's own training step (`training.train_step`), at the base learning rate."""
        tc = self.cfg.train
        batch = self.data.batch(self.sampler.next(tc.batch_size).to(self.device))
        if self.carry is None:
            self.carry = self.model.initial_carry(batch, self.device)
        finite, parts, carry = self.train_step(self.model, self.opt, batch, self.carry, device=self.device,
                                          bf16=self.bf16, grad_clip=tc.grad_clip)
        self.carry = carry if finite else None
        return parts["loss"]

    def step(self, timed: bool) -> None:
        self._enter()
        _sync(self.device)
        t = time.perf_counter()
        loss = self._step()
        _sync(self.device)
        if timed:
            self.times.append(time.perf_counter() - t)
            self.losses.append(float(loss))
        self._leave()

    def flops_per_step(self) -> int:
        self._enter()
        try:
            return count_flops(self._step)
        finally:
            self._leave()

    @torch.no_grad()
    def sample_rate(self, n: int, batch: int, steps: int | None = None, repeats: int = 2) -> dict:
        es = self.task.eval_set(self.cfg.eval.split)
        x, pid = es.inputs[:batch].to(self.device), es.puzzle_ids[:batch].to(self.device)
        steps = steps or self.cfg.eval.steps or self.model.default_steps
        self.model.eval()
        self._enter()
        try:
            def once():
                with autocast(self.device, self.sample_bf16):
                    return self.model.sample(x, pid, n, steps)

            once()  # warm-up
            _sync(self.device)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                once()
                _sync(self.device)
                times.append(time.perf_counter() - t)
            flops = count_flops(lambda: self.model.sample(x[:1], pid[:1], 1, steps))
        finally:
            self._leave()
            self.model.train()
        med = statistics.median(times)
        return {"n": n, "inputs": int(x.shape[0]), "steps": steps, "seconds": med,
                "answers_per_s": x.shape[0] * n / med, "flops_per_answer": flops}


# ----------------------------------------------------------------------------- the command


def parse_compare(spec: str | None) -> tuple[str, list[str]] | None:
    """`KEY=V1,V2[,...]` -> (KEY, [V1, V2, ...])."""
    if not spec:
        return None
    from gram_bench.harness.config import parse_set

    key, sep, vals = spec.partition("=")
    values = [v for v in vals.split(",") if v]
    if not sep or not key or len(values) < 2:
        raise UsageError(f"--compare takes KEY=V1,V2 (for example train.precision=fp32,bf16), got '{spec}'.")
    return key, [parse_set([f"{key}={v}"])[key] for v in values]


def compare_settings(specs: str | list[str] | None) -> list[tuple[str, dict]] | None:
    """The settings of one or more `--compare` specs, zipped: [(label, {KEY: value, ...})],
    setting i taking the i-th value of every spec; None without a spec."""
    specs = [specs] if isinstance(specs, str) else [s for s in (specs or []) if s]
    parsed = [parse_compare(s) for s in specs]
    if not parsed:
        return None
    keys = [k for k, _ in parsed]
    if len(set(keys)) < len(keys):
        raise UsageError(f"--compare names a key twice ({', '.join(keys)}); give each key once.")
    counts = {len(v) for _, v in parsed}
    if len(counts) > 1:
        got = ", ".join(f"{len(v)} for {k}" for k, v in parsed)
        raise UsageError(f"Every --compare must list the same number of values ({got}): the i-th values of all "
                         "of them form setting i.")
    out = []
    for i in range(counts.pop()):
        sets = {k: v[i] for k, v in parsed}
        out.append((" ".join(f"{k}={v}" for k, v in sets.items()), sets))
    return out


def bench(task: str, model: str, profile: str = "cpu", sets: dict | None = None, *, batch: int | None = None,
          steps: int = 10, warmup: int = 3, samples: list[int] | None = None, sample_batch: int = 16,
          sample_steps: int | None = None,
          compare: str | list[str] | None = None, compile_core: bool = False, threads: int = 0, device_name: str = "auto",
          data_root: Path = Path("data"), console=None) -> dict:
    from gram_bench.harness.config import resolve

    if steps < 1 or warmup < 0 or sample_batch < 1:
        raise UsageError("--steps and --sample-batch must be at least 1 and --warmup at least 0.")
    device = pick_device(device_name)
    if threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path("bench").resolve() / ".inductor-cache"))
    sets = dict(sets or {})
    if compile_core:
        sets["train.compile"] = True
    if batch is not None:
        if batch < 1:
            raise UsageError(f"--batch must be at least 1, got {batch}.")
        sets["train.batch_size"] = batch
    samples = samples or [1, 20]
    cmp = compare_settings(compare)
    variants = [("default", sets)] if cmp is None else [(label, {**sets, **c}) for label, c in cmp]
    if cmp is not None and "train.batch_size" in cmp[0][1] and batch is not None:
        raise UsageError("--batch and --compare train.batch_size=... contradict each other; pass one of them.")
    requested = dict(variants)  # the `--set` keys as given (the config records only those that change it)
    cfgs = [(label, resolve(task, model, profile, s)) for label, s in variants]
    settings = [Setting(label, cfg, data_root, device, console) for label, cfg in cfgs]
    for s in settings:  # warm-up (and compilation), not timed
        for _ in range(warmup):
            s.step(timed=False)
    peak_ok = _reset_peak(device)
    for _ in range(steps):  # alternate A, B, A, B ...
        for s in settings:
            s.step(timed=True)
    peak, peak_kind = _peak_bytes(device)
    out_settings = []
    for s in settings:
        dtype = torch.bfloat16 if s.bf16 else torch.float32
        torch.set_num_threads(s.threads)
        mm = matmul_flops(device, dtype)
        med = statistics.median(s.times)
        q = statistics.quantiles(s.times, n=4) if len(s.times) >= 2 else [med, med, med]
        flops = s.flops_per_step()
        achieved = flops / med
        rates = {str(n): s.sample_rate(n, sample_batch, sample_steps) for n in samples}
        lo, hi = min(samples), max(samples)
        width = rates[str(hi)]["answers_per_s"] / rates[str(lo)]["answers_per_s"] if hi != lo else 1.0
        out_settings.append({
            "label": s.label, "sets": dict(requested[s.label]), "params": s.model.num_params(),
            "bf16": s.bf16, "sample_bf16": s.sample_bf16, "batch": s.cfg.train.batch_size, "threads": s.threads, "compile": s.prec.compile,
            "train": {"step_s_median": med, "step_s_q1": q[0], "step_s_q3": q[2],
                      "examples_per_s": s.cfg.train.batch_size / med, "flops_per_step": flops,
                      "achieved_flops_per_s": achieved, "matmul": mm,
                      "utilisation": achieved / mm["flops_per_s"], "losses": s.losses,
                      "loss_mean": statistics.fmean(s.losses)},
            "sample": {**rates, "width_speedup": width, "width_speedup_of": [lo, hi]},
        })
    compared = None  # {"key": "K" or "K1+K2", "values": setting i's value, or its list of values}
    if cmp is not None:
        keys = list(cmp[0][1])
        compared = {"key": "+".join(keys),
                    "values": [c[keys[0]] if len(keys) == 1 else [c[k] for k in keys] for _, c in cmp]}
    result = {
        "schema": BENCH_SCHEMA, "task": task, "model": model, "profile": profile, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
        "compile": compile_core, "compare": compared,
        "peak_memory_bytes": peak, "peak_memory_kind": peak_kind + ("" if peak_ok else " (process lifetime)"),
        "peak_memory_note": "over the timed train steps of every setting together" if len(settings) > 1 else
        "over the timed train steps",
        "settings": out_settings,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if len(out_settings) > 1:
        base = out_settings[0]
        result["ratios"] = [{
            "label": o["label"], "vs": base["label"],
            "step_time_speedup": base["train"]["step_s_median"] / o["train"]["step_s_median"],
            "sample_speedup": {n: o["sample"][n]["answers_per_s"] / base["sample"][n]["answers_per_s"]
                               for n in map(str, samples)},
            "loss_mean_diff": o["train"]["loss_mean"] - base["train"]["loss_mean"],
            "loss_max_abs_diff": max(abs(a - b) for a, b in zip(o["train"]["losses"], base["train"]["losses"])),
        } for o in out_settings[1:]]
    return result


def default_output(result: dict) -> Path:
    keys = [] if result["compare"] is None else result["compare"]["key"].split("+")
    tag = "" if not keys else "-" + "+".join(k.split(".")[-1] for k in keys)
    return Path("bench") / f"{result['task']}-{result['model']}-{result['profile']}{tag}.json"


def write_result(result: dict, path: Path) -> Path:
    from gram_bench.core.io import atomic_write_json

    atomic_write_json(path, result)
    return path


def print_result(console, result: dict) -> None:
    from rich.table import Table

    def si(x: float, unit: str) -> str:
        for k, p in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(x) >= p:
                return f"{x / p:.2f} {k}{unit}"
        return f"{x:.2f} {unit}"

    t = Table(title=f"bench {result['task']} x {result['model']} profile={result['profile']} "
                    f"device={result['device']} threads={result['threads']}")
    t.add_column("")
    for s in result["settings"]:
        t.add_column(s["label"])
    rows = [
        ("params", lambda s: f"{s['params']:,}"),
        ("batch", lambda s: str(s["batch"])),
        ("train step (median)", lambda s: f"{1000 * s['train']['step_s_median']:.1f} ms"),
        ("train examples/s", lambda s: f"{s['train']['examples_per_s']:.1f}"),
        ("FLOPs / train step", lambda s: si(s["train"]["flops_per_step"], "FLOP")),
        ("achieved FLOP/s", lambda s: si(s["train"]["achieved_flops_per_s"], "FLOP/s")),
        ("matmul FLOP/s (same dtype)", lambda s: si(s["train"]["matmul"]["flops_per_s"], "FLOP/s")),
        ("utilisation", lambda s: f"{100 * s['train']['utilisation']:.1f}%"),
        ("mean loss (timed steps)", lambda s: f"{s['train']['loss_mean']:.4f}"),
    ]
    ns = [k for k in result["settings"][0]["sample"] if k.isdigit()]
    for n in ns:
        rows.append((f"answers/s at N={n}", lambda s, n=n: f"{s['sample'][n]['answers_per_s']:.1f}"))
    rows.append(("FLOPs / answer", lambda s: si(s["sample"][ns[0]]["flops_per_answer"], "FLOP")))
    rows.append(("width speedup", lambda s: f"{s['sample']['width_speedup']:.1f}x"))
    for name, f in rows:
        t.add_row(name, *[f(s) for s in result["settings"]])
    console.print(t)
    console.print(f"peak memory: {result['peak_memory_bytes'] / 2 ** 20:.0f} MiB ({result['peak_memory_kind']}, "
                  f"{result['peak_memory_note']})")
    for r in result.get("ratios", []):
        sp = ", ".join(f"N={n} {v:.2f}x" for n, v in r["sample_speedup"].items())
        console.print(f"{r['label']} vs {r['vs']}: train step {r['step_time_speedup']:.2f}x faster, sampling {sp}; "
                      f"mean loss diff {r['loss_mean_diff']:+.4f} (max per-step {r['loss_max_abs_diff']:.4f})")
