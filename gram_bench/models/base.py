"""The Model seam, and the deep-supervision + ACT machinery shared by recursive models.

A model consumes batches `{"inputs" [B, in_len], "targets" [B, out_len], "puzzle_ids" [B]}`:
- `loss(batch, carry) -> (loss, logs, carry)`: one optimizer step;
- `sample(inputs, puzzle_ids, n_samples, steps) -> SampleOutput` with predictions
  [B, N, out_len] and per-sample scores [B, N]; the N samples are one [B*N] batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from gram_bench.models.layers import InputEmbedding, Linear, count_params, pad_to, trunc_normal_

Carry = dict[str, Any]


@dataclass
class SampleOutput:
    preds: torch.Tensor  # [B, N, out_len] long
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B, N] float


class Model(nn.Module):
    name: ClassVar[str]
    Config: ClassVar[type]
    stochastic: ClassVar[bool] = False  # do samples of one input differ?

    def __init__(self, cfg: Any, layout: Any):
        super().__init__()
        self.cfg, self.layout = cfg, layout

    def initial_carry(self, batch: dict, device: torch.device) -> Carry:
        return {}

    def loss(self, batch: dict, carry: Carry) -> tuple[torch.Tensor, dict[str, torch.Tensor], Carry]:
        raise NotImplementedError

    def sample(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor, n_samples: int,
               steps: int | None = None) -> SampleOutput:
        raise NotImplementedError

    @property
    def default_steps(self) -> int:
        return 1

    def num_params(self) -> int:
        return count_params(self)


class RecursiveModel(Model):
    """Deep supervision with a carried latent state and ACT halting (HRM/TRM/GRAM).

    Each `loss` call runs one supervision step on every row of the carry: rows that halted
    on the previous call are replaced by the same rows of the new batch and their state is
    reset to the fixed z0. A row halts after `n_sup` steps or, with ACT, when the halting
    logit is positive (`halting=bce`, TRM: q_halt is trained by BCE on exact correctness) or
    exceeds the continue logit (`halting=q_learning`, HRM: q_continue is trained towards the
    next step's Q value, one extra no-grad forward), after a random minimum number of steps
    with probability `halt_exploration`. Subclasses define the state and one supervision step."""

    def __init__(self, cfg: Any, layout: Any):
        super().__init__(cfg, layout)
        D = cfg.hidden
        self.seq_len = cfg.prefix + max(layout.in_len, layout.out_len)
        self.embed = InputEmbedding(layout.vocab, D, cfg.prefix, layout.n_puzzle_ids)
        self.lm_head = Linear(D, layout.vocab)
        # Halting and value heads read the first position, detached from the core.
        n_q = 2 if cfg.halting == "q_learning" else 1  # (q_halt, q_continue) or q_halt
        self.q_head = nn.Sequential(Linear(D, D, bias=True), nn.SiLU(), Linear(D, n_q, bias=True))
        self.v_head = nn.Sequential(Linear(D, D, bias=True), nn.SiLU(), Linear(D, 1, bias=True))
        nn.init.zeros_(self.q_head[2].weight)
        nn.init.constant_(self.q_head[2].bias, -5.0)
        nn.init.zeros_(self.v_head[2].weight)

    # ---- to implement
    def init_state(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def segment(self, state: tuple, e_x: torch.Tensor, y: torch.Tensor | None) -> tuple[tuple, dict]:
        """One supervision step. `y` [B, out_len] is the target in training, None at inference.
        Returns the new state and extras (e.g. per-example `kl` [B])."""
        raise NotImplementedError

    def readout(self, state: tuple) -> torch.Tensor:
        """The hidden sequence the decoder reads, [B, S, D]."""
        raise NotImplementedError

    def extra_loss(self, extras: dict) -> tuple[torch.Tensor, dict]:
        """Per-example extra loss terms [B] added to the CE (e.g. beta * KL)."""
        return torch.zeros(()), {}

    # ---- shared
    @property
    def default_steps(self) -> int:
        return self.cfg.n_sup

    def embed_inputs(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(pad_to(inputs, self.seq_len - self.cfg.prefix), puzzle_ids)

    def heads(self, hid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hid [B, S, D] -> logits [B, out_len, V] (fp32), q [B, 1 or 2] (halt[, continue]),
        value [B]."""
        P = self.cfg.prefix
        logits = self.lm_head(hid[:, P:P + self.layout.out_len]).float()
        first = hid[:, 0].detach() if self.cfg.detach_heads else hid[:, 0]
        return logits, self.q_head(first).float(), self.v_head(first).float().squeeze(-1)

    def initial_carry(self, batch: dict, device: torch.device) -> Carry:
        B = batch["inputs"].shape[0]
        return {
            "state": tuple(s.detach() for s in self.init_state(B, device)),
            "steps": torch.zeros(B, dtype=torch.long, device=device),
            "halted": torch.ones(B, dtype=torch.bool, device=device),
            "inputs": torch.zeros_like(batch["inputs"]),
            "targets": torch.zeros_like(batch["targets"]),
            "puzzle_ids": torch.zeros_like(batch["puzzle_ids"]),
        }

    def _reset(self, batch: dict, carry: Carry) -> Carry:
        h = carry["halted"]
        fresh = self.init_state(h.shape[0], h.device)
        m = h.view(-1, 1, 1)
        return {
            "state": tuple(torch.where(m, f, s) for f, s in zip(fresh, carry["state"])),
            "steps": torch.where(h, 0, carry["steps"]),
            "inputs": torch.where(h.view(-1, 1), batch["inputs"], carry["inputs"]),
            "targets": torch.where(h.view(-1, 1), batch["targets"], carry["targets"]),
            "puzzle_ids": torch.where(h, batch["puzzle_ids"], carry["puzzle_ids"]),
        }

    def loss(self, batch: dict, carry: Carry) -> tuple[torch.Tensor, dict[str, torch.Tensor], Carry]:
        c = self._reset(batch, carry)
        y = c["targets"]
        e_x = self.embed_inputs(c["inputs"], c["puzzle_ids"])
        state, extras = self.segment(c["state"], e_x, y)
        logits, q, value = self.heads(self.readout(state))
        q_halt = q[:, 0]
        ce_tok = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # [B, L]
        ce = ce_tok.mean(-1) if self.cfg.ce_reduce == "mean" else ce_tok.sum(-1)
        with torch.no_grad():
            pred = logits.argmax(-1)
            tok_acc = (pred == y).float().mean(-1)
            exact = (pred == y).all(-1)
        extra, extra_logs = self.extra_loss(extras)
        steps = c["steps"] + 1
        halt_loss = F.binary_cross_entropy_with_logits(q_halt, exact.float())
        if self.cfg.halting == "q_learning":
            halt_loss = halt_loss + F.binary_cross_entropy_with_logits(
                q[:, 1], self._continue_target(state, e_x, steps >= self.cfg.n_sup))
        value_loss = F.mse_loss(value, exact.float())
        loss = (ce + extra).mean() + self.cfg.halt_loss_weight * halt_loss + self.cfg.value_loss_weight * value_loss
        with torch.no_grad():
            halted = steps >= self.cfg.n_sup
            if self.cfg.act and self.training:
                halt_now = q_halt > (q[:, 1] if self.cfg.halting == "q_learning" else 0)
                explore = torch.rand_like(q_halt) < self.cfg.halt_exploration
                min_steps = torch.randint_like(steps, min(2, self.cfg.n_sup), self.cfg.n_sup + 1) * explore
                halted = halted | (halt_now & (steps >= min_steps))
        logs = {"ce": ce.mean().detach(), "halt": halt_loss.detach(), "value": value_loss.detach(),
                "token_acc": tok_acc.mean(), "exact": exact.float().mean(),
                "steps": steps.float().mean(), **extra_logs}
        new_carry = {"state": tuple(s.detach() for s in state), "steps": steps, "halted": halted,
                     "inputs": c["inputs"], "targets": y, "puzzle_ids": c["puzzle_ids"]}
        return loss, logs, new_carry

    @torch.no_grad()
    def _continue_target(self, state: tuple, e_x: torch.Tensor, is_last: torch.Tensor) -> torch.Tensor:
        """HRM's Q-learning target for q_continue: one extra forward (no gradient) from the new
        state; sigmoid(q_halt') on a row's last step, else sigmoid(max(q_halt', q_continue'))."""
        nxt, _ = self.segment(tuple(s.detach() for s in state), e_x.detach(), None)
        _, q_next, _ = self.heads(self.readout(nxt))
        return torch.sigmoid(torch.where(is_last, q_next[:, 0], q_next.max(-1).values))

    @torch.no_grad()
    def sample(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor, n_samples: int,
               steps: int | None = None) -> SampleOutput:
        B = inputs.shape[0]
        x = inputs.repeat_interleave(n_samples, 0)  # [B*N, L]: width in the batch dimension
        pid = puzzle_ids.repeat_interleave(n_samples, 0)
        e_x = self.embed_inputs(x, pid)
        state = self.init_state(x.shape[0], x.device)
        for _ in range(steps or self.cfg.n_sup):
            state, _ = self.segment(state, e_x, None)
        logits, q, value = self.heads(self.readout(state))
        preds = logits.argmax(-1).view(B, n_samples, -1)
        return SampleOutput(preds, {"halt": torch.sigmoid(q[:, 0]).view(B, n_samples),
                                    "lprm": value.view(B, n_samples)})


def check_recursive(cfg: Any, positive: tuple[str, ...]) -> None:
    """Checks shared by the recursive models' configs; raises ValueError naming the field."""
    if cfg.hidden % cfg.heads:
        raise ValueError("hidden must be divisible by heads")
    low = [f for f in positive if getattr(cfg, f) < 1]
    if low:
        raise ValueError(f"{', '.join(low)} must be at least 1")
    if cfg.prefix < 1:
        raise ValueError("prefix must be at least 1 (the heads read position 0)")
    for name, choices in (("ce_reduce", ("sum", "mean")), ("halting", ("bce", "q_learning"))):
        if getattr(cfg, name) not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got '{getattr(cfg, name)}'")
    if not 0 <= cfg.halt_exploration <= 1:
        raise ValueError("halt_exploration must be in [0, 1]")


def init_z0(dim: int) -> torch.Tensor:
    """A fixed initial state vector ~ truncated N(0, 1), broadcast over positions."""
    return trunc_normal_(torch.empty(dim), 1.0)


def ffn_for(dim: int, expansion: float) -> int:
    """TRM's SwiGLU width: round(expansion * D * 2/3) up to a multiple of 256."""
    return int(math.ceil(round(expansion * dim * 2 / 3) / 256) * 256)
