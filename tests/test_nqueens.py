"""N-Queens data: known counts, a deterministic build, disjoint splits, complete answer sets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gram_bench.tasks import Layout
from gram_bench.tasks.nqueens import EMPTY, QUEEN, NQueens, removal_counts, solve_all


@pytest.mark.parametrize("n, count", [(4, 2), (5, 10), (6, 4), (7, 40), (8, 92), (10, 724)])
def test_solve_all_counts(n, count):
    sols = solve_all(n)
    assert len(sols) == count
    assert len(set(sols)) == count
    assert sols == sorted(sols)


def test_solve_all_placements_are_non_attacking():
    for cols in solve_all(8):
        assert sorted(cols) == list(range(8))
        assert len({r + c for r, c in enumerate(cols)}) == 8
        assert len({r - c for r, c in enumerate(cols)}) == 8


def test_removal_counts_keep_one_to_three_queens():
    assert removal_counts(8) == (5, 6, 7)
    assert removal_counts(10) == (7, 8, 9)


def test_manifest_counts_n8(nq8):
    m = nq8.verify_files()
    assert m["task"] == "nqueens"
    assert m["config"] == {"n": 8, "split_seed": 0, "train_fraction": 0.85}
    c = m["counts"]
    assert (c["solutions"], c["pairs"], c["unique_inputs"], c["train_inputs"], c["test_inputs"]) == \
        (92, 8464, 5148, 4375, 773)
    assert c["train_inputs"] == int(0.85 * c["unique_inputs"])
    # pairs = solutions x (C(8,5) + C(8,6) + C(8,7)) before deduplication
    assert c["pairs"] == 92 * (56 + 28 + 8)


def test_manifest_counts_n10(tmp_path):
    m = NQueens(NQueens.Config(n=10), tmp_path).build()
    c = m["counts"]
    assert (c["solutions"], c["pairs"], c["unique_inputs"], c["train_inputs"], c["test_inputs"]) == \
        (724, 126700, 43420, 36907, 6513)
    assert json.loads((tmp_path / "nqueens-10" / "manifest.json").read_text())["counts"] == c


def test_build_is_byte_identical(tmp_path, nq8):
    a = NQueens(NQueens.Config(n=8), tmp_path / "a")
    b = NQueens(NQueens.Config(n=8), tmp_path / "b")
    ma, mb = a.build(force=True), b.build(force=True)
    assert ma["files"] == mb["files"] == nq8.verify_files()["files"]
    assert (a.data_dir / "manifest.json").read_bytes() == (b.data_dir / "manifest.json").read_bytes()
    for name in ma["files"]:
        assert (a.data_dir / name).read_bytes() == (b.data_dir / name).read_bytes()
    # Rebuilding in place gives the same bytes again and leaves no temp dirs behind.
    assert a.build(force=True)["files"] == ma["files"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["nqueens-8"]


def test_build_without_force_keeps_existing(tmp_path):
    t = NQueens(NQueens.Config(n=8), tmp_path)
    m1 = t.build()
    mtime = (t.data_dir / "manifest.json").stat().st_mtime_ns
    assert t.build() == m1
    assert (t.data_dir / "manifest.json").stat().st_mtime_ns == mtime


def test_split_seed_changes_split_not_counts(tmp_path, nq8):
    other = NQueens(NQueens.Config(n=8, split_seed=1), tmp_path)
    m = other.build()
    ref = nq8.verify_files()["counts"]
    keys = ("solutions", "pairs", "unique_inputs", "train_inputs", "test_inputs")
    assert [m["counts"][k] for k in keys] == [ref[k] for k in keys]
    assert m["counts"]["train_pairs"] + m["counts"]["test_pairs"] == ref["train_pairs"] + ref["test_pairs"]
    assert not np.array_equal(other.arrays()["test_ids"], nq8.arrays()["test_ids"])


def test_train_and_test_inputs_are_disjoint(nq8):
    a = nq8.arrays()
    train = {row.tobytes() for row in a["train_inputs"]}
    test = {row.tobytes() for row in a["test_inputs"]}
    assert len(train) == 4375 and len(test) == 773  # no duplicates inside a split
    assert not train & test
    assert not set(a["train_ids"].tolist()) & set(a["test_ids"].tolist())
    assert sorted(a["train_ids"].tolist() + a["test_ids"].tolist()) == list(range(5148))


def test_inputs_keep_one_to_three_queens(nq8):
    for split in ("train", "test"):
        x = nq8.arrays()[f"{split}_inputs"]
        assert set(np.unique(x).tolist()) == {EMPTY, QUEEN}
        queens = (x == QUEEN).sum(1)
        assert set(queens.tolist()) == {1, 2, 3}


@pytest.mark.parametrize("split", ["train", "test"])
def test_completions_are_exactly_the_consistent_solutions(nq8, split):
    """Every input stores all of the 92 solutions that keep its queens, and no others."""
    x = nq8.arrays()[f"{split}_inputs"]
    sols = nq8.arrays()["solutions"]
    given = (x == QUEEN).astype(np.int64)  # [U, 64]
    sq = (sols == QUEEN).astype(np.int64)  # [92, 64]
    consistent = (given @ sq.T) == given.sum(1, keepdims=True)  # [U, 92]
    comps = nq8.completions(split)
    assert len(comps) == len(x)
    for i in range(0, len(x), 7):  # a stride keeps the Python loop short
        expected = {sols[j].tobytes() for j in np.flatnonzero(consistent[i])}
        assert {c.tobytes() for c in comps[i]} == expected
    counts = np.array([len(c) for c in comps])
    np.testing.assert_array_equal(counts, consistent.sum(1))
    if split == "test":
        np.testing.assert_array_equal(nq8.eval_set("test").n_solutions, counts)


def test_train_set_is_every_input_completion_pair(nq8):
    ts = nq8.train_set()
    c = nq8.verify_files()["counts"]
    assert len(ts) == c["train_pairs"]
    assert ts.inputs.shape == ts.targets.shape == (c["train_pairs"], 64)
    assert ts.inputs.dtype == ts.targets.dtype == ts.puzzle_ids.dtype
    assert int(ts.puzzle_ids.abs().sum()) == 0
    # the target keeps the input's queens
    assert bool(((ts.inputs != QUEEN) | (ts.targets == QUEEN)).all())


def test_eval_set_and_layout(nq8):
    es = nq8.eval_set("test")
    assert len(es) == 773
    assert es.inputs.shape == es.targets.shape == (773, 64)
    assert nq8.layout == Layout(in_len=64, out_len=64, vocab=3, n_puzzle_ids=1)
    sub = es.subset(np.array([0, 5, 9]))
    assert sub.ids.tolist() == es.ids[[0, 5, 9]].tolist()
    assert bool((sub.targets == es.targets[[0, 5, 9]]).all())
    keys = nq8.reference_keys("test")
    assert [len(k) for k in keys] == es.n_solutions.tolist()
    assert all(nq8.canonical(es.targets[i:i + 1].numpy())[0] in keys[i] for i in range(len(es)))
