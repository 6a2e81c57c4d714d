"""AR, D3PM and MDLM: the forward process against its matrices, the reverse step against
Bayes' rule, monotone masking, KV-cache decoding, losses and sampling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gram_bench.harness.config import resolve
from gram_bench.metrics.records import select
from gram_bench.models import MODELS
from gram_bench.models.ar import AR
from gram_bench.models.diffusion import D3PM, MDLM
from gram_bench.tasks import TASKS, Layout
from conftest import make_model, random_batch

LAYOUT = Layout(6, 5, 4)
AR_CFG = AR.Config(hidden=32, heads=2, ffn_hidden=64, layers=2)
D3PM_CFG = D3PM.Config(hidden=32, heads=2, blocks=1, T=10)
MDLM_CFG = MDLM.Config(hidden=32, heads=2, blocks=1, steps=8)
CPU = torch.device("cpu")


def make(cls, cfg, layout=LAYOUT, **changes):
    return make_model(cls, cfg, layout, **changes)


def batch(b=4, layout=LAYOUT):
    return random_batch(b, layout.in_len, layout.out_len, (1, layout.vocab), (1, layout.vocab))


@pytest.mark.parametrize("transition", ["uniform", "absorbing"])
def test_d3pm_marginals_equal_products_of_single_steps(transition):
    m = make(D3PM, D3PM_CFG, transition=transition)
    K, T = m.K, m.cfg.T
    prod = torch.eye(K)
    for t in range(1, T + 1):
        Q = m.transition_matrix(t)
        assert torch.allclose(Q.sum(1), torch.ones(K), atol=1e-6)  # rows are distributions
        prod = prod @ Q
        closed = m.q_probs(torch.arange(m.V).view(-1, 1), torch.full((m.V,), t / T))[:, 0]  # [V, K]
        assert torch.allclose(prod[:m.V], closed, atol=1e-5), t


@pytest.mark.parametrize("transition", ["uniform", "absorbing"])
def test_reverse_step_with_true_x0_is_bayes_posterior(transition):
    m = make(D3PM, D3PM_CFG, transition=transition)
    K, T = m.K, m.cfg.T
    cum = [torch.eye(K)]
    for t in range(1, T + 1):
        cum.append(cum[-1] @ m.transition_matrix(t))
    s, t = 3, 7
    between = torch.eye(K)
    for k in range(s + 1, t + 1):
        between = between @ m.transition_matrix(k)
    for x0 in range(m.V):
        for xt in range(K):
            if cum[t][x0, xt] < 1e-9:
                continue
            bayes = between[:, xt] * cum[s][x0]  # q(x_t | x_s) q(x_s | x_0), over x_s
            bayes = bayes / bayes.sum()
            got = m.reverse_probs(torch.tensor([[xt]]), torch.nn.functional.one_hot(torch.tensor([[x0]]), m.V).float(),
                                  torch.tensor([t / T]), torch.tensor([s / T]))[0, 0]
            assert torch.allclose(got, bayes, atol=1e-5), (x0, xt)


def test_absorbing_masks_grow_monotonically():
    m = make(D3PM, D3PM_CFG, transition="absorbing")
    x0 = torch.randint(0, m.V, (3, 50))
    noise = torch.rand(x0.shape)
    prev = torch.zeros_like(x0, dtype=torch.bool)
    for t in torch.linspace(0, 1, 11):
        masked = m.q_sample(x0, t.expand(3), noise) == m.mask_id
        assert (masked | ~prev).all()  # once masked, masked at every later time
        prev = masked
    assert prev.all() and not (m.q_sample(x0, torch.zeros(3), noise) == m.mask_id).any()


def test_ar_kv_cache_gives_the_same_tokens():
    m = make(AR, AR_CFG).eval()
    x, pid = batch(3)["inputs"], torch.zeros(3, dtype=torch.long)
    torch.manual_seed(7)
    a = m.sample(x, pid, 4)
    m.cfg = dataclasses.replace(m.cfg, kv_cache=False)
    torch.manual_seed(7)
    b = m.sample(x, pid, 4)
    assert torch.equal(a.preds, b.preds)
    assert torch.allclose(a.scores["loglik"], b.scores["loglik"], atol=1e-4)
    assert a.preds.shape == (3, 4, 5) and len({tuple(r.tolist()) for r in a.preds[0]}) > 1


def test_ar_greedy_is_deterministic_and_its_loglik_is_the_models():
    m = make(AR, AR_CFG, temperature=0.0).eval()
    x, pid = batch(2)["inputs"], torch.zeros(2, dtype=torch.long)
    out = m.sample(x, pid, 3)
    assert torch.equal(out.preds, out.preds[:, :1].expand_as(out.preds))
    # the reported log-likelihood is the teacher-forced one of the produced answer
    b = {"inputs": x, "targets": out.preds[:, 0], "puzzle_ids": pid}
    tokens = torch.cat([m._prompt(x), b["targets"][:, :-1]], 1)
    logits = m.head(m.net(m.embed(tokens, pid))[:, m.in_len:m.in_len + m.out_len]).float()
    ll = torch.log_softmax(logits, -1).gather(-1, b["targets"][..., None]).squeeze(-1).sum(-1)
    assert torch.allclose(ll, out.scores["loglik"][:, 0], atol=1e-4)


@pytest.mark.parametrize("cls, cfg", [(AR, AR_CFG), (D3PM, D3PM_CFG), (D3PM, dataclasses.replace(
    D3PM_CFG, transition="absorbing")), (MDLM, MDLM_CFG)])
def test_losses_train_and_samples_are_valid_tokens(cls, cfg):
    m = make(cls, cfg).train()
    b = batch()
    loss, logs, carry = m.loss(b, m.initial_carry(b, CPU))
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None) > 0
    m.eval()
    torch.manual_seed(0)
    out = m.sample(b["inputs"], b["puzzle_ids"], 3)
    assert out.preds.shape == (4, 3, 5)
    assert ((out.preds >= 0) & (out.preds < LAYOUT.vocab)).all()  # never the MASK / BOS id
    assert out.scores["loglik"].shape == (4, 3) and torch.isfinite(out.scores["loglik"]).all()


def test_unconditional_layout():
    layout = Layout(0, 6, 4)
    for cls, cfg in ((AR, AR_CFG), (D3PM, D3PM_CFG), (MDLM, MDLM_CFG)):
        m = make(cls, cfg, layout=layout)
        b = batch(2, layout)
        loss, _, _ = m.loss(b, {})
        assert torch.isfinite(loss)
        assert m.eval().sample(b["inputs"], b["puzzle_ids"], 2).preds.shape == (2, 2, 6)


def test_mdlm_keeps_unmasked_tokens_and_unmasks_everything():
    m = make(MDLM, MDLM_CFG)
    x_t = torch.tensor([[2, m.mask_id, 1]])
    p0 = torch.full((1, 3, m.V), 1.0 / m.V)
    probs = m.reverse_probs(x_t, p0, torch.tensor([0.5]), torch.tensor([0.25]))
    assert probs[0, 0, 2] == 1 and probs[0, 2, 1] == 1  # carried over
    assert torch.isclose(probs[0, 1, m.mask_id], torch.tensor(0.5))  # stays masked with prob s/t
    assert m.default_steps == 8


def test_loglik_selection():
    assert select([b"a", b"b", b"c"], {"loglik": torch.tensor([-3.0, -1.0, -2.0]).numpy()})["loglik"] == 1


@pytest.mark.parametrize("model, low, high", [("ar", 9.5e6, 11e6), ("d3pm", 14.5e6, 16.5e6), ("mdlm", 9.5e6, 13e6)])
def test_paper_profile_sizes(model, low, high):
    cfg = resolve("nqueens", model, "paper")
    with torch.device("meta"):
        n = MODELS.get(model)(cfg.model, TASKS.get("nqueens")(cfg.task, "unused").layout).num_params()
    assert low < n < high


def test_calls_per_answer():
    assert make(AR, AR_CFG).calls_per_answer(99) == LAYOUT.out_len
    assert make(D3PM, D3PM_CFG).calls_per_answer(10) == 10 and make(D3PM, D3PM_CFG).calls_per_answer(4) == 4
    assert make(MDLM, MDLM_CFG).calls_per_answer(8) == 8
    for name, per_step in (("gram", 2 * (2 + 1)), ("trm", 2 * (2 + 1)), ("hrm", 2 * (2 + 1)), ("looped-tf", 8),
                           ("direct", 1)):
        cfg = resolve("nqueens", name, "cpu")
        with torch.device("meta"):
            m = MODELS.get(name)(cfg.model, TASKS.get("nqueens")(cfg.task, "unused").layout)
        assert m.calls_per_answer(m.default_steps) == m.default_steps * per_step, name
