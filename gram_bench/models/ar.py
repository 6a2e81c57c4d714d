"""AR: an autoregressive Transformer baseline (REFERENCE.md section 2).

Decoder-only, with the input tokens as a prefix: the sequence is
    [puzzle-embedding tokens] + input tokens + BOS + answer[:-1]
under a causal mask, trained by teacher forcing to predict each answer token. (A
decoder-only model was chosen over an encoder-decoder: one stack, the same blocks as the
recursive models, and a KV cache that covers the input too.) With no input tokens (an
unconditional task) the sequence starts at BOS.

Sampling draws each answer token from softmax(logits / temperature) (temperature 0 =
greedy), left to right, with a KV cache: N samples of B inputs are one [B*N] decode of
out_len steps. Each sample's score is its log-likelihood under the model (`loglik`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from gram_bench.models import MODELS
from gram_bench.models.base import Model, ModelConfig, SampleOutput, check_choices
from gram_bench.models.layers import InputEmbedding, Linear, Stack


@MODELS.register("ar")
class AR(Model):
    name = "ar"
    stochastic = True

    @dataclass(frozen=True)
    class Config(ModelConfig):
        hidden: int = 512
        heads: int = 8
        ffn_hidden: int = 1536
        layers: int = 3  # 10.2M parameters at D=512 (paper: 10.6M)
        prefix: int = 0  # puzzle-embedding tokens (0 = none)
        rope_theta: float = 10000.0
        temperature: float = 1.0  # sampling temperature; 0 = greedy
        kv_cache: bool = True  # False recomputes the whole prefix at every step (for checks)
        ce_reduce: str = "mean"

        inference_fields: ClassVar[tuple[str, ...]] = ("temperature", "kv_cache")

        def check(self) -> None:
            if min(self.hidden, self.heads, self.ffn_hidden, self.layers) < 1:
                raise ValueError("hidden, heads, ffn_hidden and layers must be at least 1")
            if self.hidden % self.heads:
                raise ValueError("hidden must be divisible by heads")
            if self.prefix < 0 or self.temperature < 0:
                raise ValueError("prefix and temperature must be non-negative")
            check_choices(self, ce_reduce=("sum", "mean"))

    def __init__(self, cfg: "AR.Config", layout):
        super().__init__(cfg, layout)
        D = cfg.hidden
        self.bos = layout.vocab  # one extra token id
        self.in_len, self.out_len = layout.in_len, layout.out_len
        self.seq_len = cfg.prefix + layout.in_len + layout.out_len
        self.embed = InputEmbedding(layout.vocab + 1, D, cfg.prefix, layout.n_puzzle_ids)
        self.net = Stack(cfg.layers, D, cfg.heads, cfg.ffn_hidden, self.seq_len, cfg.rope_theta, causal=True)
        self.head = Linear(D, layout.vocab)

    @property
    def default_steps(self) -> int:
        return self.layout.out_len  # network calls per answer

    def calls_per_answer(self, steps: int) -> int:
        return self.out_len  # one cached forward per answer token, whatever `steps` says

    def _prompt(self, inputs: torch.Tensor) -> torch.Tensor:
        bos = torch.full((inputs.shape[0], 1), self.bos, dtype=inputs.dtype, device=inputs.device)
        return torch.cat([inputs[:, :self.in_len], bos], dim=1)

    def loss(self, batch, carry):
        y = batch["targets"]
        tokens = torch.cat([self._prompt(batch["inputs"]), y[:, :-1]], dim=1)
        h = self.net(self.embed(tokens, batch["puzzle_ids"]))
        start = self.cfg.prefix + self.in_len  # the BOS position predicts the first answer token
        logits = self.head(h[:, start:start + self.out_len]).float()
        ce_tok = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        ce = ce_tok.mean(-1) if self.cfg.ce_reduce == "mean" else ce_tok.sum(-1)
        with torch.no_grad():
            pred = logits.argmax(-1)
            logs = {"ce": ce.mean().detach(), "token_acc": (pred == y).float().mean(),
                    "exact": (pred == y).all(-1).float().mean()}
        return ce.mean(), logs, carry

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        if self.cfg.temperature == 0:
            return logits.argmax(-1)
        return torch.distributions.Categorical(logits=logits / self.cfg.temperature).sample()

    @torch.no_grad()
    def sample(self, inputs, puzzle_ids, n_samples, steps=None):
        B = inputs.shape[0]
        x = inputs.repeat_interleave(n_samples, 0)
        pid = puzzle_ids.repeat_interleave(n_samples, 0)
        prompt = self._prompt(x)
        caches = [{} for _ in self.net.layers] if self.cfg.kv_cache else None
        h = self.net(self.embed(prompt, pid), caches)
        out, loglik = [], torch.zeros(x.shape[0], device=x.device)
        for i in range(self.out_len):
            logits = self.head(h[:, -1]).float()
            tok = self._pick(logits)
            loglik += torch.log_softmax(logits, -1).gather(1, tok[:, None]).squeeze(1)
            out.append(tok)
            if i + 1 == self.out_len:
                break
            if caches is not None:
                h = self.net(self.embed.scale * self.embed.tok(tok[:, None]), caches)
            else:
                h = self.net(self.embed(torch.cat([prompt, torch.stack(out, 1)], 1), pid))
        preds = torch.stack(out, 1).view(B, n_samples, -1)
        return SampleOutput(preds, {"loglik": loglik.view(B, n_samples)})
