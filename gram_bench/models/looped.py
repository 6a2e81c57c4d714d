"""Looped TF and Direct Pred (REFERENCE.md section 2): the non-hierarchical baselines.

Looped TF: one block stack applied `loops` times, h <- net(h + x) from a fixed h0, the
input injected every time; no hierarchy, and no deep supervision by default (`n_sup=1`:
one optimizer step sees the whole recursion, with gradient through every loop unless
`grad_loops` limits it to the last few). Setting `n_sup > 1` gives the deep-supervision rung
of the paper's architecture ladder.

Direct Pred: a plain, non-recurrent transformer, h = net(x), 8 layers by default.

Both reuse the recursive machinery (heads, carry, sampling) with one state tensor. Both are
deterministic: the same input gives the same output."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gram_bench.models import MODELS
from gram_bench.models.base import RecursiveModel, check_recursive, init_z0
from gram_bench.models.layers import Stack


@MODELS.register("looped-tf")
class LoopedTF(RecursiveModel):
    """Looped TF: one block stack applied repeatedly; no hierarchy, no deep supervision."""

    name = "looped-tf"
    stochastic = False

    @dataclass(frozen=True)
    class Config:
        hidden: int = 512
        heads: int = 8
        ffn_hidden: int = 1536
        layers: int = 2
        loops: int = 16  # [open] applications of the stack per forward
        grad_loops: int = 0  # loops that carry gradient, counted from the last; 0 = all
        n_sup: int = 1  # 1 = no deep supervision
        prefix: int = 16
        rope_theta: float = 10000.0
        ce_reduce: str = "mean"
        act: bool = False  # nothing to halt with a single supervision step
        halting: str = "bce"
        halt_exploration: float = 0.1
        halt_loss_weight: float = 0.5
        value_loss_weight: float = 0.5
        detach_heads: bool = False

        def check(self) -> None:
            check_recursive(self, ("layers", "loops", "n_sup"))
            if not 0 <= self.grad_loops <= self.loops:
                raise ValueError("grad_loops must be between 0 (all) and loops")

    def __init__(self, cfg, layout):
        super().__init__(cfg, layout)
        self.net = Stack(cfg.layers, cfg.hidden, cfg.heads, cfg.ffn_hidden, self.seq_len, cfg.rope_theta)
        self.register_buffer("h0", init_z0(cfg.hidden))

    def init_state(self, batch_size, device):
        return (self.h0.to(device).expand(batch_size, self.seq_len, self.cfg.hidden),)

    def segment(self, state, e_x, target):
        (h,) = state
        cfg = self.cfg
        free = cfg.loops - cfg.grad_loops if cfg.grad_loops else 0
        with torch.no_grad():
            for _ in range(free):
                h = self.net(h + e_x)
        for _ in range(cfg.loops - free):
            h = self.net(h + e_x)
        return (h,), {}

    def readout(self, state):
        return state[0]


@MODELS.register("direct")
class DirectPred(LoopedTF):
    """Direct Pred: a plain non-recurrent transformer (8 layers by default)."""

    name = "direct"

    @dataclass(frozen=True)
    class Config(LoopedTF.Config):
        layers: int = 8
        loops: int = 1

        def check(self) -> None:
            super().check()
            if self.loops != 1 or self.n_sup != 1:
                raise ValueError("Direct Pred is not recurrent: loops and n_sup must be 1 (use looped-tf)")

    def segment(self, state, e_x, target):
        return (self.net(e_x),), {}
