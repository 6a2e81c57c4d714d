"""GRAM's stochastic guidance on a state, shared by GRAM and the Looped TF rungs of the
architecture ladder (REFERENCE.md section 1).

Given a proposal u [B, S, D], the new state is h = u + eps with
    eps ~ p(eps | u) = N(mu_p(u), sigma_p(u)^2)         (prior, inference)
    eps ~ q(eps | u, y) = N(mu_q(u, y), sigma_q(u, y)^2)  (posterior, training)
and the KL(q || p) with DreamerV2 balancing a*KL(sg(q) || p) + (1-a)*KL(q || sg(p)).

`guidance` picks the mechanism (the paper's ablations):
- `learned`: the above (GRAM);
- `none`: eps = 0, deterministic;
- `noise`: eps ~ N(0, sigma_init^2), nothing learned;
- `mean`: learned means with zero variance: eps = mu_q(u, y) in training, mu_p(u) at
  inference, and the KL replaced by its equal-variance limit 0.5 * ||mu_q - mu_p||^2
  (balanced the same way); deterministic at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gram_bench.models.base import check_choices
from gram_bench.models.layers import Linear, PatchEncoder

GUIDANCE = ("learned", "none", "noise", "mean")


@dataclass(frozen=True)
class GuidanceConfig:
    """Guidance knobs; mixed into the configs of models that can use guidance."""

    guidance: str = "learned"  # learned | none | noise | mean   (ablations)
    beta: float | None = None  # KL weight; null = the task's paper value (0.1 when the task has none)
    kl_balance: float = 0.8  # a in a*KL(sg(q)||p) + (1-a)*KL(q||sg(p))
    kl_reduce: str = "sum"  # sum over latent dims per example (see REFERENCE pitfall) | mean
    posterior_input: str = "concat"  # [open] MLP over concat(u, embed(y)) | u + embed(y)
    guidance_hidden: int = 0  # MLP width of prior/posterior heads; 0 = hidden
    sigma: str = "softplus"  # [open] softplus | exp
    sigma_init: float = 0.1  # [open] initial sigma of prior and posterior (1.0 measured not to learn)
    sigma_min: float = 1e-3  # [open] floor on sigma
    sigma_max: float = 0.0  # [open] cap on sigma (sigma = min + (max - min) * sigmoid); 0 = no cap
    posterior_at: str = "last"  # [open] transitions that sample the posterior in training: last | all
    # weight of a CE on the prior path's decode at the last transition (reparameterised, with
    # gradient into the prior and the core); 0 = Eq. 14 alone. Not in the paper: a deviation
    prior_ce: float = 0.0
    enc_channels: int = 32  # [open] image tasks: channels of the posterior's conv encoder of y

    def check_guidance(self) -> None:
        check_choices(self, guidance=GUIDANCE, kl_reduce=("sum", "mean"), posterior_input=("concat", "add"),
                      sigma=("softplus", "exp"), posterior_at=("last", "all"))
        if self.beta is not None and self.beta < 0:
            raise ValueError("beta must be non-negative")
        if not 0 <= self.kl_balance <= 1:
            raise ValueError("kl_balance must be in [0, 1]")
        if self.sigma_init <= 0 or self.sigma_min < 0:
            raise ValueError("sigma_init must be positive and sigma_min non-negative")
        if self.sigma_max and not self.sigma_min < self.sigma_init < self.sigma_max:
            raise ValueError("with a cap, sigma_min < sigma_init < sigma_max must hold (sigma_max=0: no cap)")
        if self.enc_channels < 1:
            raise ValueError("enc_channels must be at least 1")
        if self.prior_ce < 0:
            raise ValueError("prior_ce must be non-negative")


def gaussian_kl(mu_q, sd_q, mu_p, sd_p) -> torch.Tensor:
    """KL(N(mu_q, sd_q^2) || N(mu_p, sd_p^2)) elementwise."""
    return torch.log(sd_p / sd_q) + (sd_q.pow(2) + (mu_q - mu_p).pow(2)) / (2 * sd_p.pow(2)) - 0.5


class GaussianHead(nn.Module):
    """MLP giving (mu, sigma) of a diagonal Gaussian over eps, [B, S, D] each. The output layer
    starts at zero, so mu = 0 and sigma = sigma_init at initialisation. With a cap
    (`sigma_max` > 0) sigma = sigma_min + (sigma_max - sigma_min) * sigmoid(raw)."""

    def __init__(self, d_in: int, dim: int, hidden: int, sigma: str, sigma_init: float, sigma_min: float,
                 sigma_max: float = 0.0):
        super().__init__()
        self.sigma, self.sigma_min, self.sigma_max = sigma, sigma_min, sigma_max
        self.inp = Linear(d_in, hidden, bias=True)
        self.out = Linear(hidden, 2 * dim, bias=True)
        nn.init.zeros_(self.out.weight)
        s0 = max(sigma_init - sigma_min, 1e-4)
        if sigma_max:
            f = s0 / (sigma_max - sigma_min)
            raw0 = math.log(f / (1 - f))
        else:
            raw0 = math.log(math.expm1(s0)) if sigma == "softplus" else math.log(s0)
        with torch.no_grad():
            self.out.bias[dim:] = raw0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.out(F.silu(self.inp(x))).float().chunk(2, dim=-1)
        if self.sigma_max:
            return mu, self.sigma_min + (self.sigma_max - self.sigma_min) * torch.sigmoid(raw)
        sd = F.softplus(raw) if self.sigma == "softplus" else torch.exp(raw.clamp(max=10))
        return mu, sd + self.sigma_min


class Guidance(nn.Module):
    """h = u + eps, with eps from the prior (y_feat None) or the posterior (y_feat given)."""

    def __init__(self, cfg: GuidanceConfig, dim: int, vocab: int, seq_len: int, prefix: int,
                 image: tuple[int, int, int] | None = None):
        super().__init__()
        self.cfg, self.seq_len, self.prefix = cfg, seq_len, prefix
        G = cfg.guidance_hidden or dim
        if cfg.guidance in ("learned", "mean"):
            self.prior = GaussianHead(dim, dim, G, cfg.sigma, cfg.sigma_init, cfg.sigma_min, cfg.sigma_max)
            d_in = 2 * dim if cfg.posterior_input == "concat" else dim
            self.posterior = GaussianHead(d_in, dim, G, cfg.sigma, cfg.sigma_init, cfg.sigma_min, cfg.sigma_max)
            if image is not None:  # y is an image: the paper's conv encoder to patch features
                self.y_embed = PatchEncoder(vocab, dim, *image, channels=cfg.enc_channels)
            else:
                self.y_embed = nn.Embedding(vocab, dim)
                nn.init.normal_(self.y_embed.weight, std=1.0)

    @property
    def uses_target(self) -> bool:
        return self.cfg.guidance in ("learned", "mean")

    @property
    def beta(self) -> float:
        return 0.1 if self.cfg.beta is None else self.cfg.beta

    def y_features(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Target tokens [B, out_len] -> [B, S, D] at the answer positions (image tasks: the
        patch positions), zero elsewhere."""
        e = self.y_embed(y).to(like.dtype)
        return F.pad(e, (0, 0, self.prefix, self.seq_len - self.prefix - e.shape[1]))

    def forward(self, u: torch.Tensor, y_feat: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns (u + eps, elementwise KL [B, S, D], u + eps_prior). With the posterior
        (y_feat given) eps comes from q and the third value is the same step taken with the
        prior's eps, for the halting and value targets (with gradient only under `prior_ce`,
        whose CE trains through it); without it eps comes
        from the prior and the KL and the third value are None."""
        g = self.cfg.guidance
        if g == "none":
            return u, None, None
        if g == "noise":
            return u + self.cfg.sigma_init * torch.randn_like(u), None, None
        mu_p, sd_p = self.prior(u)
        if y_feat is None:
            eps = mu_p if g == "mean" else mu_p + sd_p * torch.randn_like(mu_p)
            return u + eps.to(u.dtype), None, None
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.prior_ce > 0):
            eps_p = mu_p if g == "mean" else mu_p + sd_p * torch.randn_like(mu_p)
            h_prior = u + eps_p.to(u.dtype)
        post_in = torch.cat([u, y_feat], -1) if self.cfg.posterior_input == "concat" else u + y_feat
        mu_q, sd_q = self.posterior(post_in)
        a = self.cfg.kl_balance
        if g == "mean":
            eps = mu_q
            kl = a * 0.5 * (mu_q.detach() - mu_p).pow(2) + (1 - a) * 0.5 * (mu_q - mu_p.detach()).pow(2)
        else:
            eps = mu_q + sd_q * torch.randn_like(mu_q)
            kl = a * gaussian_kl(mu_q.detach(), sd_q.detach(), mu_p, sd_p) + \
                (1 - a) * gaussian_kl(mu_q, sd_q, mu_p.detach(), sd_p.detach())
        return u + eps.to(u.dtype), kl, h_prior

    def reduce(self, kl: torch.Tensor) -> dict[str, torch.Tensor]:
        """Elementwise KL [B, S, D] -> the per-example terms [B]: `kl`, the one in the loss
        (summed over latent dimensions, Eq. 14, or averaged with `kl_reduce=mean`), and
        `kl_nats`, always the sum (nats per example, for the logs)."""
        nats = kl.sum((1, 2))
        return {"kl": nats if self.cfg.kl_reduce == "sum" else kl.mean((1, 2)), "kl_nats": nats}

    def extra_loss(self, extras: dict) -> tuple[torch.Tensor, dict]:
        """beta * KL per example [B], and the KL in nats per example for the logs."""
        if "kl" not in extras:
            return torch.zeros(()), {}
        return self.beta * extras["kl"], {"kl": extras["kl_nats"].mean().detach()}
