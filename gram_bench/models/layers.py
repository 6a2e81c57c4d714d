"""Shared layers: RMSNorm, RoPE, SDPA attention, SwiGLU, post-norm blocks (attention or
MLP-mixer), token embedding with prefix (puzzle) tokens, and the recurrent-state
initialisation. Used by every model."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


# std of N(0, 1) truncated to [-2, 2]: sqrt(1 - 4 phi(2) / (2 Phi(2) - 1))
_TRUNC2_STD = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))


def trunc_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    """Truncated normal whose standard deviation is `std` (LeCun-style init when std =
    1/sqrt(fan_in)), cut at +-2 of the underlying normal's std, as TRM/HRM's
    `trunc_normal_init_`: the underlying std is std / 0.8796 so the truncation does not shrink it."""
    s = std / _TRUNC2_STD
    with torch.no_grad():
        return nn.init.trunc_normal_(t, mean=0.0, std=s, a=-2 * s, b=2 * s)


def rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm without weight, computed in fp32 and cast back."""
    dt = x.dtype
    x = x.float()
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(dt)


class Linear(nn.Linear):
    """nn.Linear with LeCun truncated-normal init and no bias by default."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False):
        super().__init__(d_in, d_out, bias=bias)
        trunc_normal_(self.weight, 1.0 / math.sqrt(d_in))
        if bias:
            nn.init.zeros_(self.bias)


class Rotary(nn.Module):
    """RoPE tables for a fixed maximum length; static shapes for torch.compile."""

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        inv = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        freqs = torch.outer(torch.arange(max_len).float(), inv)  # [S, hd/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:  # x [B, H, S, hd]
        S = x.shape[-2]
        cos, sin = self.cos[offset:offset + S].to(x.dtype), self.sin[offset:offset + S].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, rope_theta: float = 10000.0, causal: bool = False):
        super().__init__()
        assert dim % heads == 0, "hidden must be divisible by heads"
        self.heads, self.head_dim, self.causal = heads, dim // heads, causal
        self.qkv = Linear(dim, 3 * dim)
        self.out = Linear(dim, dim)
        self.rope = Rotary(self.head_dim, max_len, rope_theta)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:  # [B, S, D]
        """With `cache` (a dict, empty at first), keys and values of earlier positions are
        reused and the new ones appended: x holds only the new positions (causal only)."""
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        offset = cache["k"].shape[2] if cache else 0
        q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            if offset:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # a single new query attends to every cached key; a prefix of S > 1 is causal
        causal = self.causal and S > 1
        if causal and offset:
            mask = torch.ones(S, offset + S, dtype=torch.bool, device=x.device).tril(offset)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(B, S, D))


def ffn_for(dim: int, expansion: float) -> int:
    """TRM's SwiGLU width: round(expansion * D * 2/3) up to a multiple of 256."""
    return int(math.ceil(round(expansion * dim * 2 / 3) / 256) * 256)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = Linear(dim, 2 * hidden)
        self.down = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)


class Block(nn.Module):
    """Post-norm transformer block (TRM/HRM): x = norm(x + attn(x)); x = norm(x + mlp(x))."""

    def __init__(self, dim: int, heads: int, ffn_hidden: int, max_len: int, rope_theta: float = 10000.0,
                 causal: bool = False):
        super().__init__()
        self.attn = Attention(dim, heads, max_len, rope_theta, causal)
        self.mlp = SwiGLU(dim, ffn_hidden)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = rms_norm(x + self.attn(x, cache))
        return rms_norm(x + self.mlp(x))


