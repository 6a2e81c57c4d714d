"""GRAM and TRM built directly with tiny configs: losses, gradients, sampling, the carry."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gram_bench.models import MODELS
from gram_bench.models.gram import GRAM
from gram_bench.models.guidance import gaussian_kl
from gram_bench.models.trm import TRM
from gram_bench.tasks import Layout
from conftest import make_model, random_batch

LAYOUT = Layout(64, 64, 3)
GRAM_CFG = GRAM.Config(hidden=32, heads=2, ffn_hidden=64, l_layers=1, h_layers=1, K=1, T=2, n_sup=2, prefix=1)
TRM_CFG = TRM.Config(hidden=32, heads=2, ffn_hidden=64, layers=1, n=1, T=2, n_sup=2, prefix=1)
CPU = torch.device("cpu")


def make(cls, cfg, seed: int = 0, **changes):
    return make_model(cls, cfg, LAYOUT, seed, **changes)


def batch(b: int = 4, seed: int = 0) -> dict:
    return random_batch(b, 64, 64, seed=seed)


def grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_registry():
    assert MODELS.get("gram") is GRAM and MODELS.get("trm") is TRM
    assert GRAM.stochastic and not TRM.stochastic


def test_gram_loss_step_reaches_every_part():
    m = make(GRAM, GRAM_CFG).train()
    # At init q == p exactly (zero-initialised output layers), where the KL and its gradient
    # are 0; move the posterior off the prior so the prior's gradient is a real one.
    torch.nn.init.normal_(m.guide.posterior.out.weight, std=0.05)
    b = batch()
    loss, logs, carry = m.loss(b, m.initial_carry(b, CPU))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(logs) >= {"ce", "kl", "halt", "value", "token_acc", "exact", "steps"}
    assert all(torch.isfinite(v) for v in logs.values())
    assert float(logs["kl"]) >= 0
    loss.backward()
    for part in (m.f_L, m.f_H, m.guide.prior, m.guide.posterior, m.lm_head, m.embed):
        assert grad_norm(part) > 0, part
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    # the fixed z0 is a buffer: stored in the checkpoint, never trained
    names = dict(m.named_parameters())
    assert "h0" not in names and "l0" not in names
    assert {"h0", "l0"} <= set(m.state_dict())


def test_trm_loss_step_reaches_the_network():
    m = make(TRM, TRM_CFG).train()
    b = batch()
    loss, logs, _ = m.loss(b, m.initial_carry(b, CPU))
    assert torch.isfinite(loss) and "kl" not in logs
    loss.backward()
    for part in (m.net, m.lm_head, m.embed, m.q_head):
        assert grad_norm(part) > 0, part
    assert {"y0", "z0"} <= set(m.state_dict())
    assert "y0" not in dict(m.named_parameters())


def test_gram_loss_is_ce_plus_beta_kl():
    """With zero halting/value weights the loss is mean(CE) + beta * mean(KL) (Eq. 14)."""
    m = make(GRAM, GRAM_CFG, beta=0.25, halt_loss_weight=0.0, value_loss_weight=0.0).train()
    b = batch()
    loss, logs, _ = m.loss(b, m.initial_carry(b, CPU))
    assert loss.item() == pytest.approx(float(logs["ce"]) + 0.25 * float(logs["kl"]), rel=1e-5)


def test_gaussian_kl():
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    assert float(gaussian_kl(zero, one, zero, one)) == 0.0
    assert float(gaussian_kl(torch.tensor(1.0), one, zero, one)) == pytest.approx(0.5)
    # KL(N(0, 1) || N(0, 2^2)) = log 2 + 1/8 - 1/2
    assert float(gaussian_kl(zero, one, zero, torch.tensor(2.0))) == pytest.approx(0.6931472 + 0.125 - 0.5)


def test_gram_samples_differ():
    """GRAM draws eps ~ p(eps | u) at every transition, so the N trajectories of one input
    differ. The hidden state is continuous noise plus a deterministic part, so two rows are
    equal with probability zero: that is the robust check. For the (seeded, so fixed)
    predictions, an untrained model with unit-scale prior noise (sigma_init = 1) on a
    unit-RMS h already gives distinct argmax boards; we ask only for more than one."""
    m = make(GRAM, GRAM_CFG).eval()
    x = batch(3)["inputs"]
    pid = torch.zeros(3, dtype=torch.long)
    torch.manual_seed(1)
    out = m.sample(x, pid, n_samples=8, steps=2)
    assert out.preds.shape == (3, 8, 64) and out.preds.dtype == torch.long
    assert set(out.scores) == {"halt", "lprm"}
    assert all(v.shape == (3, 8) for v in out.scores.values())
    assert int(out.preds.min()) >= 0 and int(out.preds.max()) < 3
    for b in range(3):
        assert len({tuple(r.tolist()) for r in out.preds[b]}) > 1

    # the state itself, through the same public pieces `sample` uses
    xr = x[:1].repeat_interleave(8, 0)
    e_x = m.embed_inputs(xr, torch.zeros(8, dtype=torch.long))
    with torch.no_grad():
        (h, _), _ = m.segment(m.init_state(8, CPU), e_x, None)
    assert h.shape == (8, m.seq_len, 32)
    d = (h[1:] - h[:1]).abs().flatten(1).max(1).values
    assert bool((d > 1e-3).all())


def test_gram_sample_is_seeded():
    m = make(GRAM, GRAM_CFG).eval()
    x, pid = batch(2)["inputs"], torch.zeros(2, dtype=torch.long)
    torch.manual_seed(5)
    a = m.sample(x, pid, 4, 2).preds
    torch.manual_seed(5)
    b = m.sample(x, pid, 4, 2).preds
    assert torch.equal(a, b)


@pytest.mark.parametrize("cls, cfg", [(TRM, TRM_CFG), (GRAM, dataclasses.replace(GRAM_CFG, guidance="none"))])
def test_deterministic_models_repeat_themselves(cls, cfg):
    m = make(cls, cfg).eval()
    x, pid = batch(3)["inputs"], torch.zeros(3, dtype=torch.long)
    torch.manual_seed(0)
    a = m.sample(x, pid, n_samples=8, steps=2)
    torch.manual_seed(123)
    b = m.sample(x, pid, n_samples=8, steps=2)
    assert a.preds.shape == (3, 8, 64)
    assert torch.equal(a.preds, b.preds)
    assert torch.equal(a.preds, a.preds[:, :1].expand_as(a.preds))  # all N samples identical
    assert a.scores.keys() == b.scores.keys() and all(torch.equal(a.scores[k], b.scores[k]) for k in a.scores)


def test_gram_noise_ablation_is_stochastic():
    m = make(GRAM, GRAM_CFG, guidance="noise", sigma_init=1.0).eval()
    assert not hasattr(m.guide, "posterior") and not hasattr(m.guide, "prior")
    x, pid = batch(1)["inputs"], torch.zeros(1, dtype=torch.long)
    torch.manual_seed(0)
    out = m.sample(x, pid, 8, 2)
    assert len({tuple(r.tolist()) for r in out.preds[0]}) > 1


def test_default_depth_is_n_sup():
    m = make(TRM, TRM_CFG, n_sup=3).eval()
    x, pid = batch(2)["inputs"], torch.zeros(2, dtype=torch.long)
    assert m.default_steps == 3
    assert torch.equal(m.sample(x, pid, 1).preds, m.sample(x, pid, 1, steps=3).preds)


@pytest.mark.parametrize("cls, cfg", [(GRAM, GRAM_CFG), (TRM, TRM_CFG)])
def test_carry_halts_after_n_sup_and_resets(cls, cfg):
    m = make(cls, dataclasses.replace(cfg, n_sup=3)).train()
    b1, b2 = batch(4, seed=1), batch(4, seed=2)
    carry = m.initial_carry(b1, CPU)
    assert bool(carry["halted"].all())  # the first call takes every row from the batch
    for step in range(1, 4):
        _, logs, carry = m.loss(b1, carry)
        assert carry["steps"].tolist() == [step] * 4
        assert carry["halted"].tolist() == [step == 3] * 4  # the q head starts at -5: no early halt
        assert float(logs["steps"]) == step
        assert torch.equal(carry["inputs"], b1["inputs"])
    # every row halted: the next call replaces all of them with the new batch, from z0
    _, _, carry = m.loss(b2, carry)
    assert carry["steps"].tolist() == [1] * 4
    assert torch.equal(carry["inputs"], b2["inputs"]) and torch.equal(carry["targets"], b2["targets"])
    assert all(not s.requires_grad for s in carry["state"])


def test_act_halts_early_when_confident():
    m = make(TRM, TRM_CFG, n_sup=4, halt_exploration=0.0).train()
    with torch.no_grad():
        m.q_head.bias.fill_(5.0)  # q_halt = +5 > 0 for every row
    b = batch()
    _, _, carry = m.loss(b, m.initial_carry(b, CPU))
    assert carry["halted"].all() and carry["steps"].tolist() == [1] * 4
    m.eval()  # no ACT outside training: rows run the full n_sup
    _, _, carry = m.loss(b, m.initial_carry(b, CPU))
    assert not carry["halted"].any()


def test_carry_rows_halt_independently():
    m = make(GRAM, GRAM_CFG).train()
    b = batch()
    carry = m.initial_carry(b, CPU)
    carry["halted"] = torch.tensor([True, True, True, True])
    _, _, carry = m.loss(b, carry)
    carry["halted"] = torch.tensor([True, False, False, True])  # rows 0 and 3 finished early
    _, _, carry = m.loss(batch(seed=9), carry)
    assert carry["steps"].tolist() == [1, 2, 2, 1]
    assert torch.equal(carry["inputs"][[1, 2]], b["inputs"][[1, 2]])
    assert torch.equal(carry["inputs"][[0, 3]], batch(seed=9)["inputs"][[0, 3]])


@pytest.mark.parametrize("cls, cfg", [(GRAM, GRAM_CFG), (TRM, TRM_CFG)])
def test_n_sup_one_trains(cls, cfg):
    m = make(cls, cfg, n_sup=1).train()
    b = batch()
    loss, _, carry = m.loss(b, m.initial_carry(b, CPU))
    assert torch.isfinite(loss) and carry["halted"].all()


def test_config_check_rejects_bad_values():
    for bad in (dict(hidden=33), dict(guidance="both"), dict(K=0), dict(prefix=0), dict(beta=-1.0)):
        with pytest.raises(ValueError):
            dataclasses.replace(GRAM_CFG, **bad).check()
    GRAM_CFG.check()
    TRM_CFG.check()
    with pytest.raises(ValueError):
        dataclasses.replace(TRM_CFG, ce_reduce="max").check()


def test_num_params_and_seeded_init():
    a, b, c = make(GRAM, GRAM_CFG, seed=0), make(GRAM, GRAM_CFG, seed=0), make(GRAM, GRAM_CFG, seed=1)
    assert a.num_params() == sum(p.numel() for p in a.parameters()) > 0
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.h0, c.h0)


@pytest.mark.parametrize("where,calls", [("last", 1), ("all", 3)])
def test_posterior_is_sampled_only_where_its_kl_is_paid(where, calls, monkeypatch):
    """posterior_at=last: the T-1 gradient-free transitions use the prior, so y cannot reach
    the decoder without its KL being in the loss."""
    m = make(GRAM, GRAM_CFG, T=3, posterior_at=where).train()
    n = {"post": 0, "prior": 0}
    for name in n:
        mod = getattr(m.guide, "posterior" if name == "post" else "prior")
        orig = mod.forward

        def counted(x, _orig=orig, _name=name):
            n[_name] += 1
            return _orig(x)

        monkeypatch.setattr(mod, "forward", counted)
    b = batch()
    m.loss(b, m.initial_carry(b, CPU))
    assert n == {"post": calls, "prior": 3}


def test_staggered_carry_replaces_a_share_of_the_rows_at_every_step():
    m = make(GRAM, GRAM_CFG, n_sup=4, act=False, carry="staggered").train()
    b = batch(8)
    carry = m.initial_carry(b, CPU)
    assert carry["steps"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and not carry["halted"].any()
    halted = []
    for _ in range(6):
        _, _, carry = m.loss(batch(8, seed=1), carry)
        halted.append(int(carry["halted"].sum()))
    assert halted == [2] * 6  # 8 rows / 4 steps; lockstep would be [0, 0, 0, 8, 0, 0]
    lock = make(GRAM, GRAM_CFG, n_sup=4, act=False)
    c = lock.initial_carry(b, CPU)
    seen = []
    for _ in range(6):
        _, _, c = lock.loss(batch(8, seed=1), c)
        seen.append(int(c["halted"].sum()))
    assert seen == [0, 0, 0, 8, 0, 0]


def test_carry_state_prior_carries_the_prior_path():
    m = make(GRAM, GRAM_CFG, act=False, carry_state="prior").train()
    paper = make(GRAM, GRAM_CFG, act=False).train()
    b = batch(4)
    torch.manual_seed(0)
    _, _, post = paper.loss(b, paper.initial_carry(b, CPU))
    torch.manual_seed(0)
    _, _, prior = m.loss(b, m.initial_carry(b, CPU))
    assert not torch.equal(post["state"][0], prior["state"][0])  # h differs: eps from p, not q
    assert torch.equal(post["state"][1], prior["state"][1])  # l is the same (noise only on h)


def test_sigma_cap_bounds_the_guidance_noise_and_starts_at_sigma_init():
    m = make(GRAM, GRAM_CFG, sigma_init=0.1, sigma_max=0.2)
    u = torch.randn(2, m.seq_len, 32)
    _, sd = m.guide.prior(u)
    torch.testing.assert_close(sd, torch.full_like(sd, 0.1))
    torch.nn.init.normal_(m.guide.prior.out.weight, std=100.0)  # push raw to both extremes
    _, sd = m.guide.prior(u)
    assert float(sd.max()) <= 0.2 + 1e-6 and float(sd.min()) >= 1e-3 - 1e-9
    with pytest.raises(ValueError, match="sigma_min < sigma_init < sigma_max"):
        dataclasses.replace(GRAM_CFG, sigma_init=0.3, sigma_max=0.2).check()
