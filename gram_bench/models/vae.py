"""VAE baseline for binarized images (REFERENCE.md section 2: "VAE (MNIST) trained with binary
reconstruction loss").

A convolutional VAE with a diagonal Gaussian posterior q(z | x), a standard normal prior and a
Bernoulli likelihood p(x | z) over the pixels: the encoder is two 4x4 stride-2 convolutions
(28 -> 14 -> 7) and an MLP to (mu, log sigma^2); the decoder mirrors it with transposed
convolutions to one logit per pixel. The loss is the negative ELBO per image,
    sum over pixels of BCE(logit, x) + KL(q(z | x) || N(0, I)),
averaged over the batch. Samples draw z ~ N(0, I) and decode each pixel as white when its
probability exceeds 0.5 (`decode=argmax`, as GRAM's decoder) or as a Bernoulli draw
(`decode=sample`). Works on image layouts only (tokens: 0 pad, 1 black, 2 white).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from gram_bench.models import MODELS
from gram_bench.models.base import Model, ModelConfig, SampleOutput, check_choices
from gram_bench.models.layers import Linear

BLACK, WHITE = 1, 2  # pixel tokens


@MODELS.register("vae")
class VAE(Model):
    name = "vae"
    stochastic = True
    supports_image = True
    image_only = True

    @dataclass(frozen=True)
    class Config(ModelConfig):
        latent: int = 32  # [open] latent dimensions
        channels: int = 32  # conv channels (the second conv has twice as many)
        hidden: int = 512  # MLP width between the conv features and the latent
        decode: str = "argmax"  # pixels at sampling: argmax (p > 0.5) | sample (Bernoulli)

        inference_fields: ClassVar[tuple[str, ...]] = ("decode",)

        def check(self) -> None:
            low = [f for f in ("latent", "channels", "hidden") if getattr(self, f) < 1]
            if low:
                raise ValueError(f"{', '.join(low)} must be at least 1")
            check_choices(self, decode=("argmax", "sample"))

    def __init__(self, cfg: "VAE.Config", layout):
        super().__init__(cfg, layout)
        if layout.image is None:
            raise ValueError("the vae models images only (a task with an image layout, e.g. mnist)")
        H, W, _ = layout.image
        if H % 4 or W % 4:
            raise ValueError(f"the vae needs image sides divisible by 4, got {H}x{W}")
        C, h, w = cfg.channels, H // 4, W // 4
        self.hw, self.feat = (H, W), (2 * C, h, w)
        self.enc = nn.Sequential(nn.Conv2d(1, C, 4, 2, 1), nn.SiLU(), nn.Conv2d(C, 2 * C, 4, 2, 1), nn.SiLU(),
                                 nn.Flatten(), Linear(2 * C * h * w, cfg.hidden, bias=True), nn.SiLU(),
                                 Linear(cfg.hidden, 2 * cfg.latent, bias=True))
        self.dec_mlp = nn.Sequential(Linear(cfg.latent, cfg.hidden, bias=True), nn.SiLU(),
                                     Linear(cfg.hidden, 2 * C * h * w, bias=True), nn.SiLU())
        self.dec_conv = nn.Sequential(nn.ConvTranspose2d(2 * C, C, 4, 2, 1), nn.SiLU(),
                                      nn.ConvTranspose2d(C, 1, 4, 2, 1))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z [R, latent] -> one Bernoulli logit per pixel, [R, H*W] (fp32)."""
        return self.dec_conv(self.dec_mlp(z).view(-1, *self.feat)).flatten(1).float()

    def loss(self, batch, carry):
        x = (batch["targets"] == WHITE).float()  # [B, H*W]
        H, W = self.hw
        mu, logvar = self.enc(x.view(-1, 1, H, W)).float().chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = self.decode_logits(z)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
        loss = (recon + kl).mean()
        with torch.no_grad():
            logs = {"recon": recon.mean().detach(), "kl": kl.mean().detach(),
                    "token_acc": ((logits > 0) == (x > 0.5)).float().mean()}
        return loss, logs, carry

    @torch.no_grad()
    def sample(self, inputs, puzzle_ids, n_samples, steps=None):
        B = inputs.shape[0]
        z = torch.randn(B * n_samples, self.cfg.latent, device=inputs.device)
        logits = self.decode_logits(z)
        if self.cfg.decode == "sample":
            white = torch.bernoulli(torch.sigmoid(logits)).bool()
        else:
            white = logits > 0
        logp = F.logsigmoid(torch.where(white, logits, -logits)).mean(-1)  # mean log-prob of the chosen pixels
        preds = torch.where(white, WHITE, BLACK).view(B, n_samples, -1)
        return SampleOutput(preds, {"loglik": logp.view(B, n_samples)})
