"""The sparse puzzle embedding for tasks with many puzzle ids (TRM's CastedSparseEmbedding with
sign-SGD): which rows change, by how much, and that it stays out of the optimizer and the EMA."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch
from rich.console import Console

from gram_bench.harness import training
from gram_bench.harness.config import resolve
from gram_bench.harness.precision import Precision
from gram_bench.models.gram import GRAM
from gram_bench.models.layers import InputEmbedding
from gram_bench.models.trm import TRM
from gram_bench.tasks import Layout
from gram_bench.tasks.base import TrainSet
from conftest import make_model, random_batch

N_IDS = 50
GRAM_CFG = GRAM.Config(hidden=32, heads=2, ffn_hidden=64, l_layers=1, h_layers=1, K=1, T=2, n_sup=2, prefix=2)
TRM_CFG = TRM.Config(hidden=32, heads=2, ffn_hidden=64, layers=1, n=1, T=2, n_sup=2, prefix=2)
MODELS = [(GRAM, GRAM_CFG), (TRM, TRM_CFG)]
CPU = torch.device("cpu")


def make(cls, cfg, n_ids: int = N_IDS, seed: int = 0, **changes):
    return make_model(cls, cfg, Layout(16, 16, 3, n_puzzle_ids=n_ids), seed, **changes)


def batch(ids: list[int], seed: int = 0) -> dict:
    return random_batch(len(ids), 16, 16, seed=seed, puzzle_ids=ids)


def summed_grad(model, n_ids: int = N_IDS) -> torch.Tensor:
    """The saved rows' gradients summed per id, as a [n_ids, puzzle_dim] table."""
    ids, rows = model.embed._saved
    return torch.zeros(n_ids, rows.shape[1]).index_add_(0, ids, rows.grad)


@pytest.mark.parametrize("cls, cfg", MODELS)
def test_one_puzzle_id_keeps_the_dense_embedding(cls, cfg):
    dense = make(cls, cfg, n_ids=1)
    sparse = make(cls, cfg)
    names = dict(dense.named_parameters())
    assert names["embed.puzzle.weight"].shape == (1, cfg.prefix * cfg.hidden)
    assert set(names) == set(dict(sparse.named_parameters())) | {"embed.puzzle.weight"}
    assert dense.num_params() == sparse.num_params() + cfg.prefix * cfg.hidden
    assert "embed.puzzle_table" not in dense.state_dict() and not dense.embed.sparse
    assert set(dense.state_dict()) == set(sparse.state_dict()) - {"embed.puzzle_table"} | {"embed.puzzle.weight"}
    b = batch([0, 0, 0])
    dense.train().loss(b, dense.initial_carry(b, CPU))[0].backward()
    dense.sparse_step(1.0)  # a no-op: the dense embedding is the optimizer's
    assert float(dense.embed.puzzle.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("cls, cfg", MODELS)
def test_sparse_step_moves_exactly_the_batch_rows(cls, cfg):
    m = make(cls, cfg).train()
    table = m.embed.puzzle_table
    assert table.shape == (N_IDS, cfg.hidden) and table.dtype == torch.float32 and not table.any()
    assert "embed.puzzle_table" not in dict(m.named_parameters())
    assert all(p is not table for p in m.parameters())
    ids = [3, 7, 7, 12]
    b = batch(ids)
    m.loss(b, m.initial_carry(b, CPU))[0].backward()
    g = summed_grad(m)
    assert g[ids].abs().sum(-1).gt(0).all()  # the gradient reaches every row of the batch
    m.sparse_step(1.0)
    assert m.embed._saved is None
    assert torch.equal(table, -cfg.puzzle_lr * g.sign())
    others = [i for i in range(N_IDS) if i not in ids]
    assert not table[others].any() and table[ids].abs().sum(-1).gt(0).all()

    # decoupled weight decay on the batch rows only, lr scaled by the schedule
    with torch.no_grad():
        table.fill_(1.0)
    b = batch([5, 9], seed=1)
    m.loss(b, m.initial_carry(b, CPU))[0].backward()
    g = summed_grad(m)
    m.sparse_step(0.5)
    lr, wd = 0.5 * cfg.puzzle_lr, cfg.puzzle_wd
    assert torch.allclose(table[[5, 9]], (1 - lr * wd) - lr * g[[5, 9]].sign(), rtol=0, atol=1e-7)
    assert torch.equal(table[[i for i in range(N_IDS) if i not in (5, 9)]], torch.ones(N_IDS - 2, cfg.hidden))


def test_repeated_ids_aggregate_before_the_sign():
    emb = InputEmbedding(vocab=4, dim=4, prefix=2, n_puzzle_ids=10, puzzle_dim=6)
    out = emb(torch.zeros(3, 5, dtype=torch.long), torch.tensor([2, 2, 3]))
    assert out.shape == (3, 7, 4) and not out[:, 1, 2:].any()  # the table's 6 values, zero-padded to 8
    w = torch.zeros(3, 2, 4)
    w[0, 0, 0], w[1, 0, 0], w[2, 0, 0] = -3.0, 1.0, 2.0  # id 2: -3 + 1 < 0 (its last row alone: > 0)
    (out[:, :2] * w).sum().backward()
    emb.sparse_step(lr=0.1, weight_decay=0.5)
    expected = torch.zeros(10, 6)
    expected[2, 0], expected[3, 0] = 0.1, -0.1
    assert torch.equal(emb.puzzle_table, expected)


def test_puzzle_dim_is_checked():
    with pytest.raises(ValueError, match="puzzle_dim"):
        dataclasses.replace(TRM_CFG, puzzle_dim=2 * 32 + 1).check()
    with pytest.raises(ValueError, match="puzzle_dim"):
        make(TRM, TRM_CFG, puzzle_dim=2 * 32 + 1)
    dataclasses.replace(TRM_CFG, puzzle_dim=2 * 32).check()
    assert make(TRM, TRM_CFG, puzzle_dim=40).embed.puzzle_table.shape == (N_IDS, 40)


@pytest.mark.parametrize("cls, cfg", MODELS)
def test_inference_saves_nothing(cls, cfg):
    m = make(cls, cfg)
    with torch.no_grad():
        m.embed.puzzle_table.normal_()
    before = m.embed.puzzle_table.clone()
    b = batch([1, 2])
    m.eval()
    m.sample(b["inputs"], b["puzzle_ids"], n_samples=2)
    assert m.embed._saved is None
    m.sparse_step(1.0)
    assert torch.equal(m.embed.puzzle_table, before)
    m.train()
    with torch.no_grad():
        m.loss(b, m.initial_carry(b, CPU))
    assert m.embed._saved is None


@pytest.mark.parametrize("cls, cfg", MODELS)
def test_table_is_checkpointed_and_outside_the_ema(cls, cfg):
    m = make(cls, cfg)
    with torch.no_grad():
        m.embed.puzzle_table.normal_()
    ema = training.EMA(m, decay=0.9, exclude=m.ema_exclude)
    assert "embed.puzzle_table" not in ema.shadow and "lm_head.weight" in ema.shadow
    with torch.no_grad():
        m.embed.puzzle_table.add_(1.0)
    ema.update(m, step=0)
    live = m.embed.puzzle_table.clone()
    with ema.applied(m):
        assert torch.equal(m.embed.puzzle_table, live)
    assert torch.equal(m.embed.puzzle_table, live)

    fresh = make(cls, cfg, seed=1)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.embed.puzzle_table, live)


