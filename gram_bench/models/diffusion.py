"""Discrete diffusion baselines: D3PM (Austin et al. 2021) and MDLM (Sahoo et al. 2024).

Both denoise the answer tokens with a DiT-style Transformer (adaptive LayerNorm conditioned
on the diffusion time, adaLN-Zero initialisation), given the input tokens as a clean prefix
(conditional tasks) or nothing (unconditional tasks). Both predict x0 and share one forward
process and one reverse step. The forward process mixes each token with a distribution m:
    q(x_t | x_0) = abar(t) * onehot(x_0) + (1 - abar(t)) * m,
with m uniform over the vocabulary (`transition=uniform`) or all mass on an extra MASK token
(`transition=absorbing`), so q(x_t | x_s) for s < t has the same form with abar(t)/abar(s).
The reverse step from t to s is the x0-parameterised posterior
    p(x_s | x_t) ∝ q(x_t | x_s) * sum_x0 q(x_s | x_0) p(x_0 | x_t).

- **D3PM** (`d3pm`): T discrete steps (1000 at the paper profile); cosine schedule for
  uniform, abar = 1 - t/T for absorbing; the hybrid loss L_vb + lambda * CE(x0), lambda = 0.001.
- **MDLM** (`mdlm`): absorbing, continuous time with abar(t) = 1 - t; the weighted masked
  CE objective (1/t) * sum over masked positions of -log p(x0 | x_t) (the continuous-time
  bound); ancestral sampling with the shared reverse step, which keeps unmasked tokens.

Each sample's score (`loglik`) is its final-step confidence: the mean log-probability of the
chosen tokens under the last denoising step's p(x0 | x_1).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gram_bench.models import MODELS
from gram_bench.models.base import Model, ModelConfig, SampleOutput, check_choices
from gram_bench.models.layers import Attention, Linear, PatchEncoder, PatchHead

EPS = 1e-20


# ----------------------------------------------------------------------------- the denoiser


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000), [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """Pre-norm block whose LayerNorms are shifted, scaled and gated by the time embedding."""

    def __init__(self, dim: int, heads: int, max_len: int, mlp_ratio: int = 4):
        super().__init__()
        self.attn = Attention(dim, heads, max_len)
        self.mlp = nn.Sequential(Linear(dim, mlp_ratio * dim, bias=True), nn.GELU(approximate="tanh"),
                                 Linear(mlp_ratio * dim, dim, bias=True))
        self.ada = Linear(dim, 6 * dim, bias=True)
        nn.init.zeros_(self.ada.weight)  # adaLN-Zero: every block starts as the identity

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, c1, g1, s2, c2, g2 = self.ada(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        x = x + g1 * self.attn(modulate(F.layer_norm(x, x.shape[-1:]), s1, c1))
        return x + g2 * self.mlp(modulate(F.layer_norm(x, x.shape[-1:]), s2, c2))


class DiT(nn.Module):
    """tokens [B, L] (condition + noisy answer), t [B] -> x0 logits [B, out_len, n_out]."""

    def __init__(self, vocab_in: int, n_out: int, dim: int, heads: int, blocks: int, in_len: int, out_len: int,
                 image: tuple[int, int, int] | None = None, enc_channels: int = 32):
        super().__init__()
        self.in_len, self.out_len, self.image = in_len, out_len, image
        if image is None:  # (module creation order kept as before: the same seed, the same init)
            self.tok = nn.Embedding(vocab_in, dim)
            self.segment = nn.Embedding(2, dim)  # 0 = condition, 1 = answer
        self.time = nn.Sequential(Linear(256, dim, bias=True), nn.SiLU(), Linear(dim, dim, bias=True))
        if image is not None:
            # Unconditional images: the noisy image goes through the conv patch encoder (with a
            # learned position per patch) and each patch is decoded back to its P x P pixels.
            if in_len:
                raise ValueError("image layouts are unconditional here: in_len must be 0")
            H, W, P = image
            n_pos = (H // P) * (W // P)
            self.enc = PatchEncoder(vocab_in, dim, *image, channels=enc_channels)
            self.pos = nn.Parameter(torch.randn(n_pos, dim) * 0.02)
        else:
            n_pos = in_len + out_len
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, n_pos) for _ in range(blocks))
        self.final_ada = Linear(dim, 2 * dim, bias=True)
        self.out = PatchHead(dim, n_out, *image) if image is not None else Linear(dim, n_out, bias=True)
        nn.init.zeros_(self.final_ada.weight)
        if image is None:
            nn.init.normal_(self.tok.weight, std=0.02)
            seg = torch.cat([torch.zeros(in_len, dtype=torch.long), torch.ones(out_len, dtype=torch.long)])
            self.register_buffer("seg_ids", seg, persistent=False)

    def forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.image is not None:
            x = self.enc(tokens) + self.pos.to(self.time[0].weight.dtype)
        else:
            x = self.tok(tokens) + self.segment(self.seg_ids)[None]
        c = self.time(timestep_embedding(t, 256))
        for blk in self.blocks:
            x = blk(x, c)
        shift, scale = self.final_ada(F.silu(c)).unsqueeze(1).chunk(2, dim=-1)
        x = modulate(F.layer_norm(x, x.shape[-1:]), shift, scale)
        return self.out(x if self.image is not None else x[:, self.in_len:]).float()


# ----------------------------------------------------------------------------- the shared process


class DiscreteDiffusion(Model):
    """Forward process, reverse step and sampler shared by D3PM and MDLM; subclasses give the
    schedule `abar(t)` on t in [0, 1], the loss, and the default number of sampling steps."""

    stochastic = True
    supports_image = True
    transition: str

    def __init__(self, cfg, layout):
        super().__init__(cfg, layout)
        V = layout.vocab
        self.V = V
        self.mask_id = V  # only used by the absorbing transition
        self.K = V + 1 if self.transition == "absorbing" else V  # states of x_t
        self.in_len, self.out_len = layout.in_len, layout.out_len
        self.dit = DiT(self.K, V, cfg.hidden, cfg.heads, cfg.blocks, layout.in_len, layout.out_len,
                       layout.image, cfg.enc_channels)

    # ---- schedule and forward process
    @abc.abstractmethod
    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """The fraction of clean tokens kept at time t in [0, 1]."""

    def mix(self, like: torch.Tensor) -> torch.Tensor:
        """The distribution m tokens are mixed with, as a [K] vector."""
        m = torch.zeros(self.K, device=like.device)
        if self.transition == "absorbing":
            m[self.mask_id] = 1.0
        else:
            m[:] = 1.0 / self.K
        return m

    def q_probs(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) for tokens x0 [B, L] at times t [B]: [B, L, K]."""
        a = self.abar(t).view(-1, 1, 1)
        return a * F.one_hot(x0, self.K).float() + (1 - a) * self.mix(x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0): each token is kept when noise < abar(t), else replaced by a draw
        from m. With the same `noise` (uniform [B, L]), a token kept at time t is kept at
        every earlier time (so absorbing masks grow monotonically with t)."""
        noise = torch.rand(x0.shape, device=x0.device) if noise is None else noise
        keep = noise < self.abar(t).view(-1, 1)
        if self.transition == "absorbing":
            other = torch.full_like(x0, self.mask_id)
        else:
            other = torch.randint(0, self.K, x0.shape, device=x0.device)
        return torch.where(keep, x0, other)

    def reverse_probs(self, x_t: torch.Tensor, p0: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """p(x_s | x_t) ∝ q(x_t | x_s) * sum_x0 q(x_s | x0) p0(x0), for s < t: [B, L, K].
        p0 [B, L, V or K] is a distribution over x0 (the model's, or a one-hot for the true
        posterior)."""
        if p0.shape[-1] < self.K:
            p0 = F.pad(p0, (0, self.K - p0.shape[-1]))
        m = self.mix(x_t)
        a_t, a_s = self.abar(t).view(-1, 1, 1), self.abar(s).view(-1, 1, 1)
        r = a_t / a_s.clamp_min(EPS)
        fact1 = r * F.one_hot(x_t, self.K).float() + (1 - r) * m[x_t].unsqueeze(-1)
        fact2 = a_s * p0 + (1 - a_s) * m
        probs = fact1 * fact2
        return probs / probs.sum(-1, keepdim=True).clamp_min(EPS)

    def denoise(self, inputs: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits of p(x0 | x_t) over the V real tokens, [B, out_len, V]."""
        return self.dit(torch.cat([inputs[:, :self.in_len], x_t], dim=1), t)

    # ---- sampling
    def sample_times(self, steps: int, device) -> torch.Tensor:
        return torch.linspace(1.0, 0.0, steps + 1, device=device)

    def compile_targets(self) -> list[nn.Module]:
        """The denoiser's DiT blocks."""
        return [m for m in self.modules() if isinstance(m, DiTBlock)]

    def calls_per_answer(self, steps: int) -> int:
        return len(self.sample_times(steps, torch.device("cpu"))) - 1

    @torch.no_grad()
    def sample(self, inputs, puzzle_ids, n_samples, steps=None):
        B = inputs.shape[0]
        x = inputs.repeat_interleave(n_samples, 0)
        R = x.shape[0]
        shape = (R, self.out_len)
        if self.transition == "absorbing":
            x_t = torch.full(shape, self.mask_id, dtype=torch.long, device=x.device)
        else:
            x_t = torch.randint(0, self.K, shape, device=x.device)
        times = self.sample_times(steps or self.default_steps, x.device)
        logp0 = None
        for t, s in zip(times[:-1], times[1:]):
            tt, ss = t.expand(R), s.expand(R)
            logits = self.denoise(x, x_t, tt)
            p0 = torch.softmax(logits, -1)
            if s <= 0:  # last step: x_0 ~ p(x0 | x_t), keeping tokens already unmasked
                x0 = torch.distributions.Categorical(probs=p0).sample()
                x_t = torch.where(x_t < self.V, x_t, x0) if self.transition == "absorbing" else x0
                logp0 = torch.log_softmax(logits, -1)
                break
            x_t = torch.distributions.Categorical(probs=self.reverse_probs(x_t, p0, tt, ss)).sample()
        conf = logp0.gather(-1, x_t.clamp_max(self.V - 1)[..., None]).squeeze(-1).mean(-1)
        return SampleOutput(x_t.clamp_max(self.V - 1).view(B, n_samples, -1), {"loglik": conf.view(B, n_samples)})


