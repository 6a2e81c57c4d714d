"""Graph coloring: counts, every coloring enumerated, canonical forms, the verifier."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from gram_bench.harness.config import resolve
from gram_bench.core.errors import UsageError
from gram_bench.tasks import TASKS
from gram_bench.tasks.graph_coloring import COLOR0, GraphColoring, canonical_colorings, relabel
from gram_bench.tasks.nqueens import NQueens


@pytest.fixture(scope="module")
def gc8(tmp_path_factory) -> GraphColoring:
    """The paper-size 8-node dataset (about 3 s to build)."""
    task = GraphColoring(GraphColoring.Config(nodes=8), tmp_path_factory.mktemp("gc"))
    task.build()
    return task


def brute_force(n: int, adj: np.ndarray) -> set[tuple[int, ...]]:
    """Every proper 3-coloring of the graph, relabelled by first appearance, by trying all 3^n."""
    u, v = np.triu_indices(n, 1)
    edges = [(a, b) for a, b, e in zip(u, v, adj) if e]
    out = set()
    for col in itertools.product(range(3), repeat=n):
        if all(col[a] != col[b] for a, b in edges):
            out.add(tuple(relabel(np.array([col]) + COLOR0)[0] - COLOR0))
    return out


def stirling_up_to_3(n: int) -> int:
    """Colorings of n nodes with at most 3 colors up to relabelling: S(n,1) + S(n,2) + S(n,3)."""
    return 1 + (2 ** (n - 1) - 1) + (3 ** n - 3 * 2 ** n + 3) // 6


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8, 10])
def test_canonical_colorings_are_every_partition_once(n):
    c = canonical_colorings(n)
    assert len(c) == stirling_up_to_3(n) == len({tuple(r) for r in c})
    assert (c[:, 0] == 0).all()
    assert np.array_equal(relabel(c + COLOR0) - COLOR0, c)  # already canonical
    assert [tuple(r) for r in c] == sorted(tuple(r) for r in c)


def test_relabel_is_first_appearance_and_keeps_non_colors():
    x = np.array([[5, 5, 3, 4], [4, 3, 4, 5], [0, 5, 1, 3]])
    assert relabel(x).tolist() == [[3, 3, 4, 5], [3, 4, 3, 5], [0, 3, 1, 4]]


def test_paper_counts_8_nodes(gc8):
    m = json.loads((gc8.data_dir / "manifest.json").read_text())
    assert gc8.data_dir.name == "graph-coloring-8"
    assert m["counts"]["train_graphs"] == 7002 and m["counts"]["test_graphs"] == 255
    assert m["counts"]["p"] == 0.4
    assert gc8.layout.in_len == 28 and gc8.layout.out_len == 8 and gc8.layout.vocab == 6
    assert len(gc8.eval_set()) == 255
    ts = gc8.train_set()
    assert len(ts) == m["counts"]["train_solutions"]
    assert set(ts.inputs.unique().tolist()) <= {1, 2} and set(ts.targets.unique().tolist()) <= {3, 4, 5}


def test_train_and_test_share_no_graph(gc8):
    a = gc8.arrays()
    train = {r.tobytes() for r in a["train_inputs"]}
    test = {r.tobytes() for r in a["test_inputs"]}
    assert len(train) == 7002 and len(test) == 255 and not train & test
    assert not set(a["train_ids"]) & set(a["test_ids"])


def test_every_stored_coloring_is_proper(gc8):
    for split in ("train", "test"):
        es = gc8.eval_set(split)
        comps = gc8.completions(split)
        for i in range(0, len(es), 97 if split == "train" else 1):
            f = gc8.verify(es.inputs[i:i + 1], torch.as_tensor(comps[i]).unsqueeze(0))
            assert f["valid"].all() and (f["conflicts"] == 0).all()
            assert len(comps[i]) == es.n_solutions[i] >= 1
            assert len(set(gc8.canonical(comps[i]))) == len(comps[i])  # distinct up to permutation


def test_solution_sets_match_brute_force(gc8):
    rng = np.random.default_rng(0)
    es = gc8.eval_set("test")
    comps = gc8.completions("test")
    for i in rng.choice(len(es), 25, replace=False):
        adj = (es.inputs[i].numpy() == 2).astype(int)
        assert {tuple(r - COLOR0) for r in comps[i]} == brute_force(8, adj)


def test_build_is_deterministic_and_seeded(tmp_path):
    cfg = GraphColoring.Config(nodes=6, n_train=30, n_test=10)
    a = GraphColoring(cfg, tmp_path / "a").build()
    b = GraphColoring(cfg, tmp_path / "b").build()
    c = GraphColoring(GraphColoring.Config(nodes=6, n_train=30, n_test=10, seed=1), tmp_path / "c").build()
    assert a["files"] == b["files"] and a["files"] != c["files"]
    # small graphs: check every graph against brute force
    t = GraphColoring(cfg, tmp_path / "a")
    for split in ("train", "test"):
        es, comps = t.eval_set(split), t.completions(split)
        for i in range(len(es)):
            assert {tuple(r - COLOR0) for r in comps[i]} == brute_force(6, (es.inputs[i].numpy() == 2).astype(int))


def test_dir_name_spells_out_non_default_configs(tmp_path):
    assert GraphColoring(GraphColoring.Config(nodes=10), tmp_path).dir_name() == "graph-coloring-10"
    small = GraphColoring(GraphColoring.Config(nodes=8, n_train=10, n_test=5), tmp_path).dir_name()
    other = GraphColoring(GraphColoring.Config(nodes=8, n_train=10, n_test=6), tmp_path).dir_name()
    assert small.startswith("graph-coloring-8-") and small != other
    assert NQueens(NQueens.Config(n=8), tmp_path).dir_name() == "nqueens-8"
    assert NQueens(NQueens.Config(n=8, split_seed=3), tmp_path).dir_name().startswith("nqueens-8-")


def test_paper_counts_10_nodes(tmp_path):
    m = GraphColoring(GraphColoring.Config(nodes=10), tmp_path).build()
    assert m["counts"]["train_graphs"] == 13465 and m["counts"]["test_graphs"] == 192
    assert m["counts"]["p"] == 0.3


def test_verify_counts_monochromatic_and_uncolored_edges():
    t = GraphColoring(GraphColoring.Config(nodes=3, n_train=1, n_test=1), "unused")
    # triangle minus edge (1,2): edges (0,1), (0,2); upper triangle order (0,1), (0,2), (1,2)
    x = torch.tensor([[2, 2, 1]])
    preds = torch.tensor([[[3, 4, 4],    # proper: 1 and 2 share a color but are not adjacent
                           [3, 3, 4],    # edge (0,1) monochromatic
                           [3, 3, 3],    # both edges
                           [3, 4, 0],    # node 2 uncolored: edge (0,2) is a conflict
                           [5, 3, 4]]])  # proper with other color names
    f = t.verify(x, preds)
    assert f["conflicts"].tolist() == [[0, 1, 2, 1, 0]]
    assert f["valid"].tolist() == [[True, False, False, False, True]]
    assert f["colored"].tolist() == [[True, True, True, False, True]]
    keys = t.canonical(preds[0].numpy())
    assert keys[0] != keys[4] and len(set(keys)) == 5
    assert t.canonical(np.array([[4, 5, 5]]))[0] == keys[0]  # a relabelling is the same solution


def test_config_is_validated():
    assert resolve("graph-coloring", "gram", "cpu").model.beta == 0.5
    assert resolve("graph-coloring", "gram", "cpu", {"task.nodes": 10}).model.beta == 0.45
    for bad in ({"task.nodes": 7}, {"task.p": 1.5}, {"task.n_test": 0}):
        with pytest.raises(UsageError):
            resolve("graph-coloring", "trm", "cpu", bad)
    assert "graph-coloring" in TASKS


def test_impossible_request_is_refused(tmp_path):
    t = GraphColoring(GraphColoring.Config(nodes=3, n_train=10, n_test=5), tmp_path)
    with pytest.raises(UsageError, match="Only 8 of 15"):
        t.build()  # 3 nodes have only 8 labelled graphs
    assert not any(tmp_path.iterdir())  # nothing written half-way
