"""Golden fixtures pinning our TRM and HRM recursions to the authors' code.

Provenance: the numbers in tests/fixtures/*_golden.pt come from running the official code
once, fp32 on CPU, on a tiny seeded config, and are never regenerated here:
- trm_golden.pt (attention core, 2 layers, T=2, n=3, 2 puzzle tokens, 3 puzzle ids) and
  trm_mlp_golden.pt (TRM-MLP core, `mlp_t=True`, 1 layer, T=2, n=2, 1 puzzle token):
  https://github.com/SamsungSAILMontreal/TinyRecursiveModels, commit
  e7b68717f0a6c4cbb4ce6fbef787b14f42083bd9 (models/recursive_reasoning/trm.py,
  models/layers.py, models/sparse_embedding.py, models/losses.py);
- hrm_golden.pt (1 H layer, 1 L layer, H_cycles=2, L_cycles=2, 1 puzzle token):
  https://github.com/sapientinc/HRM, commit 42410daaaf6ac8b266536d105a6e2362ffe40929
  (models/hrm/hrm_act_v1.py, models/layers.py, models/sparse_embedding.py).
All: hidden 32, 2 heads, expansion 4 (SwiGLU width 256), 16 tokens, vocab 3, batch 2,
halt_max_steps 2. Each fixture records its repository, commit, both configs and the seed.
The official weights (Q head and puzzle embedding given seeded non-zero values instead of
their zero init) are stored under our parameter names, initial-state buffers included.

Recorded per supervision step (the ACT wrapper in eval mode, two steps): z_H / z_L (our TRM's
y / z, our HRM's zH / zL), the answer logits, q_halt and q_continue. Also recorded: the
gradients of one training-mode step from the initial state for a fixed objective (which pins
the no-grad / grad split of the recursion), and for TRM-attention the official ACTLossHead
loss with softmax CE (upstream sums over the batch; pretrain.py scales by 1/batch).

Known differences accounted for: TRM's Q head has two outputs, so our TRM is built with
`halting="q_learning"` (two outputs) and, separately, with `halting="bce"` loading only the
q_halt row; one puzzle id uses our dense embedding (the fixture's row zero-padded to
prefix * hidden), several ids our sparse table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from gram_bench.models.hrm import HRM
from gram_bench.models.trm import TRM
from gram_bench.tasks import Layout

FIXTURES = Path(__file__).parent / "fixtures"
TOL = dict(atol=1e-5, rtol=1e-5)
CPU = torch.device("cpu")
NAMES = ("trm", "trm_mlp", "hrm")
COMMITS = {"https://github.com/SamsungSAILMontreal/TinyRecursiveModels": "e7b68717f0a6c4cbb4ce6fbef787b14f42083bd9",
           "https://github.com/sapientinc/HRM": "42410daaaf6ac8b266536d105a6e2362ffe40929"}


def load(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}_golden.pt", weights_only=True)


def build(fx: dict, **changes):
    """Our model with the fixture's config and the official weights (strict load)."""
    cfg = dict(fx["our_config"])
    cls = {"trm": TRM, "hrm": HRM}[cfg.pop("model")]
    cfg = dataclasses.replace(cls.Config(**cfg), **changes)
    cfg.check()
    m = cls(cfg, Layout(**fx["layout"]))
    state = dict(fx["state_dict"])
    if cfg.halting == "bce":  # our one-output head: q_halt only, the official head's first row
        state["q_head.weight"], state["q_head.bias"] = state["q_head.weight"][:1], state["q_head.bias"][:1]
    m.load_state_dict(state, strict=True)
    return m


def close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = float((got.detach() - want).abs().max())
    assert torch.allclose(got, want, **TOL), f"{name}: max abs error {err:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_fixture_provenance(name):
    fx = load(name)
    src = fx["source"]
    assert COMMITS[src["repository"]] == src["commit"]
    assert ("HRM" in src["repository"]) == (name == "hrm")
    assert fx["official_config"]["forward_dtype"] == "float32"
    assert fx["official_config"].get("mlp_t", False) == (name == "trm_mlp")
    assert (fx["our_config"]["mixer"] == "mlp") == (name == "trm_mlp")


@torch.no_grad()
def rollout(m, fx):
    """(step index, our state after that supervision step, the fixture's record of it)."""
    x = fx["inputs"]
    e_x = m.embed_inputs(x["inputs"], x["puzzle_ids"])
    state = m.init_state(x["inputs"].shape[0], CPU)
    for i, want in enumerate(fx["steps"]):
        state, _ = m.segment(state, e_x, None)
        yield i, state, want


