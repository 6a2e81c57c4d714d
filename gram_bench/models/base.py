"""The Model seam, and the deep-supervision + ACT machinery shared by recursive models.

A model consumes batches `{"inputs" [B, in_len], "targets" [B, out_len], "puzzle_ids" [B]}`:
- `loss(batch, carry) -> (loss, logs, carry)`: one optimizer step;
- `sample(inputs, puzzle_ids, n_samples, steps) -> SampleOutput` with predictions
  [B, N, out_len] and per-sample scores [B, N]; the N samples are one [B*N] batch.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from gram_bench.models.layers import (MIXERS, InputEmbedding, Linear, PatchHead, Stack, count_params, pad_to,
                                     trunc_normal_)

Carry = dict[str, Any]


@dataclass
class SampleOutput:
    preds: torch.Tensor  # [B, N, out_len] long
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B, N] float


class ModelConfig:
    """Base of every model's frozen `Config` dataclass (the fields are the subclass's)."""

    inference_fields: ClassVar[tuple[str, ...]] = ()  # fields `gram-bench eval --set` may change

    def check(self) -> None:
        """Raise ValueError naming a bad value or combination of values; called whenever a
        config is resolved. Accepts everything by default."""


class Model(nn.Module, abc.ABC):
    """Base class. Subclasses set `name` and `Config` (a frozen dataclass subclassing
    `ModelConfig`) and implement `loss` and `sample`; every other hook has a default."""

    name: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]
    stochastic: ClassVar[bool] = False  # do samples of one input differ?
    ema_exclude: ClassVar[tuple[str, ...]] = ()  # state_dict key prefixes/suffixes the EMA leaves out
    supports_image: ClassVar[bool] = False  # can it read and write image layouts (`Layout.image`)?
    image_only: ClassVar[bool] = False  # does it work on image layouts only (e.g. the VAE)?

    def __init__(self, cfg: Any, layout: Any):
        super().__init__()
        self.cfg, self.layout = cfg, layout

    def initial_carry(self, batch: dict, device: torch.device) -> Carry:
        """The state `loss` carries from one optimizer step to the next; none by default."""
        return {}

    @abc.abstractmethod
    def loss(self, batch: dict, carry: Carry) -> tuple[torch.Tensor, dict[str, torch.Tensor], Carry]:
        """One optimizer step's loss, the values to log, and the next carry."""

    @abc.abstractmethod
    def sample(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor, n_samples: int,
               steps: int | None = None) -> SampleOutput:
        """`n_samples` answers per input [B, N, out_len] and per-sample scores [B, N]."""

    @property
    def default_steps(self) -> int:
        """Inference steps when the eval gives none (`eval.steps=0`)."""
        return 1

    def calls_per_answer(self, steps: int) -> int:
        """Network (stack) applications to produce one answer at `steps`; with FLOPs per answer,
        the sampling cost the leaderboard compares."""
        return steps

    def num_params(self) -> int:
        """Parameter count reported in the summary and the leaderboard."""
        return count_params(self)

    def compile_targets(self) -> list[nn.Module]:
        """The submodules `train.compile` compiles in place (static shapes): by default every
        block stack (`Stack`), which is where a recursive step spends its time."""
        return [m for m in self.modules() if isinstance(m, Stack)]

    def sparse_step(self, lr_scale: float) -> None:
        """Update state trained outside the optimizer, after `opt.step()`; `lr_scale` is the
        schedule's lr over the base lr. None here."""


