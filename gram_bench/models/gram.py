"""GRAM: Generative Recursive Reasoning Model (arXiv:2605.19376, REFERENCE.md section 1).

Latent state z = (h, l), each [B, S, D], starts from a fixed z0 stored in the checkpoint.
One transition:  K times l <- f_L(l + h + e_x);  u = f_H(h + l);
                 eps ~ p(eps | u) = N(mu(u), sigma(u)^2)       (prior, inference)
                 eps ~ q(eps | u, y)                           (posterior, training)
                 h <- u + eps                                  (noise on h only)
T transitions form one supervision step; only the last carries gradient. In training the
posterior is sampled at that last transition only (`posterior_at=last`): the earlier ones
use the prior, as at inference, because their KL is not in the loss and a posterior there
would pass y to the decoder for free. Loss per supervision step (Eq. 14): CE(decoder(h_T), y)
summed over the answer tokens + beta * KL(q || p) summed over latent dimensions, at the last
transition, with KL balancing
0.8 * KL(sg(q) || p) + 0.2 * KL(q || sg(p)) (`ce_reduce=mean` is the averaged-CE ablation).
The last transition is also taken with the prior's eps (no gradient): the halting and LPRM
targets come from that prior state, which is what inference decodes.

`guidance` selects the ablations (see `gram_bench.models.guidance`): `learned` (GRAM),
`none` (no stochastic guidance), `noise` (eps ~ N(0, sigma_init^2)), `mean` (learned mean,
zero variance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gram_bench.models import MODELS
from gram_bench.models.base import RecursiveConfig, RecursiveModel, init_z0
from gram_bench.models.guidance import Guidance, GuidanceConfig
from gram_bench.models.layers import Stack


@MODELS.register("gram")
class GRAM(RecursiveModel):
    name = "gram"
    stochastic = True

    @dataclass(frozen=True)
    class Config(RecursiveConfig, GuidanceConfig):
        ffn_hidden: int = 512  # paper: FFN hidden 512
        l_layers: int = 2
        h_layers: int = 2
        K: int = 4  # low-level updates per transition (6 for Sudoku)
        T: int = 3  # transitions per supervision step
        ce_reduce: str = "sum"  # Eq. 14: the answer's log-likelihood, summed over its tokens
        halt_loss_weight: float = 0.5  # [open] (TRM 0.5)
        value_loss_weight: float = 0.5  # [open] LPRM value-head loss weight
        detach_heads: bool = True  # Q/value losses do not backpropagate into the core

        positive = ("K", "T", "n_sup", "l_layers", "h_layers")

        def check(self) -> None:
            RecursiveConfig.check(self)
            self.check_guidance()

    def __init__(self, cfg: "GRAM.Config", layout):
        super().__init__(cfg, layout)
        D, S = cfg.hidden, self.seq_len
        self.f_L = Stack(cfg.l_layers, D, cfg.heads, cfg.ffn_hidden, S, cfg.rope_theta, mixer=cfg.mixer)
        self.f_H = Stack(cfg.h_layers, D, cfg.heads, cfg.ffn_hidden, S, cfg.rope_theta, mixer=cfg.mixer)
        self.guide = Guidance(cfg, D, layout.vocab, S, cfg.prefix, layout.image)
        self.register_buffer("h0", init_z0(D))
        self.register_buffer("l0", init_z0(D))

    def calls_per_answer(self, steps: int) -> int:
        return steps * self.cfg.T * (self.cfg.K + 1)  # K f_L calls and one f_H call per transition

    @property
    def beta(self) -> float:
        return self.guide.beta

    def init_state(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch_size, self.seq_len, self.cfg.hidden)
        return self.h0.to(device).expand(shape), self.l0.to(device).expand(shape)

    def transition(self, h, l, e_x, y_feat):
        """One transition; returns (h, l, elementwise KL [B, S, D] or None, prior h or None)."""
        for _ in range(self.cfg.K):
            l = self.f_L(l + h + e_x)
        h, kl, h_prior = self.guide(self.f_H(h + l), y_feat)
        return h, l, kl, h_prior

    def segment(self, state, e_x, y):
        h, l = state
        y_feat = self.guide.y_features(y, e_x) if (y is not None and self.guide.uses_target) else None
        early = y_feat if self.cfg.posterior_at == "all" else None
        with torch.no_grad():
            for _ in range(self.cfg.T - 1):
                h, l, _, _ = self.transition(h, l, e_x, early)
        h, l, kl, h_prior = self.transition(h, l, e_x, y_feat)  # the only transition with gradient
        if kl is None:
            return (h, l), {}
        return (h, l), {**self.guide.reduce(kl), "prior_state": (h_prior, l)}

    def readout(self, state):
        return state[0]

    def extra_loss(self, extras):
        return self.guide.extra_loss(extras)