class MixerBlock(nn.Module):
    """Post-norm MLP-mixer block (TRM-MLP): attention replaced by a token-mixing SwiGLU over
    the sequence axis, x = norm(x^T + mix(x^T))^T, the RMSNorm of this sublayer taken over the
    positions as TRM's `mlp_t` does; then x = norm(x + mlp(x)) over channels as in `Block`.

    The token mixer maps seq_len -> seq_hidden -> seq_len with weights shared over channels;
    seq_hidden defaults to TRM's rule for its expansion 4, `ffn_for(seq_len, 4)` (97 -> 512
    for Sudoku with 16 prefix tokens). Inputs must have exactly `seq_len` positions; never
    causal, no KV cache."""

    def __init__(self, dim: int, seq_len: int, ffn_hidden: int, seq_hidden: int | None = None):
        super().__init__()
        self.seq_len = seq_len
        self.mix = SwiGLU(seq_len, seq_hidden or ffn_for(seq_len, 4.0))
        self.mlp = SwiGLU(dim, ffn_hidden)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:  # [B, S, D]
        if cache is not None:
            raise ValueError("MixerBlock has no KV cache (the mlp mixer is not causal)")
        if x.shape[1] != self.seq_len:
            raise ValueError(f"MixerBlock built for {self.seq_len} positions, got {x.shape[1]}")
        t = x.transpose(1, 2)  # [B, D, S]
        x = rms_norm(t + self.mix(t)).transpose(1, 2)  # normalised over the S positions (TRM-MLP)
        return rms_norm(x + self.mlp(x))


MIXERS = ("attention", "mlp")


class Stack(nn.Module):
    """A stack of blocks; ends in an RMSNorm (the post-norm of its last block).

    `mixer` picks the sequence mixing of every layer: `attention` (`Block`) or `mlp`
    (`MixerBlock` over exactly `max_len` positions; not causal, no cache)."""

    def __init__(self, layers: int, dim: int, heads: int, ffn_hidden: int, max_len: int,
                 rope_theta: float = 10000.0, causal: bool = False, mixer: str = "attention"):
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {', '.join(MIXERS)}, got '{mixer}'")
        if mixer == "mlp" and causal:
            raise ValueError("the mlp mixer cannot be causal (use mixer=attention)")
        self.layers = nn.ModuleList(
            Block(dim, heads, ffn_hidden, max_len, rope_theta, causal) if mixer == "attention"
            else MixerBlock(dim, max_len, ffn_hidden) for _ in range(layers))

    def forward(self, x: torch.Tensor, caches: list[dict] | None = None) -> torch.Tensor:
        """`caches`: one dict per layer for incremental causal decoding (see Attention)."""
        for i, layer in enumerate(self.layers):
            x = layer(x, caches[i] if caches is not None else None)
        return x


