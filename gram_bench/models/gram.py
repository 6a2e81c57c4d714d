"""GRAM: Generative Recursive Reasoning Model (arXiv:2605.19376, REFERENCE.md section 1).

Latent state z = (h, l), each [B, S, D], starts from a fixed z0 stored in the checkpoint.
One transition:  K times l <- f_L(l + h + e_x);  u = f_H(h + l);
                 eps ~ p(eps | u) = N(mu(u), sigma(u)^2)       (prior, inference)
                 eps ~ q(eps | u, y)                           (posterior, training)
                 h <- u + eps                                  (noise on h only)
T transitions form one supervision step; only the last carries gradient. In training the
posterior is sampled at that last transition only (`posterior_at=last`): the earlier ones
use the prior, as at inference, because their KL is not in the loss and a posterior there
would pass y to the decoder for free (measured: train exact 1.0, prior-rollout 0.0). Loss per
supervision step (Eq. 14): CE(decoder(h_T), y) + beta * KL(q || p) at the last transition,
with KL balancing 0.8 * KL(sg(q) || p) + 0.2 * KL(q || sg(p)).

`guidance` selects the ablations: `learned` (GRAM), `none` (no stochastic guidance,
deterministic), `noise` (eps ~ N(0, sigma_init^2), nothing learned).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gram_bench.models import MODELS
from gram_bench.models.base import RecursiveModel, check_recursive, init_z0
from gram_bench.models.layers import Linear, Stack


def gaussian_kl(mu_q, sd_q, mu_p, sd_p) -> torch.Tensor:
    """KL(N(mu_q, sd_q^2) || N(mu_p, sd_p^2)) elementwise."""
    return torch.log(sd_p / sd_q) + (sd_q.pow(2) + (mu_q - mu_p).pow(2)) / (2 * sd_p.pow(2)) - 0.5


class Guidance(nn.Module):
    """MLP head giving (mu, sigma) of a diagonal Gaussian over eps, [B, S, D] each."""

    def __init__(self, d_in: int, dim: int, hidden: int, sigma: str, sigma_init: float, sigma_min: float):
        super().__init__()
        self.sigma, self.sigma_min = sigma, sigma_min
        self.inp = Linear(d_in, hidden, bias=True)
        self.out = Linear(hidden, 2 * dim, bias=True)
        nn.init.zeros_(self.out.weight)
        s0 = max(sigma_init - sigma_min, 1e-4)
        raw0 = math.log(math.expm1(s0)) if sigma == "softplus" else math.log(s0)
        with torch.no_grad():
            self.out.bias[dim:] = raw0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.out(F.silu(self.inp(x))).float().chunk(2, dim=-1)
        sd = F.softplus(raw) if self.sigma == "softplus" else torch.exp(raw.clamp(max=10))
        return mu, sd + self.sigma_min


@MODELS.register("gram")
class GRAM(RecursiveModel):
    name = "gram"
    stochastic = True

    @dataclass(frozen=True)
    class Config:
        hidden: int = 512
        heads: int = 8
        ffn_hidden: int = 512  # paper: FFN hidden 512
        l_layers: int = 2
        h_layers: int = 2
        K: int = 4  # low-level updates per transition (6 for Sudoku)
        T: int = 3  # transitions per supervision step
        n_sup: int = 16  # supervision steps
        prefix: int = 16  # puzzle-embedding tokens
        rope_theta: float = 10000.0
        beta: float | None = None  # KL weight; null = the task's paper value
        kl_balance: float = 0.8  # DreamerV2 balancing: a*KL(sg(q)||p) + (1-a)*KL(q||sg(p))
        kl_reduce: str = "sum"  # sum over latent dims per example (see REFERENCE pitfall) | mean
        ce_reduce: str = "mean"  # per-example CE: mean over answer tokens (TRM) | sum
        posterior_input: str = "concat"  # [open] MLP over concat(u, embed(y)) | u + embed(y)
        guidance_hidden: int = 0  # MLP width of prior/posterior heads; 0 = hidden
        sigma: str = "softplus"  # [open] softplus | exp
        sigma_init: float = 0.1  # [open] initial sigma of prior and posterior (1.0 measured not to learn)
        sigma_min: float = 1e-3  # [open] floor on sigma
        guidance: str = "learned"  # learned | none | noise   (ablations)
        posterior_at: str = "last"  # [open] transitions that sample the posterior in training: last | all
        act: bool = True  # ACT halting in training
        halting: str = "bce"  # bce (authors' code: q_halt > 0) | q_learning (HRM-style, q_continue)
        halt_exploration: float = 0.1
        halt_loss_weight: float = 0.5  # [open] (TRM 0.5)
        value_loss_weight: float = 0.5  # [open] LPRM value-head loss weight
        detach_heads: bool = True  # Q/value losses do not backpropagate into the core

        def check(self) -> None:
            check_recursive(self, ("K", "T", "n_sup", "l_layers", "h_layers"))
            for name, val, choices in (("kl_reduce", self.kl_reduce, ("sum", "mean")),
                                       ("posterior_input", self.posterior_input, ("concat", "add")),
                                       ("sigma", self.sigma, ("softplus", "exp")),
                                       ("guidance", self.guidance, ("learned", "none", "noise")),
                                       ("posterior_at", self.posterior_at, ("last", "all"))):
                if val not in choices:
                    raise ValueError(f"{name} must be one of {', '.join(choices)}, got '{val}'")
            if self.beta is not None and self.beta < 0:
                raise ValueError("beta must be non-negative")

    def __init__(self, cfg: "GRAM.Config", layout):
        super().__init__(cfg, layout)
        D, S = cfg.hidden, self.seq_len
        self.f_L = Stack(cfg.l_layers, D, cfg.heads, cfg.ffn_hidden, S, cfg.rope_theta)
        self.f_H = Stack(cfg.h_layers, D, cfg.heads, cfg.ffn_hidden, S, cfg.rope_theta)
        G = cfg.guidance_hidden or D
        self.prior = Guidance(D, D, G, cfg.sigma, cfg.sigma_init, cfg.sigma_min)
        if cfg.guidance == "learned":
            d_in = 2 * D if cfg.posterior_input == "concat" else D
            self.posterior = Guidance(d_in, D, G, cfg.sigma, cfg.sigma_init, cfg.sigma_min)
            self.y_embed = nn.Embedding(layout.vocab, D)
            nn.init.normal_(self.y_embed.weight, std=1.0)
        self.register_buffer("h0", init_z0(D))
        self.register_buffer("l0", init_z0(D))

    @property
    def beta(self) -> float:
        return 0.1 if self.cfg.beta is None else self.cfg.beta

    def init_state(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch_size, self.seq_len, self.cfg.hidden)
        return self.h0.to(device).expand(shape), self.l0.to(device).expand(shape)

    def _y_features(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Target tokens -> [B, S, D] at the answer positions, zero elsewhere."""
        e = self.y_embed(y).to(like.dtype)
        P = self.cfg.prefix
        return F.pad(e, (0, 0, P, self.seq_len - P - e.shape[1]))

    def transition(self, h, l, e_x, y_feat):
        """One transition; returns (h, l, kl-or-None) with kl [B, S, D] unreduced parts."""
        cfg = self.cfg
        for _ in range(cfg.K):
            l = self.f_L(l + h + e_x)
        u = self.f_H(h + l)
        if cfg.guidance == "none":
            return u, l, None
        if cfg.guidance == "noise":
            return u + cfg.sigma_init * torch.randn_like(u), l, None
        mu_p, sd_p = self.prior(u)
        if y_feat is None:
            eps = mu_p + sd_p * torch.randn_like(mu_p)
            return u + eps.to(u.dtype), l, None
        post_in = torch.cat([u, y_feat], -1) if cfg.posterior_input == "concat" else u + y_feat
        mu_q, sd_q = self.posterior(post_in)
        eps = mu_q + sd_q * torch.randn_like(mu_q)
        a = cfg.kl_balance
        kl = a * gaussian_kl(mu_q.detach(), sd_q.detach(), mu_p, sd_p) + \
            (1 - a) * gaussian_kl(mu_q, sd_q, mu_p.detach(), sd_p.detach())
        return u + eps.to(u.dtype), l, kl

    def segment(self, state, e_x, y):
        h, l = state
        y_feat = self._y_features(y, e_x) if (y is not None and self.cfg.guidance == "learned") else None
        early = y_feat if self.cfg.posterior_at == "all" else None
        with torch.no_grad():
            for _ in range(self.cfg.T - 1):
                h, l, _ = self.transition(h, l, e_x, early)
        h, l, kl = self.transition(h, l, e_x, y_feat)  # the only transition with gradient
        extras = {}
        if kl is not None:
            extras["kl"] = kl.sum((1, 2)) if self.cfg.kl_reduce == "sum" else kl.mean((1, 2))
        return (h, l), extras

    def readout(self, state):
        return state[0]

    def extra_loss(self, extras):
        if "kl" not in extras:
            return torch.zeros(()), {}
        return self.beta * extras["kl"], {"kl": extras["kl"].mean().detach()}