class RecursiveModel(Model):
    """Deep supervision with a carried latent state and ACT halting (HRM/TRM/GRAM).

    Each `loss` call runs one supervision step on every row of the carry: rows that halted
    on the previous call are replaced by the same rows of the new batch and their state is
    reset to the fixed z0. A row halts after `n_sup` steps or, with ACT, when the halting
    logit is positive (`halting=bce`, TRM: q_halt is trained by BCE on exact correctness) or
    exceeds the continue logit (`halting=q_learning`, HRM: q_continue is trained towards the
    next step's Q value, one extra no-grad forward), after a random minimum number of steps
    with probability `halt_exploration`. Subclasses define the state and one supervision step.

    With several puzzle ids the puzzle embedding is a sparse table (see `InputEmbedding`)
    updated by `sparse_step` with sign-SGD, outside the optimizer and the EMA."""

    ema_exclude = ("embed.puzzle_table",)
    supports_image = True

    def __init__(self, cfg: Any, layout: Any):
        super().__init__(cfg, layout)
        D = cfg.hidden
        self.embed = InputEmbedding(layout.vocab, D, cfg.prefix, layout.n_puzzle_ids, cfg.puzzle_dim or D)
        if layout.image is not None:
            # Image answers (unconditional generation): the state holds one position per patch;
            # the input embedding is empty (no content) plus a learned position per patch, and
            # the decoder maps each patch back to its P x P pixels.
            self.answer_len = layout.n_patches
            self.image_pos = nn.Parameter(trunc_normal_(torch.empty(self.answer_len, D), 1.0))
            self.lm_head = PatchHead(D, layout.vocab, *layout.image)
        else:
            self.answer_len = layout.out_len
            self.lm_head = Linear(D, layout.vocab)
        self.seq_len = cfg.prefix + max(layout.in_len, self.answer_len)
        # Halting and value heads read the first position (detached from the core with
        # detach_heads). The Q head is one linear layer, as TRM/HRM (weight 0, bias -5); the
        # LPRM value head (GRAM) is a small MLP and exists only where it is trained.
        n_q = 2 if cfg.halting == "q_learning" else 1  # (q_halt, q_continue) or q_halt
        self.q_head = Linear(D, n_q, bias=True)
        nn.init.zeros_(self.q_head.weight)
        nn.init.constant_(self.q_head.bias, -5.0)
        self.v_head = None
        if cfg.value_loss_weight > 0:
            self.v_head = nn.Sequential(Linear(D, D, bias=True), nn.SiLU(), Linear(D, 1, bias=True))
            nn.init.zeros_(self.v_head[2].weight)

    # ---- to implement
    @abc.abstractmethod
    def init_state(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The fixed initial state z0 for `batch_size` rows."""

    @abc.abstractmethod
    def segment(self, state: tuple, e_x: torch.Tensor, y: torch.Tensor | None) -> tuple[tuple, dict]:
        """One supervision step. `y` [B, out_len] is the target in training, None at inference.
        Returns the new state and extras (e.g. per-example `kl` [B])."""

    @abc.abstractmethod
    def readout(self, state: tuple) -> torch.Tensor:
        """The hidden sequence the decoder reads, [B, S, D]."""

    def extra_loss(self, extras: dict) -> tuple[torch.Tensor, dict]:
        """Per-example extra loss terms [B] added to the CE (e.g. beta * KL)."""
        return torch.zeros(()), {}

    # ---- shared
    @property
    def default_steps(self) -> int:
        return self.cfg.n_sup

    def sparse_step(self, lr_scale: float) -> None:
        """Sign-SGD on the puzzle-embedding rows of the last training batch (lr `puzzle_lr` x
        `lr_scale`, decoupled weight decay `puzzle_wd`); a no-op with a dense embedding."""
        self.embed.sparse_step(self.cfg.puzzle_lr * lr_scale, self.cfg.puzzle_wd)

    def embed_inputs(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
        if self.layout.image is not None:
            prefix = self.embed(inputs[:, :0], puzzle_ids)  # [B, prefix, D]: the puzzle tokens only
            pos = self.image_pos.to(prefix.dtype).expand(prefix.shape[0], -1, -1)
            return torch.cat([prefix, pos], dim=1)
        return self.embed(pad_to(inputs, self.seq_len - self.cfg.prefix), puzzle_ids)

    def decode(self, hid: torch.Tensor) -> torch.Tensor:
        """hid [B, S, D] -> answer logits [B, out_len, V] (fp32)."""
        P = self.cfg.prefix
        return self.lm_head(hid[:, P:P + self.answer_len]).float()

    def judge(self, hid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hid [B, S, D] -> q [B, 1 or 2] (halt[, continue]) and the LPRM value [B] (None
        without a value head), both read from the first position."""
        first = hid[:, 0].detach() if self.cfg.detach_heads else hid[:, 0]
        value = self.v_head(first).float().squeeze(-1) if self.v_head is not None else None
        return self.q_head(first).float(), value

    def initial_carry(self, batch: dict, device: torch.device) -> Carry:
        """The carry before the first step. `carry=lockstep` (the paper's): every row starts
        at step 0, so without ACT the whole batch is replaced every n_sup steps and each
        minibatch serves n_sup consecutive updates. `carry=staggered`: row i starts as if
        it had already run i * n_sup // B steps (from z0, on the first batch), so from then on
        about B / n_sup rows are replaced at every step and consecutive updates share most
        examples but never repeat a whole minibatch at one depth."""
        B = batch["inputs"].shape[0]
        if self.cfg.carry == "staggered":
            return {
                "state": tuple(s.detach() for s in self.init_state(B, device)),
                "steps": torch.arange(B, device=device) * self.cfg.n_sup // B,
                "halted": torch.zeros(B, dtype=torch.bool, device=device),
                "inputs": batch["inputs"].clone(), "targets": batch["targets"].clone(),
                "puzzle_ids": batch["puzzle_ids"].clone(),
            }
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
        """One supervision step: CE of the answer (summed or averaged over its tokens,
        `ce_reduce`) plus the model's extra terms (GRAM: beta * KL), the halting loss and the
        LPRM value loss.

        The halting and value targets describe what inference will do (`targets=prior`): a
        model with a posterior also returns `prior_state`, the last transition redone with the
        prior's eps (no gradient unless `prior_ce` adds a CE on its decode); its decode gives
        the targets (halting: exact; LPRM: token accuracy or exact, `value_target`) and the
        heads read that state, as they do at inference. A deterministic model has one path, so
        both choices agree there. `carry_state=prior` carries that state to the next step."""
        c = self._reset(batch, carry)
        y = c["targets"]
        e_x = self.embed_inputs(c["inputs"], c["puzzle_ids"])
        state, extras = self.segment(c["state"], e_x, y)
        prior_state = extras.pop("prior_state", None)
        hid = self.readout(state)
        logits = self.decode(hid)
        ce_tok = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # [B, L], nats
        ce = ce_tok.mean(-1) if self.cfg.ce_reduce == "mean" else ce_tok.sum(-1)
        prior_ce = self.cfg.prior_ce if prior_state is not None else 0.0  # only models with a posterior
        if prior_state is not None:
            prior_hid = self.readout(prior_state)
            with torch.set_grad_enabled(torch.is_grad_enabled() and prior_ce > 0):
                p_logits = self.decode(prior_hid)
            prior_hid = prior_hid.detach()
        with torch.no_grad():
            hit = logits.argmax(-1) == y
            tok_acc, exact = hit.float().mean(-1), hit.all(-1)
            t_tok, t_exact, judged = tok_acc, exact, hid
            if prior_state is not None:
                p_hit = p_logits.argmax(-1) == y
                p_exact = p_hit.all(-1)
                if self.cfg.targets == "prior":
                    t_tok, t_exact, judged = p_hit.float().mean(-1), p_exact, prior_hid
        q, value = self.judge(judged)
        q_halt = q[:, 0]
        extra, extra_logs = self.extra_loss(extras)
        steps = c["steps"] + 1
        halt_loss = F.binary_cross_entropy_with_logits(q_halt, t_exact.float())
        if self.cfg.halting == "q_learning":
            halt_loss = halt_loss + F.binary_cross_entropy_with_logits(
                q[:, 1], self._continue_target(state, e_x, steps >= self.cfg.n_sup))
        loss = (ce + extra).mean() + self.cfg.halt_loss_weight * halt_loss
        if prior_state is not None and prior_ce > 0:  # a deviation from Eq. 14 (GuidanceConfig.prior_ce)
            p_tok = F.cross_entropy(p_logits.transpose(1, 2), y, reduction="none")
            p_ce = p_tok.mean(-1) if self.cfg.ce_reduce == "mean" else p_tok.sum(-1)
            loss = loss + prior_ce * p_ce.mean()
        logs = {"ce": ce.mean().detach(), "ce_token": ce_tok.mean().detach(), "halt": halt_loss.detach(),
                "token_acc": tok_acc.mean(), "exact": exact.float().mean(), "steps": steps.float().mean(),
                **extra_logs}
        if value is not None:
            r = t_tok if self.cfg.value_target == "token_acc" else t_exact.float()
            value_loss = F.mse_loss(value, r)
            loss = loss + self.cfg.value_loss_weight * value_loss
            logs["value"] = value_loss.detach()
        if prior_state is not None:
            logs["prior_exact"] = p_exact.float().mean()
        with torch.no_grad():
            halted = steps >= self.cfg.n_sup
            if self.cfg.act and self.training:
                halt_now = q_halt > (q[:, 1] if self.cfg.halting == "q_learning" else 0)
                explore = torch.rand_like(q_halt) < self.cfg.halt_exploration
                min_steps = torch.randint_like(steps, min(2, self.cfg.n_sup), self.cfg.n_sup + 1) * explore
                halted = halted | (halt_now & (steps >= min_steps))
        if prior_state is not None and self.cfg.carry_state == "prior":
            state = tuple(s.detach() for s in prior_state)
        new_carry = {"state": tuple(s.detach() for s in state), "steps": steps, "halted": halted,
                     "inputs": c["inputs"], "targets": y, "puzzle_ids": c["puzzle_ids"]}
        return loss, logs, new_carry

    @torch.no_grad()
    def _continue_target(self, state: tuple, e_x: torch.Tensor, is_last: torch.Tensor) -> torch.Tensor:
        """HRM's Q-learning target for q_continue: one extra forward (no gradient) from the new
        state; sigmoid(q_halt') on a row's last step, else sigmoid(max(q_halt', q_continue'))."""
        nxt, _ = self.segment(tuple(s.detach() for s in state), e_x.detach(), None)
        q_next, _ = self.judge(self.readout(nxt))
        return torch.sigmoid(torch.where(is_last, q_next[:, 0], q_next.max(-1).values))

    @torch.no_grad()
    def sample(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor, n_samples: int,
               steps: int | None = None) -> SampleOutput:
        B = inputs.shape[0]
        x = inputs.repeat_interleave(n_samples, 0)  # [B*N, L]: width in the batch dimension
        pid = puzzle_ids.repeat_interleave(n_samples, 0)
        e_x = self.embed_inputs(x, pid)
        state = self.init_state(x.shape[0], x.device)
        if self.cfg.init == "random":  # ablation: a fresh random z0 per trajectory
            state = tuple(torch.randn(s.shape[0], 1, s.shape[2], device=s.device, dtype=s.dtype).expand_as(s)
                          for s in state)
        for _ in range(steps or self.cfg.n_sup):
            state, _ = self.segment(state, e_x, None)
        hid = self.readout(state)
        logits = self.decode(hid)
        q, value = self.judge(hid)
        if self.cfg.decode == "sample":  # ablation: sample each answer token from the decoder
            preds = torch.distributions.Categorical(logits=logits).sample().view(B, n_samples, -1)
        else:
            preds = logits.argmax(-1).view(B, n_samples, -1)
        scores = {"halt": torch.sigmoid(q[:, 0]).view(B, n_samples)}
        if value is not None:
            scores["lprm"] = value.view(B, n_samples)
        return SampleOutput(preds, scores)


@dataclass(frozen=True)
class RecursiveConfig(ModelConfig):
    """Fields shared by every recursive model; each model's Config subclasses it, adds its own
    fields and may change defaults."""

    hidden: int = 512
    heads: int = 8
    ffn_hidden: int = 1536
    n_sup: int = 16  # supervision steps
    prefix: int = 16  # puzzle-embedding tokens; the heads read position 0
    puzzle_dim: int = 0  # values per puzzle id in the sparse table (several ids only); 0 = hidden
    puzzle_lr: float = 1e-2  # sign-SGD lr of the sparse puzzle table (TRM's ARC setting)
    puzzle_wd: float = 0.1  # its decoupled weight decay
    rope_theta: float = 10000.0
    mixer: str = "attention"  # sequence mixing in the core: attention | mlp (TRM-MLP, fixed length)
    ce_reduce: str = "mean"  # per-example CE: mean over answer tokens (TRM) | sum
    act: bool = True  # ACT halting in training
    carry: str = "lockstep"  # deep-supervision data flow in training: lockstep (paper) | staggered
    # models with a posterior: the state carried to the next supervision step in training is the
    # posterior's (paper: trajectories sampled from q) or the prior's (the states inference visits)
    carry_state: str = "posterior"
    halting: str = "bce"  # bce (TRM: q_halt > 0) | q_learning (HRM: q_halt > q_continue)
    halt_exploration: float = 0.1
    halt_loss_weight: float = 0.5
    value_loss_weight: float = 0.0  # LPRM value head (GRAM's); 0 = no value head (TRM, HRM have none)
    targets: str = "prior"  # halting/value targets from: prior (what inference decodes) | posterior (ablation)
    value_target: str = "token_acc"  # LPRM target r: token accuracy in [0, 1] | exact
    detach_heads: bool = False  # keep the Q/value losses out of the core
    decode: str = "argmax"  # answer tokens at inference: argmax | sample (a stochastic decoder, ablation)
    init: str = "fixed"  # initial state at inference: fixed z0 | random (a fresh N(0, I) z0 per sample, ablation)

    positive: ClassVar[tuple[str, ...]] = ("n_sup",)  # fields that must be >= 1
    inference_fields: ClassVar[tuple[str, ...]] = ("decode", "init")  # `gram-bench eval --set` may change these

    def check(self) -> None:
        low = [f for f in ("hidden", "heads", "ffn_hidden") + self.positive if getattr(self, f) < 1]
        if low:
            raise ValueError(f"{', '.join(low)} must be at least 1")
        if self.hidden % self.heads:
            raise ValueError("hidden must be divisible by heads")
        if self.prefix < 1:
            raise ValueError("prefix must be at least 1 (the heads read position 0)")
        if not 0 <= self.puzzle_dim <= self.prefix * self.hidden:
            raise ValueError(f"puzzle_dim must be in [0, prefix * hidden = {self.prefix * self.hidden}] "
                             f"(0 = hidden), got {self.puzzle_dim}")
        if self.puzzle_lr < 0 or self.puzzle_wd < 0:
            raise ValueError("puzzle_lr and puzzle_wd must be non-negative")
        check_choices(self, mixer=MIXERS, ce_reduce=("sum", "mean"), halting=("bce", "q_learning"),
                      decode=("argmax", "sample"), init=("fixed", "random"),
                      targets=("prior", "posterior"), value_target=("token_acc", "exact"),
                      carry=("lockstep", "staggered"), carry_state=("posterior", "prior"))
        if self.halt_loss_weight < 0 or self.value_loss_weight < 0:
            raise ValueError("halt_loss_weight and value_loss_weight must be non-negative")
        if not 0 <= self.halt_exploration <= 1:
            raise ValueError("halt_exploration must be in [0, 1]")


def check_choices(cfg: Any, **choices: tuple[str, ...]) -> None:
    """Raise ValueError naming the first field whose value is not one of its choices."""
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got '{getattr(cfg, name)}'")


def init_z0(dim: int) -> torch.Tensor:
    """A fixed initial state vector ~ truncated N(0, 1), broadcast over positions."""
    return trunc_normal_(torch.empty(dim), 1.0)
