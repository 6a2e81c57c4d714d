"""HRM, Looped TF and Direct Pred built directly with tiny configs: the update schedule,
which calls carry gradient, Q-learning halting, determinism, and paper-scale sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gram_bench.harness.config import resolve
from gram_bench.models import MODELS
from gram_bench.models.hrm import HRM
from gram_bench.models.looped import DirectPred, LoopedTF
from gram_bench.tasks import TASKS, Layout
from conftest import make_model, random_batch

LAYOUT = Layout(28, 8, 6)
HRM_CFG = HRM.Config(hidden=32, heads=2, ffn_hidden=64, h_layers=1, l_layers=1, H_cycles=2, L_cycles=3,
                     n_sup=3, prefix=1)
LOOP_CFG = LoopedTF.Config(hidden=32, heads=2, ffn_hidden=64, layers=1, loops=4, prefix=1)
DIRECT_CFG = DirectPred.Config(hidden=32, heads=2, ffn_hidden=64, layers=2, prefix=1)
CPU = torch.device("cpu")


def make(cls, cfg, seed: int = 0, **changes):
    return make_model(cls, cfg, LAYOUT, seed, **changes)


def batch(b: int = 4, seed: int = 0) -> dict:
    return random_batch(b, 28, 8, (1, 3), (3, 6), seed)


def count_calls(module: torch.nn.Module, monkeypatch) -> list[bool]:
    """Record, per call of `module`, whether gradient was enabled."""
    calls: list[bool] = []
    orig = module.forward

    def wrapped(x, _orig=orig):
        calls.append(torch.is_grad_enabled())
        return _orig(x)

    monkeypatch.setattr(module, "forward", wrapped)
    return calls


def test_registered():
    assert MODELS.get("hrm") is HRM and MODELS.get("looped-tf") is LoopedTF and MODELS.get("direct") is DirectPred
    assert not any(c.stochastic for c in (HRM, LoopedTF, DirectPred))


def test_hrm_schedule_and_one_step_gradient(monkeypatch):
    """H_cycles x L_cycles L-updates and H_cycles H-updates per supervision step; only the last
    of each carries gradient. Q-learning adds one no-grad forward for the continue target."""
    m = make(HRM, HRM_CFG).train()
    L, H = count_calls(m.L, monkeypatch), count_calls(m.H, monkeypatch)
    b = batch()
    loss, logs, _ = m.loss(b, m.initial_carry(b, CPU))
    per = 2 * 3  # H_cycles * L_cycles
    assert len(L) == 2 * per and len(H) == 2 * 2  # the segment, then the target forward
    assert L[:per] == [False] * (per - 1) + [True] and H[:2] == [False, True]
    assert not any(L[per:]) and not any(H[2:])  # the target forward has no gradient
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.L.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.H.parameters())
    assert m.q_head.out_features == 2


def test_hrm_bce_halting_needs_no_extra_forward(monkeypatch):
    m = make(HRM, HRM_CFG, halting="bce").train()
    L = count_calls(m.L, monkeypatch)
    b = batch()
    m.loss(b, m.initial_carry(b, CPU))
    assert len(L) == 6 and m.q_head.out_features == 1


def test_q_learning_halts_when_halt_beats_continue():
    m = make(HRM, HRM_CFG, halt_exploration=0.0).train()
    b = batch()
    with torch.no_grad():
        m.q_head.bias.copy_(torch.tensor([1.0, -1.0]))  # q_halt > q_continue everywhere
    _, _, carry = m.loss(b, m.initial_carry(b, CPU))
    assert carry["halted"].all()
    with torch.no_grad():
        m.q_head.bias.copy_(torch.tensor([1.0, 3.0]))  # positive halt logit, but continue is higher
    _, _, carry = m.loss(b, m.initial_carry(b, CPU))
    assert not carry["halted"].any()


def test_continue_target_uses_halt_only_on_the_last_step():
    m = make(HRM, HRM_CFG).eval()
    with torch.no_grad():
        m.q_head.bias.copy_(torch.tensor([-2.0, 1.0]))
    b = batch(2)
    e_x = m.embed_inputs(b["inputs"], b["puzzle_ids"])
    state = m.init_state(2, CPU)
    t = m._continue_target(state, e_x, torch.tensor([True, False]))
    assert torch.allclose(t, torch.sigmoid(torch.tensor([-2.0, 1.0])), atol=1e-5)


@pytest.mark.parametrize("grad_loops, expect", [(0, [True] * 4), (1, [False] * 3 + [True]),
                                                (2, [False] * 2 + [True] * 2)])
def test_looped_tf_applies_one_stack_repeatedly(grad_loops, expect, monkeypatch):
    m = make(LoopedTF, LOOP_CFG, grad_loops=grad_loops).train()
    calls = count_calls(m.net, monkeypatch)
    b = batch()
    loss, _, carry = m.loss(b, m.initial_carry(b, CPU))
    assert calls == expect
    assert carry["halted"].all()  # no deep supervision: every row is done after one step
    loss.backward()
    assert all(p.grad is not None for p in m.net.parameters())


def test_looped_tf_deep_supervision_rung():
    m = make(LoopedTF, LOOP_CFG, n_sup=3).train()
    b = batch()
    carry = m.initial_carry(b, CPU)
    for step in (1, 2, 3):
        _, _, carry = m.loss(b, carry)
        assert carry["steps"].tolist() == [step] * 4
    assert carry["halted"].all()


def test_direct_pred_is_one_pass(monkeypatch):
    m = make(DirectPred, DIRECT_CFG).train()
    calls = count_calls(m.net, monkeypatch)
    b = batch()
    m.loss(b, m.initial_carry(b, CPU))
    assert calls == [True] and len(m.net.layers) == 2
    assert DirectPred.Config().layers == 8
    with pytest.raises(ValueError, match="not recurrent"):
        dataclasses.replace(DIRECT_CFG, loops=2).check()


@pytest.mark.parametrize("cls, cfg", [(HRM, HRM_CFG), (LoopedTF, LOOP_CFG), (DirectPred, DIRECT_CFG)])
def test_deterministic_baselines_repeat_themselves(cls, cfg):
    m = make(cls, cfg).eval()
    x, pid = batch(3)["inputs"], torch.zeros(3, dtype=torch.long)
    torch.manual_seed(0)
    a = m.sample(x, pid, n_samples=5)
    torch.manual_seed(1)
    b = m.sample(x, pid, n_samples=5)
    assert a.preds.shape == (3, 5, 8)
    assert torch.equal(a.preds, b.preds) and torch.equal(a.preds, a.preds[:, :1].expand_as(a.preds))


@pytest.mark.parametrize("bad", [dict(hidden=33), dict(H_cycles=0), dict(halting="vote"), dict(prefix=0),
                                 dict(halt_exploration=2.0)])
def test_hrm_config_check(bad):
    with pytest.raises(ValueError):
        dataclasses.replace(HRM_CFG, **bad).check()


@pytest.mark.parametrize("model, low, high", [("hrm", 26.5e6, 28.5e6), ("looped-tf", 6.5e6, 7.5e6),
                                              ("direct", 26.5e6, 28.5e6)])
def test_paper_profile_sizes(model, low, high):
    """REFERENCE.md: HRM 27M, Looped TF 7M, Direct Pred (8 layers) 27M."""
    cfg = resolve("graph-coloring", model, "paper")
    task = TASKS.get("graph-coloring")(cfg.task, "unused")
    with torch.device("meta"):
        n = MODELS.get(model)(cfg.model, task.layout).num_params()
    assert low < n < high