def check_diffusion(cfg) -> None:
    if min(cfg.hidden, cfg.heads, cfg.blocks, cfg.enc_channels) < 1:
        raise ValueError("hidden, heads, blocks and enc_channels must be at least 1")
    if cfg.hidden % cfg.heads:
        raise ValueError("hidden must be divisible by heads")


# ----------------------------------------------------------------------------- D3PM


@MODELS.register("d3pm")
class D3PM(DiscreteDiffusion):
    """D3PM: discrete diffusion with uniform or absorbing transitions and the hybrid loss."""

    name = "d3pm"

    @dataclass(frozen=True)
    class Config(ModelConfig):
        hidden: int = 512  # Small: 512 / 3 blocks / 8 heads (15.9M); Big: 768 / 5 / 12 (55.1M)
        heads: int = 8
        blocks: int = 3
        transition: str = "uniform"  # uniform | absorbing
        T: int = 1000  # diffusion steps
        hybrid_coeff: float = 0.001  # lambda of the auxiliary x0 cross-entropy
        enc_channels: int = 32  # image tasks: channels of the conv patch encoder


        def check(self) -> None:
            check_diffusion(self)
            check_choices(self, transition=("uniform", "absorbing"))
            if self.T < 1 or self.hybrid_coeff < 0:
                raise ValueError("T must be at least 1 and hybrid_coeff non-negative")

    def __init__(self, cfg, layout):
        self.transition = cfg.transition
        super().__init__(cfg, layout)

    @property
    def default_steps(self) -> int:
        return self.cfg.T

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        if self.transition == "absorbing":
            return 1.0 - t  # Austin et al.'s 1/(T - t + 1) schedule: abar_t = 1 - t/T
        s = 0.008
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return (f / math.cos(s / (1 + s) * math.pi / 2) ** 2).clamp(0.0, 1.0)

    def sample_times(self, steps: int, device) -> torch.Tensor:
        """`steps` evenly spaced points of the T-step grid, from T down to 0."""
        T = self.cfg.T
        grid = torch.linspace(T, 0, min(steps, T) + 1, device=device).round() / T
        return torch.unique_consecutive(grid)

    def loss(self, batch, carry):
        x, x0 = batch["inputs"], batch["targets"]
        B, T = x0.shape[0], self.cfg.T
        ti = torch.randint(1, T + 1, (B,), device=x0.device)
        t, s = ti.float() / T, (ti - 1).float() / T
        x_t = self.q_sample(x0, t)
        logits = self.denoise(x, x_t, t)
        logp0 = torch.log_softmax(logits, -1)
        ce = F.nll_loss(logp0.transpose(1, 2), x0, reduction="none")  # [B, L]: -log p(x0 | x_t)
        q = self.reverse_probs(x_t, F.one_hot(x0, self.V).float(), t, s)
        p = self.reverse_probs(x_t, logp0.exp(), t, s)
        kl = (q * (torch.log(q.clamp_min(EPS)) - torch.log(p.clamp_min(EPS)))).sum(-1)
        vb = torch.where((ti == 1).view(-1, 1), ce, kl)  # L_0 = -log p(x0 | x1)
        loss = (vb + self.cfg.hybrid_coeff * ce).mean()
        with torch.no_grad():
            logs = {"vb": vb.mean().detach(), "ce": ce.mean().detach(),
                    "token_acc": (logits.argmax(-1) == x0).float().mean()}
        return loss, logs, carry

    def transition_matrix(self, t: int) -> torch.Tensor:
        """The single-step matrix Q_t [K, K] (row = x_{t-1}, column = x_t), for checks."""
        T = self.cfg.T
        a_t, a_prev = self.abar(torch.tensor([t / T])), self.abar(torch.tensor([(t - 1) / T]))
        r = float(a_t / a_prev.clamp_min(EPS))
        m = self.mix(torch.zeros(1))
        return r * torch.eye(self.K) + (1 - r) * m[None, :].expand(self.K, self.K)