class InputEmbedding(nn.Module):
    """Token embedding preceded by `prefix` learned puzzle-embedding tokens.

    inputs [B, L] -> [B, prefix + L, D]; the whole sequence, puzzle tokens included, is scaled
    by sqrt(D), as TRM/HRM. The puzzle embedding is zero-initialised (TRM).

    With one puzzle id, or `puzzle_dim=None`, it is a dense `nn.Embedding(ids, prefix * D)`
    trained by the optimizer. With `puzzle_dim` set and several ids it is TRM's sparse
    embedding: a persistent fp32 buffer `puzzle_table` [ids, puzzle_dim], each vector
    zero-padded to prefix * D and viewed as [prefix, D]. A training forward with grad copies
    the batch's rows into a leaf that requires grad; `sparse_step` then updates only those
    rows by sign-SGD (one training forward per step: a second one replaces the saved rows)."""

    def __init__(self, vocab: int, dim: int, prefix: int, n_puzzle_ids: int = 1, puzzle_dim: int | None = None):
        super().__init__()
        self.dim, self.prefix, self.scale = dim, prefix, math.sqrt(dim)
        self.tok = nn.Embedding(vocab, dim)
        trunc_normal_(self.tok.weight, 1.0 / math.sqrt(dim))
        self.puzzle: nn.Embedding | None = None
        self.sparse = False
        self._saved: tuple[torch.Tensor, torch.Tensor] | None = None  # (ids, rows) of the last training forward
        if prefix > 0 and n_puzzle_ids > 1 and puzzle_dim is not None:
            if not 1 <= puzzle_dim <= prefix * dim:
                raise ValueError(f"puzzle_dim must be in [1, prefix * hidden = {prefix * dim}], got {puzzle_dim}")
            self.sparse = True
            self.register_buffer("puzzle_table", torch.zeros(n_puzzle_ids, puzzle_dim))
        elif prefix > 0:
            self.puzzle = nn.Embedding(max(n_puzzle_ids, 1), prefix * dim)
            nn.init.zeros_(self.puzzle.weight)

    def forward(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(inputs)
        if self.sparse:
            rows = self.puzzle_table[puzzle_ids]
            if self.training and torch.is_grad_enabled():
                rows.requires_grad_()
                self._saved = (puzzle_ids, rows)
            flat = F.pad(rows, (0, self.prefix * self.dim - rows.shape[-1]))
        elif self.puzzle is not None:
            flat = self.puzzle(puzzle_ids)
        else:
            return self.scale * x
        return self.scale * torch.cat([flat.view(-1, self.prefix, self.dim).to(x.dtype), x], dim=1)

    @torch.no_grad()
    def sparse_step(self, lr: float, weight_decay: float) -> None:
        """Sign-SGD with decoupled weight decay on the rows of the last training forward:
        w <- w * (1 - lr * wd) - lr * sign(sum of the row's gradients in the batch). Then
        forgets them; a no-op without saved rows or without their gradient."""
        saved, self._saved = self._saved, None
        if saved is None or saved[1].grad is None:
            return
        ids, rows = saved
        g = rows.grad
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # data parallel: every rank applies the update of the whole global batch, so the
            # tables stay identical (the rows' gradients are summed, as in one process)
            all_ids, all_g = [torch.empty_like(ids) for _ in range(dist.get_world_size())], \
                [torch.empty_like(g) for _ in range(dist.get_world_size())]
            dist.all_gather(all_ids, ids.contiguous())
            dist.all_gather(all_g, g.contiguous())
            ids, g = torch.cat(all_ids), torch.cat(all_g) / dist.get_world_size()
        uniq, inv = ids.unique(return_inverse=True)
        grad = torch.zeros(len(uniq), rows.shape[1], dtype=g.dtype, device=rows.device)
        grad.index_add_(0, inv, g)
        w = self.puzzle_table[uniq]
        self.puzzle_table[uniq] = w.mul_(1 - lr * weight_decay).add_(grad.sign_(), alpha=-lr)


class PatchEncoder(nn.Module):
    """Image tokens -> patch features (REFERENCE.md section 3, binarized MNIST): the one-hot
    token map [B, vocab, H, W] goes through two 5x5 conv blocks (conv, GroupNorm, SiLU) and a
    PxP stride-P patch projection to [B, (H/P)(W/P), dim], patches in row-major order."""

    def __init__(self, vocab: int, dim: int, height: int, width: int, patch: int, channels: int = 32):
        super().__init__()
        if height % patch or width % patch:
            raise ValueError(f"image {height}x{width} is not divisible into {patch}x{patch} patches")
        self.vocab, self.hw = vocab, (height, width)
        groups = math.gcd(8, channels)
        self.convs = nn.Sequential(
            nn.Conv2d(vocab, channels, 5, padding=2), nn.GroupNorm(groups, channels), nn.SiLU(),
            nn.Conv2d(channels, channels, 5, padding=2), nn.GroupNorm(groups, channels), nn.SiLU())
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, H*W] long
        H, W = self.hw
        x = F.one_hot(tokens.view(-1, H, W), self.vocab).permute(0, 3, 1, 2).to(self.proj.weight.dtype)
        return self.proj(self.convs(x)).flatten(2).transpose(1, 2)


class PatchHead(nn.Module):
    """Patch features [B, (H/P)(W/P), dim] -> per-pixel logits [B, H*W, vocab] (row-major
    pixels): a linear map to P*P*vocab per patch, then the patches are put back in place."""

    def __init__(self, dim: int, vocab: int, height: int, width: int, patch: int):
        super().__init__()
        self.vocab, self.hw, self.patch = vocab, (height, width), patch
        self.out = Linear(dim, patch * patch * vocab, bias=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        (H, W), P, V = self.hw, self.patch, self.vocab
        x = self.out(h).view(-1, H // P, W // P, P, P, V)  # [B, gh, gw, ph, pw, V]
        return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H * W, V)


def pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Right-pad token ids [B, L] with 0 to `length`."""
    return F.pad(x, (0, length - x.shape[1])) if x.shape[1] < length else x


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
