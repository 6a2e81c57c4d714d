"""The MLP-mixer core (TRM-MLP, `mixer=mlp`): MixerBlock's size, token mixing, and GRAM/TRM
built with it on a Sudoku-sized layout."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gram_bench.harness.config import resolve
from gram_bench.core.errors import UsageError
from gram_bench.models.gram import GRAM
from gram_bench.models.hrm import HRM
from gram_bench.models.layers import Attention, Block, MixerBlock, Stack, count_params, ffn_for
from gram_bench.models.looped import LoopedTF
from gram_bench.models.trm import TRM
from gram_bench.tasks import Layout
from conftest import make_model, random_batch

SUDOKU = Layout(in_len=81, out_len=81, vocab=11)
GRAM_CFG = GRAM.Config(hidden=32, heads=2, ffn_hidden=64, l_layers=1, h_layers=1, K=1, T=2, n_sup=2, prefix=1,
                       mixer="mlp")
TRM_CFG = TRM.Config(hidden=32, heads=2, ffn_hidden=64, layers=1, n=1, T=2, n_sup=2, prefix=1, mixer="mlp")
CPU = torch.device("cpu")


def make(cls, cfg, seed: int = 0, **changes):
    return make_model(cls, cfg, SUDOKU, seed, **changes)


def batch(b: int = 4, seed: int = 0) -> dict:
    return random_batch(b, 81, 81, (0, 11), (1, 11), seed)


@pytest.mark.parametrize("dim, seq_len, ffn", [(32, 82, 64), (512, 97, 1536), (48, 10, 100)])
def test_mixer_block_param_count_closed_form(dim, seq_len, ffn):
    """Two bias-free SwiGLUs: 3 * (S * H_S + D * F), with H_S = ffn_for(S, 4)."""
    hs = ffn_for(seq_len, 4.0)
    assert count_params(MixerBlock(dim, seq_len, ffn)) == 3 * (seq_len * hs + dim * ffn)
    assert count_params(MixerBlock(dim, seq_len, ffn, seq_hidden=7)) == 3 * (seq_len * 7 + dim * ffn)
    assert ffn_for(97, 4.0) == 512 and ffn_for(512, 4.0) == 1536  # Sudoku's 16 + 81 positions; D = 512


@pytest.mark.parametrize("cls, cfg", [(GRAM, GRAM_CFG), (TRM, TRM_CFG)])
def test_mlp_models_train_and_sample(cls, cfg):
    m = make(cls, cfg).train()
    assert m.seq_len == 82
    blocks = [mod for mod in m.modules() if isinstance(mod, (Block, MixerBlock))]
    assert blocks and all(isinstance(b, MixerBlock) for b in blocks)
    assert not any(isinstance(mod, Attention) for mod in m.modules())
    b = batch()
    loss, logs, carry = m.loss(b, m.initial_carry(b, CPU))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in logs.values())
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for blk in blocks:  # the token mixer is trained
        assert float(blk.mix.gate_up.weight.grad.abs().sum()) > 0
    assert carry["state"][0].shape == (4, 82, 32)

    m.eval()
    out = m.sample(b["inputs"][:2], b["puzzle_ids"][:2], n_samples=3)
    assert out.preds.shape == (2, 3, 81) and out.preds.dtype == torch.long
    assert int(out.preds.min()) >= 0 and int(out.preds.max()) < 11
    assert all(v.shape == (2, 3) for v in out.scores.values())


def test_hrm_and_looped_pass_the_mixer():
    for cls, extra in ((HRM, {"h_layers": 1, "l_layers": 1}), (LoopedTF, {"layers": 1, "loops": 2})):
        cfg = cls.Config(hidden=32, heads=2, ffn_hidden=64, prefix=1, mixer="mlp", **extra)
        cfg.check()
        m = cls(cfg, SUDOKU)
        blocks = [mod for mod in m.modules() if isinstance(mod, (Block, MixerBlock))]
        assert blocks and all(isinstance(b, MixerBlock) for b in blocks), cls


def stack_out(mixer: str, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    return Stack(1, x.shape[-1], 2, 64, x.shape[1], mixer=mixer)(x)


def test_token_mixing_reaches_other_positions():
    torch.manual_seed(1)
    x = torch.randn(2, 82, 32)
    x2 = x.clone()
    x2[:, 40] = torch.randn(2, 32)
    with torch.no_grad():
        d = (stack_out("mlp", x2) - stack_out("mlp", x)).abs().amax(-1)  # [B, S]
    others = torch.cat([d[:, :40], d[:, 41:]], 1)
    assert bool((others > 1e-4).all())


def test_mixer_is_permutation_sensitive():
    """An MLP over positions has a weight per position, so permuting the input positions does
    not just permute the output (it would for attention without positional encoding)."""
    torch.manual_seed(2)
    x = torch.randn(2, 82, 32)
    perm = torch.randperm(82)
    with torch.no_grad():
        out, out_p = stack_out("mlp", x), stack_out("mlp", x[:, perm])
    assert not torch.allclose(out_p, out[:, perm], atol=1e-3)


def test_mixer_defaults_to_attention_and_is_unchanged():
    assert TRM.Config().mixer == GRAM.Config().mixer == HRM.Config().mixer == LoopedTF.Config().mixer == "attention"
    x = torch.randn(2, 16, 32)
    torch.manual_seed(0)
    a = Stack(2, 32, 2, 64, 16)
    torch.manual_seed(0)
    b = Stack(2, 32, 2, 64, 16, mixer="attention")
    assert all(isinstance(layer, Block) for layer in b.layers)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_invalid_mixer_is_rejected():
    for cfg in (GRAM_CFG, TRM_CFG):
        with pytest.raises(ValueError, match="mixer must be one of attention, mlp, got 'conv'"):
            dataclasses.replace(cfg, mixer="conv").check()
        cfg.check()
    with pytest.raises(ValueError, match="mixer must be one of attention, mlp"):
        Stack(1, 32, 2, 64, 16, mixer="conv")
    with pytest.raises(ValueError, match="causal"):
        Stack(1, 32, 2, 64, 16, causal=True, mixer="mlp")
    with pytest.raises(UsageError, match="mixer must be one of attention, mlp"):
        resolve("nqueens", "trm", "smoke", {"model.mixer": "conv"})
    assert resolve("nqueens", "trm", "smoke", {"model.mixer": "mlp"}).model.mixer == "mlp"


def test_mixer_block_rejects_a_cache_and_other_lengths():
    blk = MixerBlock(32, 16, 64)
    with pytest.raises(ValueError, match="cache"):
        blk(torch.randn(1, 16, 32), cache={})
    with pytest.raises(ValueError, match="16 positions, got 15"):
        blk(torch.randn(1, 15, 32))