# ----------------------------------------------------------------------------- MDLM


@MODELS.register("mdlm")
class MDLM(DiscreteDiffusion):
    """MDLM: masked diffusion, continuous time, ancestral sampling."""

    name = "mdlm"
    transition = "absorbing"

    @dataclass(frozen=True)
    class Config(ModelConfig):
        hidden: int = 512
        heads: int = 8
        blocks: int = 2
        steps: int = 1000  # sampling steps
        t_min: float = 1e-3  # lower end of the training times (the 1/t weight)
        enc_channels: int = 32  # image tasks: channels of the conv patch encoder


        def check(self) -> None:
            check_diffusion(self)
            if self.steps < 1 or not 0 < self.t_min < 1:
                raise ValueError("steps must be at least 1 and t_min in (0, 1)")

    @property
    def default_steps(self) -> int:
        return self.cfg.steps

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - t.float()

    def loss(self, batch, carry):
        x, x0 = batch["inputs"], batch["targets"]
        B = x0.shape[0]
        # low-discrepancy times: one uniform offset, B evenly spaced points
        u = (torch.rand(1, device=x0.device) + torch.arange(B, device=x0.device) / B) % 1
        t = self.cfg.t_min + (1 - self.cfg.t_min) * u
        x_t = self.q_sample(x0, t)
        masked = x_t == self.mask_id
        logits = self.denoise(x, x_t, t)
        ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # [B, L]
        per = (ce * masked).sum(-1) / t / self.out_len  # (-abar'(t) / (1 - abar(t))) = 1/t
        with torch.no_grad():
            acc = ((logits.argmax(-1) == x0) | ~masked).float().mean()
        return per.mean(), {"ce": ((ce * masked).sum() / masked.sum().clamp_min(1)).detach(),
                            "token_acc": acc}, carry
