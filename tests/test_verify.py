"""The N-Queens verifier accepts every stored answer and rejects corrupted ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gram_bench.tasks.nqueens import EMPTY, QUEEN, NQueens


def board(n: int, queens: list[tuple[int, int]]) -> torch.Tensor:
    b = torch.full((n * n,), EMPTY, dtype=torch.long)
    for r, c in queens:
        b[r * n + c] = QUEEN
    return b


def one(task, inp: torch.Tensor, pred: torch.Tensor) -> dict:
    """Verify a single (input, prediction) pair; returns python scalars."""
    return {k: v.item() for k, v in task.verify(inp[None], pred[None, None]).items()}


@pytest.fixture(scope="module")
def task8(tmp_path_factory):
    return NQueens(NQueens.Config(n=8), tmp_path_factory.mktemp("nodata"))  # verify needs no data


@pytest.mark.parametrize("split", ["test", "train"])
def test_accepts_every_stored_completion(nq8, split):
    inputs = torch.from_numpy(nq8.arrays()[f"{split}_inputs"].astype(np.int64))
    comps = nq8.completions(split)
    counts = torch.tensor([len(c) for c in comps])
    x = inputs.repeat_interleave(counts, 0)  # [P, L]
    y = torch.from_numpy(np.concatenate(comps).astype(np.int64))[:, None]  # [P, 1, L]
    out = nq8.verify(x, y)
    assert set(out) >= {"valid", "keeps_clues", "queens", "conflicts"}
    assert out["valid"].shape == (len(x), 1)
    assert bool(out["valid"].all())
    assert bool(out["keeps_clues"].all())
    assert bool((out["queens"] == 8).all())
    assert int(out["conflicts"].sum()) == 0


def test_accepts_eval_targets_in_the_sample_dimension(nq8):
    es = nq8.eval_set("test")
    preds = es.targets[:, None].expand(-1, 5, -1)  # [B, N=5, L]
    out = nq8.verify(es.inputs, preds)
    assert out["valid"].shape == (773, 5)
    assert bool(out["valid"].all())


def test_rejects_corrupted_boards(nq8):
    es = nq8.eval_set("test")
    x, y = es.inputs[0], es.targets[0].clone()
    assert one(nq8, x, y)["valid"]
    queens = torch.nonzero(y == QUEEN).flatten().tolist()
    free = torch.nonzero((y == EMPTY) & (x == EMPTY)).flatten().tolist()
    given = torch.nonzero(x == QUEEN).flatten().tolist()
    not_given = [q for q in queens if q not in given]

    moved = y.clone()
    moved[not_given[0]], moved[free[0]] = EMPTY, QUEEN
    r = one(nq8, x, moved)
    assert not r["valid"] and r["queens"] == 8 and r["conflicts"] > 0  # 8 queens in 7 rows

    removed = y.clone()
    removed[not_given[0]] = EMPTY
    r = one(nq8, x, removed)
    assert not r["valid"] and r["queens"] == 7 and r["conflicts"] == 0

    added = y.clone()
    added[free[0]] = QUEEN
    r = one(nq8, x, added)
    assert not r["valid"] and r["queens"] == 9 and r["conflicts"] > 0

    padded = y.clone()
    padded[free[0]] = 0  # pad token in place of an empty cell: well-formedness, nothing else
    r = one(nq8, x, padded)
    assert not r["valid"] and r["queens"] == 8 and r["conflicts"] == 0 and r["keeps_clues"]

    out_of_vocab = y.clone()
    out_of_vocab[free[0]] = 3
    assert not one(nq8, x, out_of_vocab)["valid"]


def test_rejects_a_solution_that_drops_a_given_queen(nq8):
    """A perfect 8-queens board is still wrong if it does not keep the puzzle's queens."""
    es = nq8.eval_set("test")
    sols = torch.from_numpy(nq8.arrays()["solutions"].astype(np.int64))
    i = 0
    x = es.inputs[i]
    keeps = ((x != QUEEN) | (sols == QUEEN)).all(-1)
    other = sols[~keeps][0]
    r = one(nq8, x, other)
    assert not r["valid"] and not r["keeps_clues"]
    assert r["queens"] == 8 and r["conflicts"] == 0
    assert int(keeps.sum()) == es.n_solutions[i]


@pytest.mark.parametrize("queens, conflicts", [
    ([(0, 0), (0, 7)], 1),  # one row
    ([(0, 3), (5, 3)], 1),  # one column
    ([(0, 0), (7, 7)], 1),  # one diagonal
    ([(0, 7), (7, 0)], 1),  # one anti-diagonal
    ([(0, 0), (1, 2)], 0),  # a knight's move apart
    ([(0, 0), (0, 3), (3, 3), (3, 0)], 6),  # square: 2 rows + 2 cols + 1 diagonal + 1 anti-diagonal
    ([(i, i) for i in range(8)], 28),  # the main diagonal: C(8, 2) pairs on one line
])
def test_conflicts_count_attacking_pairs(task8, queens, conflicts):
    b = board(8, queens)
    r = one(task8, torch.full((64,), EMPTY), b)
    assert r["conflicts"] == conflicts
    assert r["queens"] == len(queens)
    assert not r["valid"]


def test_verify_batches_rows_independently(task8):
    sol = board(8, list(enumerate((0, 4, 7, 5, 2, 6, 1, 3))))
    bad = board(8, [(i, i) for i in range(8)])
    empty = torch.full((64,), EMPTY)
    out = task8.verify(torch.stack([empty, empty]), torch.stack([torch.stack([sol, bad]),
                                                                 torch.stack([bad, sol])]))
    assert out["valid"].tolist() == [[True, False], [False, True]]
    assert out["conflicts"].tolist() == [[0, 28], [28, 0]]
    assert out["queens"].tolist() == [[8, 8], [8, 8]]