@pytest.mark.parametrize("name", NAMES)
def test_recursion_matches_official(name):
    """Two supervision steps from the initial state: states, logits, both Q logits."""
    fx = load(name)
    m = build(fx).eval()
    for i, state, want in rollout(m, fx):
        hid = m.readout(state)
        q, value = m.judge(hid)
        assert value is None
        close(f"step {i} z_H", state[0], want["z_H"])
        close(f"step {i} z_L", state[1], want["z_L"])
        close(f"step {i} logits", m.decode(hid), want["logits"])
        close(f"step {i} q_halt", q[:, 0], want["q_halt"])
        close(f"step {i} q_continue", q[:, 1], want["q_continue"])


@pytest.mark.parametrize("name", NAMES)
def test_sample_matches_official(name):
    """`sample` at the fixture's number of steps: argmax of the official logits and sigmoid of
    its q_halt."""
    fx = load(name)
    m = build(fx).eval()
    x, last = fx["inputs"], fx["steps"][-1]
    out = m.sample(x["inputs"], x["puzzle_ids"], n_samples=1, steps=len(fx["steps"]))
    assert torch.equal(out.preds[:, 0], last["logits"].argmax(-1))
    close("halt score", out.scores["halt"][:, 0], torch.sigmoid(last["q_halt"]))


@pytest.mark.parametrize("name", ("trm", "trm_mlp"))
def test_trm_bce_head_is_the_official_q_halt(name):
    """Our default TRM head (halting=bce) is the official head's q_halt output."""
    fx = load(name)
    m = build(fx, halting="bce").eval()
    assert m.q_head.out_features == 1
    for i, state, want in rollout(m, fx):
        q, _ = m.judge(m.readout(state))
        close(f"step {i} q_halt", q[:, 0], want["q_halt"])


def test_trm_loss_matches_official_act_loss_head():
    """Our `loss` (eval mode, halting=bce, softmax CE averaged over tokens, halt weight 0.5) over
    two supervision steps equals upstream ACTLossHead(softmax_cross_entropy) / batch size."""
    fx = load("trm")
    m = build(fx, halting="bce").eval()
    x = fx["inputs"]
    batch = {"inputs": x["inputs"], "targets": x["labels"], "puzzle_ids": x["puzzle_ids"]}
    carry = m.initial_carry(batch, CPU)
    assert len(fx["loss"]) == len(fx["steps"]) == m.cfg.n_sup
    with torch.no_grad():
        for i, want in enumerate(fx["loss"]):
            loss, _, carry = m.loss(batch, carry)
            close(f"step {i} loss", loss, torch.tensor(want))
    assert bool(carry["halted"].all())


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_official(name):
    """One training-mode step from the initial state, objective mean(logits^2) + sum(q_halt) +
    0.5 sum(q_continue): the same gradient norm for every parameter, the same gradient for the
    small ones and for the batch's puzzle-embedding rows (so the same calls carry gradient)."""
    fx = load(name)
    m = build(fx).train()
    x = fx["inputs"]
    e_x = m.embed_inputs(x["inputs"], x["puzzle_ids"])
    state, _ = m.segment(m.init_state(x["inputs"].shape[0], CPU), e_x, None)
    hid = m.readout(state)
    q, _ = m.judge(hid)
    objective = m.decode(hid).square().mean() + q[:, 0].sum() + 0.5 * q[:, 1].sum()
    close("objective", objective.detach(), torch.tensor(fx["objective_value"]))
    objective.backward()
    params = dict(m.named_parameters())
    # the official puzzle table is a buffer (its rows get the gradient); ours is one with
    # several ids, a dense parameter with one
    assert set(params) - {"embed.puzzle.weight"} == set(fx["grad_norms"])
    for n, want in fx["grad_norms"].items():
        close(f"|grad {n}|", params[n].grad.double().norm(), torch.tensor(want, dtype=torch.float64))
    grads = dict(fx["grads"])
    rows = grads.pop("puzzle_rows")  # [B, puzzle_emb_ndim], the official per-example rows
    for n, want in grads.items():
        close(f"grad {n}", params[n].grad, want)
    if m.embed.sparse:
        close("grad puzzle rows", m.embed._saved[1].grad, rows)
    else:  # one id: the dense row's gradient is the sum over the batch (zero padding past ndim)
        g = m.embed.puzzle.weight.grad[0]
        close("grad puzzle row", g[:rows.shape[1]], rows.sum(0))
        assert not bool(g[rows.shape[1]:].any())
