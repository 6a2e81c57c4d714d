"""TRM: Tiny Recursive Model (Jolicoeur-Martineau 2025; REFERENCE.md section 2).

One 2-layer network `net` updates both the latent z and the answer y (TRM's names):
one cycle is n times z <- net(z + y + x), then y <- net(y + z). T cycles per supervision
step, the first T-1 without gradient, the last with full gradient through its n+1 calls.
Deterministic: the same input gives the same output."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gram_bench.models import MODELS
from gram_bench.models.base import RecursiveConfig, RecursiveModel, init_z0
from gram_bench.models.layers import Stack


@MODELS.register("trm")
class TRM(RecursiveModel):
    name = "trm"
    stochastic = False

    @dataclass(frozen=True)
    class Config(RecursiveConfig):
        ffn_hidden: int = 1536  # SwiGLU expansion 4 -> 1536 at D=512
        layers: int = 2
        n: int = 4  # inner latent updates per cycle (6 for Sudoku)
        T: int = 3  # cycles per supervision step
        detach_heads: bool = False  # TRM's Q head is trained through the core

        positive = ("n", "T", "n_sup", "layers")

    def __init__(self, cfg: "TRM.Config", layout):
        super().__init__(cfg, layout)
        self.net = Stack(cfg.layers, cfg.hidden, cfg.heads, cfg.ffn_hidden, self.seq_len, cfg.rope_theta,
                         mixer=cfg.mixer)
        self.register_buffer("y0", init_z0(cfg.hidden))
        self.register_buffer("z0", init_z0(cfg.hidden))

    def calls_per_answer(self, steps: int) -> int:
        return steps * self.cfg.T * (self.cfg.n + 1)

    def init_state(self, batch_size, device):
        shape = (batch_size, self.seq_len, self.cfg.hidden)
        return self.y0.to(device).expand(shape), self.z0.to(device).expand(shape)

    def cycle(self, y, z, e_x):
        for _ in range(self.cfg.n):
            z = self.net(z + (y + e_x))  # TRM's order of the sum: z_L + (z_H + x)
        return self.net(y + z), z

    def segment(self, state, e_x, target):
        y, z = state
        with torch.no_grad():
            for _ in range(self.cfg.T - 1):
                y, z = self.cycle(y, z, e_x)
        y, z = self.cycle(y, z, e_x)
        return (y, z), {}

    def readout(self, state):
        return state[0]