class RandomTask:
    """Just enough of a task for `training.train`: random examples over N_IDS puzzle ids."""

    def __init__(self, layout: Layout, n: int = 64):
        g = torch.Generator().manual_seed(0)
        self.layout = layout
        self.data = TrainSet(torch.randint(1, 3, (n, layout.in_len), generator=g),
                             torch.randint(1, 3, (n, layout.out_len), generator=g),
                             torch.randint(0, layout.n_puzzle_ids, (n,), generator=g))

    def train_set(self) -> TrainSet:
        return self.data


def same(a, b, path: str) -> None:
    """Exact equality of nested checkpoint contents."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_train_updates_the_table_and_resumes_exactly(tmp_path: Path):
    """training.train calls sparse_step(lr / base lr) after each step; stopping after the step-3
    checkpoint and resuming ends where an uninterrupted run ends, bit for bit."""
    cfg = resolve("nqueens", "trm", "smoke")
    tc = dataclasses.replace(cfg.train, steps=6, batch_size=16, lr=1e-3, warmup_steps=2, checkpoint_every=3,
                             log_every=2, eval_every=0, ema=0.9, max_minutes=0.0)
    cfg = dataclasses.replace(cfg, model=TRM_CFG, train=tc)
    layout = Layout(16, 16, 3, n_puzzle_ids=N_IDS)
    task = RandomTask(layout)

    def train(rdir: Path, stop_at: int = 0) -> dict:
        """Train a fresh model in `rdir`; with `stop_at`, interrupt at that sparse_step call."""
        torch.manual_seed(cfg.seed)
        m = TRM(cfg.model, layout)
        step = m.sparse_step

        def counted(scale: float) -> None:
            scales.append(scale)
            if len(scales) == stop_at:
                raise KeyboardInterrupt
            step(scale)

        scales: list[float] = []
        m.sparse_step = counted
        rdir.mkdir(exist_ok=True)
        training.train(cfg, task, m, rdir, CPU, Precision(False, False, "asked"), Console(file=io.StringIO()))
        assert scales == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0][-len(scales):]
        return torch.load(rdir / "checkpoint.pt", weights_only=True)

    ref = train(tmp_path / "ref")
    table = ref["model"]["embed.puzzle_table"]
    used = task.data.puzzle_ids.unique().tolist()  # a superset: the carry keeps unhalted rows
    assert table[used].abs().sum(-1).gt(0).sum() >= 16
    assert not table[[i for i in range(N_IDS) if i not in used]].any()
    assert "embed.puzzle_table" not in ref["ema"]

    rdir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(rdir, stop_at=5)
    assert torch.load(rdir / "checkpoint.pt", weights_only=True)["step"] == 3
    resumed = train(rdir)
    assert resumed["step"] == 6
    for part in ("model", "ema", "optimizer", "carry", "sampler"):
        same(resumed[part], ref[part], part)
