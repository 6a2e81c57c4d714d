"""Looped TF and Direct Pred (REFERENCE.md section 2): the non-hierarchical baselines.

Looped TF: one block stack applied `loops` times, h <- net(h + x) from a fixed h0, the
input injected every time; no hierarchy, and no deep supervision by default (`n_sup=1`:
one optimizer step sees the whole recursion, with gradient through every loop unless
`grad_loops` limits it to the last few). The rungs of the paper's architecture ladder are
knobs: `guidance=learned` adds GRAM's stochastic guidance after every loop
(h <- net(h + x) + eps, the posterior and its KL at the last loop only, as GRAM), and
`n_sup > 1` adds deep supervision.

Direct Pred: a plain, non-recurrent transformer, h = net(x), 8 layers by default.

Both reuse the recursive machinery (heads, carry, sampling) with one state tensor. Without
guidance both are deterministic: the same input gives the same output."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gram_bench.models import MODELS
from gram_bench.models.base import RecursiveConfig, RecursiveModel, init_z0
from gram_bench.models.guidance import Guidance, GuidanceConfig
from gram_bench.models.layers import Stack


@MODELS.register("looped-tf")
class LoopedTF(RecursiveModel):
    """Looped TF: one block stack applied repeatedly; no hierarchy, no deep supervision."""

    name = "looped-tf"
    stochastic = False  # unless guidance is on

    @dataclass(frozen=True)
    class Config(RecursiveConfig, GuidanceConfig):
        layers: int = 2
        loops: int = 16  # [open] applications of the stack per forward
        grad_loops: int = 0  # loops that carry gradient, counted from the last; 0 = all
        n_sup: int = 1  # 1 = no deep supervision
        act: bool = False  # nothing to halt with a single supervision step
        guidance: str = "none"  # learned = the "+ stochastic guidance" rung

        positive = ("layers", "loops", "n_sup")

        def check(self) -> None:
            RecursiveConfig.check(self)
            self.check_guidance()
            if not 0 <= self.grad_loops <= self.loops:
                raise ValueError("grad_loops must be between 0 (all) and loops")

    def __init__(self, cfg, layout):
        super().__init__(cfg, layout)
        self.net = Stack(cfg.layers, cfg.hidden, cfg.heads, cfg.ffn_hidden, self.seq_len, cfg.rope_theta,
                         mixer=cfg.mixer)
        self.guide = Guidance(cfg, cfg.hidden, layout.vocab, self.seq_len, cfg.prefix, layout.image)
        self.register_buffer("h0", init_z0(cfg.hidden))

    def calls_per_answer(self, steps: int) -> int:
        return steps * self.cfg.loops

    def init_state(self, batch_size, device):
        return (self.h0.to(device).expand(batch_size, self.seq_len, self.cfg.hidden),)

    def segment(self, state, e_x, y):
        (h,) = state
        cfg = self.cfg
        y_feat = self.guide.y_features(y, e_x) if (y is not None and self.guide.uses_target) else None
        early = y_feat if cfg.posterior_at == "all" else None
        free = cfg.loops - cfg.grad_loops if cfg.grad_loops else 0
        kl = h_prior = None
        with torch.no_grad():
            for _ in range(free):
                h, _, _ = self.guide(self.net(h + e_x), early)
        for i in range(free, cfg.loops):
            h, kl, h_prior = self.guide(self.net(h + e_x), y_feat if i == cfg.loops - 1 else early)
        if kl is None:
            return (h,), {}
        return (h,), {**self.guide.reduce(kl), "prior_state": (h_prior,)}

    def readout(self, state):
        return state[0]

    def extra_loss(self, extras):
        return self.guide.extra_loss(extras)


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
            if self.loops != 1 or self.n_sup != 1 or self.guidance != "none":
                raise ValueError("Direct Pred is not recurrent: loops and n_sup must be 1 and guidance none "
                                 "(use looped-tf)")

    def segment(self, state, e_x, target):
        return (self.net(e_x),), {}
