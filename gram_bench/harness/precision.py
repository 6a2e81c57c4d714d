"""`train.precision` and `train.compile`: fp32 or bf16 autocast per phase, and torch.compile of
the recursive core, chosen by measurement.

On a CPU the faster dtype depends on the model's size as much as on the processor: with
native bf16 (AVX-512 BF16, AMX) a small model's training step can be slower in bf16 (casts
and small matmuls) while its sampling and a large model's step are faster; without native
bf16 every bf16 matmul is emulated and several times slower. So `auto` times the run's own
model, a few training steps and a few sampling batches of the run's shapes in each dtype,
alternating, before training starts, and takes the faster dtype for each phase. The choice
and the timings go into env.json; a resumed run or `gram-bench eval` reuses them. On CUDA
`auto` is bf16 where supported; `fp32` and `bf16` are explicit choices everywhere.

`train.compile=auto` then times training steps of an eager and a compiled copy of the model
in the chosen dtype, alternating (the compilation itself is excluded: it happens in the
warm-up, and the inductor cache makes the run's own compilation a cache hit), and compiles
when the compiled step is faster; without a C++ compiler (CPU) it stays eager.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from gram_bench.harness.device import autocast

PROBE_STEPS = 5  # timed training steps per dtype or per eager/compiled copy (after the warm-ups)
PROBE_SAMPLES = 3  # timed sampling batches per dtype (after one warm-up batch)
GIVE_UP = 3.0  # a bf16 warm-up this many times slower than fp32's decides without timing more


@dataclass(frozen=True)
class Precision:
    """bf16 autocast or not, for training and for sampling, and how that was decided."""

    train: bool
    sample: bool
    how: str  # asked | cuda | probe | recorded
    timings: dict = field(default_factory=dict)  # phase -> dtype (or eager/compiled) -> fastest seconds
    compile: bool = False  # torch.compile the model's `compile_targets`
    compile_how: str = "asked"  # asked | probe | no compiler | recorded

    def record(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        name = {True: "bf16", False: "fp32"}
        text = f"precision: train {name[self.train]}, sampling {name[self.sample]}, " \
               f"{'compiled' if self.compile else 'eager'} ({self.how}"
        if self.compile_how != self.how:
            text += f"; compile: {self.compile_how}"
        for phase, t in self.timings.items():
            text += "; " + phase + " " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items())
        return text + ")"

    @staticmethod
    def from_record(rec: dict) -> "Precision":
        return Precision(bool(rec["train"]), bool(rec["sample"]), "recorded", dict(rec.get("timings") or {}),
                         bool(rec.get("compile", False)), "recorded")


def fixed(precision: str, device: torch.device) -> Precision | None:
    """The choice when no measurement is needed (an explicit dtype, or CUDA); None for `auto`
    on a CPU."""
    if precision in ("fp32", "bf16"):
        return Precision(precision == "bf16", precision == "bf16", "asked")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return Precision(ok, ok, "cuda")
    return None


def _race(run: Callable[[bool], None], n: int) -> dict[str, float]:
    """Fastest seconds of `run(bf16)` for fp32 and bf16, one warm-up each, then `n` calls each,
    alternating; bf16 stops after its warm-up when that is GIVE_UP times fp32's. The minimum,
    not the median: another process on the same cores only ever adds time, so the fastest
    call is the closest to what the run will see once it has the cores."""
    warm = {}
    for bf16 in (False, True):
        t = time.perf_counter()
        run(bf16)
        warm[bf16] = time.perf_counter() - t
    if warm[True] > GIVE_UP * warm[False]:
        return {"fp32": warm[False], "bf16": warm[True]}
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(n):
        for bf16 in (False, True):
            t = time.perf_counter()
            run(bf16)
            times[bf16].append(time.perf_counter() - t)
    return {"fp32": min(times[False]), "bf16": min(times[True])}


def probe(model: torch.nn.Module, batch: dict, inputs: torch.Tensor, puzzle_ids: torch.Tensor, samples: int,
          device: torch.device, step: Callable[..., object]) -> Precision:
    """Time training steps on `batch` and sampling of `inputs` x `samples` (one supervision
    step deep) in fp32 and bf16 on a copy of `model`; the model, its optimizer and every RNG
    stream of the run are left as they were. `step(model, opt, batch, carry, bf16)` runs one
    training step."""
    forks = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forks):
        twin = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(twin.parameters(), lr=1e-12)  # the updates barely move the copy
        carry = {}

        def train_once(bf16: bool) -> None:
            nonlocal carry
            carry = step(twin, opt, batch, carry or twin.initial_carry(batch, device), bf16)
            if device.type == "cuda":
                torch.cuda.synchronize()

        def sample_once(bf16: bool) -> None:
            with torch.no_grad(), autocast(device, bf16):
                twin.sample(inputs, puzzle_ids, samples, 1)
            if device.type == "cuda":
                torch.cuda.synchronize()

        t_train = _race(train_once, PROBE_STEPS)
        twin.eval()
        t_sample = _race(sample_once, PROBE_SAMPLES)
    return Precision(t_train["bf16"] < t_train["fp32"], t_sample["bf16"] < t_sample["fp32"], "probe",
                     {"train_step": t_train, "sample_batch": t_sample})


def probe_compile(model: torch.nn.Module, batch: dict, device: torch.device, step: Callable[..., object],
                  bf16: bool, compile_fn: Callable[[torch.nn.Module], object]) -> dict[str, float]:
    """Fastest seconds of a training step on `batch` for an eager and a compiled copy of
    `model` (`compile_fn` compiles a copy in place), after two warm-up steps each (the first
    compiles the graphs with and without gradient), then PROBE_STEPS each, alternating. The
    model and every RNG stream of the run are left as they were."""
    forks = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forks):
        twins = {"eager": copy.deepcopy(model).train(), "compiled": copy.deepcopy(model).train()}
        compile_fn(twins["compiled"])
        opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-12) for k, m in twins.items()}
        carries: dict[str, object] = {k: None for k in twins}

        def once(k: str) -> float:
            m = twins[k]
            t = time.perf_counter()
            carries[k] = step(m, opts[k], batch, carries[k] or m.initial_carry(batch, device), bf16)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        for _ in range(2):
            for k in twins:
                once(k)
        times: dict[str, list[float]] = {k: [] for k in twins}
        for _ in range(PROBE_STEPS):
            for k in twins:
                times[k].append(once(k))
    return {k: min(v) for k, v in times.items()}
