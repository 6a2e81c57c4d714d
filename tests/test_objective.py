"""GRAM's objective as the paper writes it (Eq. 14), and halting/value targets from the prior.

Eq. 14 per supervision step: -log p(y | z_T, x) summed over the answer tokens, plus beta
times the balanced KL summed over latent dimensions, both per example, averaged over the
batch. The halting and LPRM targets come from the prior path (what inference decodes)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from gram_bench.harness.config import resolve
from gram_bench.models.gram import GRAM
from gram_bench.models.guidance import gaussian_kl
from gram_bench.models.trm import TRM

from test_models import CPU, GRAM_CFG, LAYOUT, TRM_CFG, batch, make


def _capture(module, store: list):
    return module.register_forward_hook(lambda mod, inp, out: store.append(out))


@pytest.mark.parametrize("kl_balance", [0.8, 0.3])
def test_gram_loss_is_the_summed_log_likelihood_plus_beta_times_the_summed_kl(kl_balance):
    m = make(GRAM, GRAM_CFG, T=1, beta=0.07, halt_loss_weight=0.0, value_loss_weight=0.0,
             kl_balance=kl_balance).train()
    torch.nn.init.normal_(m.guide.posterior.out.weight, std=0.3)  # q away from p: a KL of many nats
    b = batch(4)
    priors, posts, logits = [], [], []
    hooks = [_capture(m.guide.prior, priors), _capture(m.guide.posterior, posts), _capture(m.lm_head, logits)]
    loss, logs, _ = m.loss(b, m.initial_carry(b, CPU))
    for h in hooks:
        h.remove()
    (mu_p, sd_p), (mu_q, sd_q) = priors[0], posts[0]
    y = b["targets"]
    # the first decode is the posterior's (the second is the prior's, for the targets)
    log_lik = torch.log_softmax(logits[0].float(), -1).gather(-1, y[..., None]).squeeze(-1).sum(-1)  # [B]
    kl = gaussian_kl(mu_q, sd_q, mu_p, sd_p).sum((1, 2))  # [B]: both balanced halves equal KL(q || p)
    expected = (-log_lik + 0.07 * kl).mean()
    assert float(kl.mean().detach()) > 1.0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logs["ce"], (-log_lik).mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logs["ce_token"], (-log_lik).mean() / y.shape[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logs["kl"], kl.mean(), rtol=1e-5, atol=1e-5)  # nats per example


def test_the_balance_sends_its_shares_to_prior_and_posterior():
    m = make(GRAM, GRAM_CFG, T=1, halt_loss_weight=0.0, value_loss_weight=0.0, kl_balance=0.8).train()
    torch.nn.init.normal_(m.guide.posterior.out.weight, std=0.3)
    b = batch(4)
    u = torch.randn(4, m.seq_len, 32, requires_grad=True)
    y_feat = m.guide.y_features(b["targets"], u)
    _, kl, _ = m.guide(u, y_feat)
    kl.sum().backward()
    g_prior = m.guide.prior.out.weight.grad.clone()
    m.zero_grad()
    m2 = make(GRAM, GRAM_CFG, T=1, halt_loss_weight=0.0, value_loss_weight=0.0, kl_balance=1.0).train()
    m2.load_state_dict(m.state_dict())
    _, kl2, _ = m2.guide(u.detach(), y_feat.detach())
    kl2.sum().backward()
    torch.testing.assert_close(g_prior, 0.8 * m2.guide.prior.out.weight.grad, rtol=1e-4, atol=1e-7)
    assert m2.guide.posterior.out.weight.grad is None or float(m2.guide.posterior.out.weight.grad.abs().sum()) == 0


def test_gram_defaults_to_eq_14_and_each_task_takes_its_paper_beta():
    assert GRAM.Config().ce_reduce == "sum" and GRAM.Config().kl_reduce == "sum"
    assert TRM.Config().ce_reduce == "mean"  # TRM's own loss
    for task, beta in (("nqueens", 0.07), ("graph-coloring", 0.5), ("mnist", 0.07), ("sudoku-uncond", 0.05)):
        cfg = resolve(task, "gram", "cpu")
        assert (cfg.model.ce_reduce, cfg.model.kl_reduce, cfg.model.beta) == ("sum", "sum", beta), task


class _TwoPaths(GRAM):
    """A GRAM whose posterior state decodes to the target exactly and whose prior state
    decodes to a wrong answer everywhere: the targets tell which path they came from."""

    def segment(self, state, e_x, y):
        h, l = state
        post = torch.zeros_like(h) + self.lm_head.weight.sum() * 0  # keeps a graph to the decoder
        prior = torch.ones_like(h)
        self._y = y
        return (post, l), {"kl": torch.zeros(h.shape[0]), "kl_nats": torch.zeros(h.shape[0]),
                           "prior_state": (prior, l)}

    def decode(self, hid):
        right = F.one_hot(self._y, self.layout.vocab).float() * 20
        wrong = F.one_hot((self._y + 1) % self.layout.vocab, self.layout.vocab).float() * 20
        is_prior = hid[:, :1, :1] > 0.5
        return torch.where(is_prior, wrong, right)

    def judge(self, hid):
        self.judged = hid
        return super().judge(hid)


@pytest.mark.parametrize("targets, want", [("prior", 0.0), ("posterior", 1.0)])
def test_halting_and_value_targets_come_from_the_prior_path(targets, want):
    torch.manual_seed(0)
    m = _TwoPaths(dataclasses.replace(GRAM_CFG, targets=targets), LAYOUT).train()
    b = batch(4)
    _, logs, _ = m.loss(b, m.initial_carry(b, CPU))
    assert float(logs["exact"]) == 1.0 and float(logs["prior_exact"]) == 0.0
    q_halt = torch.full((4,), -5.0)  # the Q head's initial output (weight 0, bias -5)
    torch.testing.assert_close(logs["halt"], F.binary_cross_entropy_with_logits(q_halt, torch.full((4,), want)))
    torch.testing.assert_close(logs["value"], torch.tensor(want ** 2))  # the value head starts at 0
    assert bool((m.judged > 0.5).all()) == (targets == "prior")  # the heads read the prior state


def test_training_logs_posterior_prior_and_kl_for_gram_and_one_path_for_trm():
    b = batch(4)
    m = make(GRAM, GRAM_CFG).train()
    _, logs, _ = m.loss(b, m.initial_carry(b, CPU))
    assert {"exact", "prior_exact", "kl", "ce", "ce_token", "value", "halt"} <= set(logs)
    t = make(TRM, TRM_CFG).train()
    _, logs, _ = t.loss(b, t.initial_carry(b, CPU))
    assert "prior_exact" not in logs and "value" not in logs and t.v_head is None  # one path, no value head


def test_prior_ce_trains_the_prior_through_its_own_decode():
    """At init q == p (zero output layers), so the KL gives the prior no gradient; the
    prior-path CE (a named deviation from Eq. 14) does."""
    b = batch(4)
    grads = {}
    for w in (0.0, 1.0):
        m = make(GRAM, GRAM_CFG, T=1, prior_ce=w).train()
        loss, _, _ = m.loss(b, m.initial_carry(b, CPU))
        loss.backward()
        grads[w] = float(m.guide.prior.out.weight.grad.abs().sum())
    assert grads[0.0] == 0.0 and grads[1.0] > 0.0
