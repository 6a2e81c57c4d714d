"""HRM: Hierarchical Reasoning Model (Wang et al. 2025; REFERENCE.md section 2).

Two stacks of the same shape: a low-level L and a high-level H (4 layers each). One
supervision step runs H_cycles x L_cycles updates:
    for each H cycle:  L_cycles times z_L <- L(z_L + z_H + x);  then z_H <- H(z_H + z_L)
Only the final L update and the final H update carry gradient (HRM's 1-step gradient); the
others run without it. The decoder reads z_H. Halting is HRM's Q-learning (`halting=
q_learning`): q_halt is trained towards exact correctness and q_continue towards the next
step's Q value with one extra no-grad forward, and a row halts when q_halt > q_continue.
Deterministic: the same input gives the same output."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gram_bench.models import MODELS
from gram_bench.models.base import RecursiveConfig, RecursiveModel, init_z0
from gram_bench.models.layers import Stack


@MODELS.register("hrm")
class HRM(RecursiveModel):
    name = "hrm"
    stochastic = False

    @dataclass(frozen=True)
    class Config(RecursiveConfig):
        ffn_hidden: int = 1536  # SwiGLU expansion 4 at D=512, as TRM
        h_layers: int = 4
        l_layers: int = 4
        H_cycles: int = 2
        L_cycles: int = 2
        halting: str = "q_learning"  # HRM's Q-learning halting; bce = TRM-style
        detach_heads: bool = False  # HRM's Q head reads z_H[:, 0] with gradient

        positive = ("h_layers", "l_layers", "H_cycles", "L_cycles", "n_sup")

    def __init__(self, cfg: "HRM.Config", layout):
        super().__init__(cfg, layout)
        D, S = cfg.hidden, self.seq_len
        self.L = Stack(cfg.l_layers, D, cfg.heads, cfg.ffn_hidden, S, cfg.rope_theta, mixer=cfg.mixer)
        self.H = Stack(cfg.h_layers, D, cfg.heads, cfg.ffn_hidden, S, cfg.rope_theta, mixer=cfg.mixer)
        self.register_buffer("zH0", init_z0(D))
        self.register_buffer("zL0", init_z0(D))

    def calls_per_answer(self, steps: int) -> int:
        return steps * self.cfg.H_cycles * (self.cfg.L_cycles + 1)

    def init_state(self, batch_size, device):
        shape = (batch_size, self.seq_len, self.cfg.hidden)
        return self.zH0.to(device).expand(shape), self.zL0.to(device).expand(shape)

    def segment(self, state, e_x, target):
        zH, zL = state
        cfg = self.cfg
        with torch.no_grad():
            for h in range(cfg.H_cycles):
                for i in range(cfg.L_cycles):
                    if h < cfg.H_cycles - 1 or i < cfg.L_cycles - 1:
                        zL = self.L(zL + (zH + e_x))  # HRM's order: z_L + (z_H + x)
                if h < cfg.H_cycles - 1:
                    zH = self.H(zH + zL)
        zL = self.L(zL + (zH + e_x))  # 1-step gradient: the last L and H updates only
        zH = self.H(zH + zL)
        return (zH, zL), {}

    def readout(self, state):
        return state[0]
