"""ARC-AGI-1 / ARC-AGI-2: the grid encoding against every grid of both datasets, decoding of
malformed model outputs, the augmentations and their inverses, the dataset build (variants,
protocol, translation), the voting / pass@k scoring and the submission file, and a smoke run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gram_bench.harness.config import resolve
from gram_bench.core.errors import UsageError
from gram_bench.harness.rundir import run_path
from gram_bench.metrics.records import example_records
from gram_bench.metrics.summary import summarize
from gram_bench.tasks import TASKS, arc
from gram_bench.tasks.arc import ArcAgi1, ArcAgi2
from gram_bench.tasks.arc_grids import (EOS, PAD, SIDE, augment_grid, decode, dihedral, encode, grid_hash, invert_grid,
                                        load_arc_json)

# the small dataset most tests share: 4 training and 3 evaluation tasks of ARC-AGI-1, 4 extra
# variants each. Seed 2 is picked so that the evaluation subset holds a task with 2 test inputs
# (9110e3c5); `test_small_build_subset` checks that it does.
SMALL = {"augmentations": 4, "train_tasks": 4, "eval_tasks": 3, "seed": 2}
AUG = SMALL["augmentations"]
SMOKE = ("--profile", "smoke", "--device", "cpu")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def arc1() -> dict:
    return load_arc_json("arc-agi-1")


@pytest.fixture(scope="module")
def arc2() -> dict:
    return load_arc_json("arc-agi-2")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> ArcAgi1:
    task = ArcAgi1(ArcAgi1.Config(**SMALL), tmp_path_factory.mktemp("arcdata"))
    task.build()
    task.arrays()
    return task


def all_grids(data: dict):
    for split in ("train", "eval"):
        for name, task in data[split].items():
            for key in ("train", "test"):
                for p in task[key]:
                    yield name, np.array(p["input"]), np.array(p["output"])


def canvas(tokens) -> np.ndarray:
    return np.asarray(tokens).reshape(SIDE, SIDE)


def expected_canvas(g: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """The encoding spelled out cell by cell from the spec (independent of `encode`)."""
    h, w = g.shape
    r, c = np.indices((SIDE, SIDE))
    out = np.zeros((SIDE, SIDE), dtype=np.int64)
    eos = (((r == dr + h) & (c >= dc) & (c <= dc + w)) | ((c == dc + w) & (r >= dr) & (r <= dr + h)))
    out[eos] = EOS
    out[dr:dr + h, dc:dc + w] = g + 2
    return out


def unshift(tokens, dr: int, dc: int) -> np.ndarray:
    """Move the canvas up-left by (dr, dc), padding what comes in."""
    c = canvas(tokens)
    out = np.zeros_like(c)
    out[:SIDE - dr, :SIDE - dc] = c[dr:, dc:]
    return out.reshape(-1)


def offset_of(tokens) -> tuple[int, int]:
    """(row, column) of the first non-pad token: the top-left cell of a translated grid."""
    return divmod(int(np.argmax(np.asarray(tokens) != PAD)), SIDE)


# ----------------------------------------------------------------------------- 1. encoding


@pytest.mark.parametrize("version", ["arc-agi-1", "arc-agi-2"])
def test_every_grid_of_both_datasets_round_trips(version, arc1, arc2):
    data = arc1 if version == "arc-agi-1" else arc2
    want = {"arc-agi-1": (400, 400), "arc-agi-2": (1000, 120)}[version]
    assert (len(data["train"]), len(data["eval"])) == want
    rng = np.random.default_rng(0)
    n = 0
    shapes = set()
    for name, gi, go in all_grids(data):
        for g in (gi, go):
            assert g.ndim == 2 and 1 <= min(g.shape) and max(g.shape) <= SIDE, name
            shapes.add(g.shape)
            t = encode(g)
            assert t.shape == (SIDE * SIDE,)
            assert np.array_equal(canvas(t), expected_canvas(g, 0, 0)), name
            d = decode(t)
            assert d is not None and d.shape == g.shape and np.array_equal(d, g), name
            # a random offset that keeps the grid inside the canvas
            dr, dc = int(rng.integers(SIDE - g.shape[0] + 1)), int(rng.integers(SIDE - g.shape[1] + 1))
            t = encode(g, dr, dc)
            assert np.array_equal(canvas(t), expected_canvas(g, dr, dc)), (name, dr, dc)
            assert offset_of(t) == (dr, dc)
            if (dr, dc) != (0, 0):
                assert decode(t) is None  # an answer must start at the top-left corner
            if dr + g.shape[0] < SIDE and dc + g.shape[1] < SIDE:  # not clipped: moving back decodes
                assert np.array_equal(decode(unshift(t, dr, dc)), g)
            n += 1
    assert n == 2 * sum(len(t["train"]) + len(t["test"]) for sp in ("train", "eval") for t in data[sp].values())
    assert n > 5000
    assert any(s[0] == SIDE for s in shapes) and any(s[1] == SIDE for s in shapes)


def test_encoding_by_hand():
    g = np.array([[1, 2, 3], [4, 5, 6]])
    c = canvas(encode(g, 1, 2))
    assert c[1:3, 2:5].tolist() == [[3, 4, 5], [6, 7, 8]]  # color c -> c + 2
    assert c[3, 2:6].tolist() == [EOS] * 4  # the EOS row below, corner included
    assert c[1:4, 5].tolist() == [EOS] * 3  # the EOS column to the right, corner included
    assert c[3, 5] == EOS  # the corner
    assert (c != PAD).sum() == 6 + 6  # nothing else
    assert c[0].tolist() == [PAD] * SIDE and c[:, 1].tolist() == [PAD] * SIDE and c[4].tolist() == [PAD] * SIDE

    # 30 wide: no EOS column, an EOS row of 30
    g = np.arange(3 * SIDE).reshape(3, SIDE) % 10
    c = canvas(encode(g))
    assert c[3].tolist() == [EOS] * SIDE and (c[4:] == PAD).all() and (c[:3] >= 2).all()
    assert np.array_equal(decode(encode(g)), g)
    # 30 high: no EOS row, an EOS column of 30
    c = canvas(encode(g.T))
    assert c[:, 3].tolist() == [EOS] * SIDE and (c[:, 4:] == PAD).all() and (c[:, :3] >= 2).all()
    assert np.array_equal(decode(encode(g.T)), g.T)
    # 30 x 30: no EOS at all
    g = (np.arange(SIDE * SIDE) % 7).reshape(SIDE, SIDE)
    t = encode(g)
    assert (t >= 2).all() and np.array_equal(decode(t), g)
    # clipped at the border by an offset: 3x3 at (27, 27) has no EOS; 3x3 at (27, 0) only a column
    c = canvas(encode(np.ones((3, 3), dtype=np.int64), 27, 27))
    assert (c[27:, 27:] == 3).all() and (c == EOS).sum() == 0 and (c == PAD).sum() == SIDE * SIDE - 9
    c = canvas(encode(np.ones((3, 3), dtype=np.int64), 27, 0))
    assert c[27:, 3].tolist() == [EOS] * 3 and (c == EOS).sum() == 3
    c = canvas(encode(np.ones((3, 3), dtype=np.int64), 0, 27))
    assert c[3, 27:].tolist() == [EOS] * 3 and (c == EOS).sum() == 3
    # a 1x1 grid
    c = canvas(encode(np.array([[9]])))
    assert c[0, 0] == 11 and c[0, 1] == c[1, 0] == c[1, 1] == EOS and (c != PAD).sum() == 4


# ----------------------------------------------------------------------------- 2. malformed outputs


def consistent(tokens, g) -> bool:
    """A decoded grid must be exactly what the tokens spell at the top-left: its cells and its EOS
    border (what lies beyond the border is free)."""
    if not (isinstance(g, np.ndarray) and g.ndim == 2 and 1 <= min(g.shape) and max(g.shape) <= SIDE):
        return False
    if g.min() < 0 or g.max() > 9:
        return False
    want = expected_canvas(g, 0, 0)
    mask = want != PAD
    return bool((canvas(tokens)[mask] == want[mask]).all())


def test_trivially_invalid_outputs_decode_to_none():
    assert decode(np.zeros(SIDE * SIDE, dtype=np.int64)) is None  # all pad
    assert decode(np.full(SIDE * SIDE, EOS)) is None  # all EOS
    assert decode(np.full(SIDE * SIDE, 99)) is None  # out of vocabulary
    assert decode(np.full(SIDE * SIDE, -1)) is None
    assert decode(torch.zeros(SIDE * SIDE, dtype=torch.long)) is None  # a tensor works too
    t = np.full(SIDE * SIDE, EOS)
    t[0] = 5  # a 1x1 grid closed by EOS on all sides is fine
    assert decode(t).tolist() == [[3]]


def test_random_tokens_never_crash_and_only_decode_consistently():
    rng = np.random.default_rng(1)
    valid = 0
    for _ in range(400):
        t = rng.integers(0, 12, SIDE * SIDE)
        g = decode(t)
        if g is not None:
            valid += 1
            assert consistent(t, g)
            assert np.array_equal(decode(encode(g)), g)
    assert valid < 40  # random tokens almost never form a closed rectangle


def test_random_corruptions_of_valid_encodings():
    """Change a few random cells of a valid encoding: the result is None or a grid the tokens
    spell; when no change touches the grid or its border, it still decodes to the grid."""
    rng = np.random.default_rng(2)
    outcomes = {"none": 0, "same": 0, "other": 0}
    for _ in range(300):
        h, w = int(rng.integers(1, SIDE + 1)), int(rng.integers(1, SIDE + 1))
        g = rng.integers(0, 10, (h, w))
        t = encode(g)
        touched = expected_canvas(g, 0, 0).reshape(-1) != PAD
        pool = np.nonzero(touched)[0] if rng.random() < 0.5 else np.arange(SIDE * SIDE)  # half aim at the grid
        cells = rng.choice(pool, min(len(pool), int(rng.integers(1, 4))), replace=False)
        t[cells] = rng.integers(0, 12, len(cells))
        d = decode(t)
        if not touched[cells].any():
            assert d is not None and np.array_equal(d, g)
        if d is None:
            outcomes["none"] += 1
        else:
            assert consistent(t, d)
            outcomes["same" if np.array_equal(d, g) else "other"] += 1
    assert outcomes["none"] > 50 and outcomes["same"] > 50 and outcomes["other"] > 50


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (5, 1), (3, 4), (7, 29), (29, 7), (1, 29), (29, 1), (12, 12)])
def test_structured_corruptions_decode_to_none(shape):
    rng = np.random.default_rng(shape[0] * 31 + shape[1])
    h, w = shape
    g = rng.integers(0, 10, shape)
    good = encode(g)
    assert np.array_equal(decode(good), g)

    def broken(where, value):
        c = canvas(good).copy()
        c[where] = value
        return decode(c.reshape(-1))

    for j in range(w + 1):  # a ragged EOS row: any one EOS of it missing (pad) or a color
        assert broken((h, j), PAD) is None, ("row pad", j)
        # (a color under a 29x1 grid's column makes it a valid 30x1 grid: the only exception)
        assert broken((h, j), 4) is None or (h, w, j) == (SIDE - 1, 1, 0), ("row color", j)
    for i in range(h + 1):  # a ragged EOS column
        assert broken((i, w), PAD) is None, ("col pad", i)
    for i in range(h):  # a hole of pad (or EOS) anywhere inside the rectangle
        for j in range(w):
            assert broken((i, j), PAD) is None, ("hole", i, j)
            if i > 0 and j > 0:
                assert broken((i, j), EOS) is None, ("eos hole", i, j)
    assert broken((slice(None), w), PAD) is None  # missing EOS column
    assert broken((h, slice(None)), PAD) is None  # missing EOS row
    assert broken((slice(None), w), 7) is None  # EOS column turned into colors
    for dr, dc in ((1, 0), (0, 1), (1, 1), (SIDE - h, SIDE - w)):  # not starting at (0, 0)
        if (dr, dc) != (0, 0) and dr + h <= SIDE and dc + w <= SIDE:
            assert decode(encode(g, dr, dc)) is None, (dr, dc)
    # junk beyond the EOS border is ignored
    c = canvas(good).copy()
    if h + 2 < SIDE and w + 2 < SIDE:
        c[h + 2:, :] = rng.integers(0, 12, (SIDE - h - 2, SIDE))
        c[:, w + 2:] = rng.integers(0, 12, (SIDE, SIDE - w - 2))
        assert np.array_equal(decode(c.reshape(-1)), g)


# ----------------------------------------------------------------------------- 3. augmentation


def random_perm(rng) -> np.ndarray:
    return np.concatenate([[0], 1 + rng.permutation(9)])


def test_dihedral_by_hand():
    g = np.array([[1, 2, 3], [4, 5, 6]])
    assert dihedral(g, 0).tolist() == g.tolist()
    assert dihedral(g, 1).tolist() == [[3, 6], [2, 5], [1, 4]]  # a quarter turn counter-clockwise
    assert dihedral(g, 2).tolist() == [[6, 5, 4], [3, 2, 1]]
    assert dihedral(g, 3).tolist() == [[4, 1], [5, 2], [6, 3]]
    assert dihedral(g, 4).tolist() == [[1, 4], [2, 5], [3, 6]]  # the transpose
    perm = np.array([0, 2, 3, 4, 5, 6, 7, 8, 9, 1])
    assert augment_grid(np.array([[0, 1], [9, 5]]), 0, perm).tolist() == [[0, 2], [1, 6]]


def test_augmentation_inverse_is_identity():
    rng = np.random.default_rng(3)
    for _ in range(200):
        shape = (int(rng.integers(1, SIDE + 1)), int(rng.integers(1, SIDE + 1)))
        g = rng.integers(0, 10, shape)
        perm = random_perm(rng)
        for k in range(8):
            a = augment_grid(g, k, perm)
            assert a.shape == (shape if k in (0, 2, 5, 7) else shape[::-1])
            assert sorted(a.ravel().tolist()) == sorted(perm[g].ravel().tolist())
            assert ((a == 0).sum()) == (g == 0).sum()  # color 0 stays 0 ...
            assert np.array_equal(a == 0, dihedral(g, k) == 0)  # ... in the transformed place
            back = invert_grid(a, k, perm)
            assert back.shape == g.shape and np.array_equal(back, g), (k, shape)
            # and through the token encoding, as the verifier sees it
            assert np.array_equal(invert_grid(decode(encode(a)), k, perm), g)


def test_the_eight_transforms_are_distinct_and_form_a_group():
    rng = np.random.default_rng(4)
    g = rng.integers(0, 10, (4, 4))
    outs = [dihedral(g, k) for k in range(8)]
    assert len({o.tobytes() for o in outs}) == 8
    rect = rng.integers(0, 10, (3, 5))
    assert len({(dihedral(rect, k).shape, dihedral(rect, k).tobytes()) for k in range(8)}) == 8
    for k in range(8):  # closed under composition
        for m in range(8):
            comp = dihedral(dihedral(g, k), m)
            assert any(np.array_equal(comp, o) for o in outs)


# ----------------------------------------------------------------------------- 4. dataset build


def pair_grids(data: dict, split: str, name: str) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
    """(input, output, is test, index) of every pair of a task, demonstrations first."""
    task = data[split][name]
    return [(np.array(p["input"]), np.array(p["output"]), kind, j)
            for kind, key in ((0, "train"), (1, "test")) for j, p in enumerate(task[key])]


def task_key(pairs, k, perm) -> bytes:
    return b"".join(augment_grid(g, k, perm).tobytes() + bytes(augment_grid(g, k, perm).shape)
                    for gi, go, *_ in pairs for g in (gi, go))


def stored(a: dict, gi: int) -> np.ndarray:
    h, w = a["grid_shapes"][gi]
    return a["grids"][gi, :h, :w]


def test_small_build_subset(small, arc1):
    a = small.arrays()
    counts = small.read_manifest()["counts"]
    names, is_eval = a["task_names"].tolist(), a["task_is_eval"]
    assert counts["train_tasks"] == 4 and counts["eval_tasks"] == 3
    assert is_eval.tolist() == [False] * 4 + [True] * 3
    assert all(n in arc1["train"] for n in names[:4]) and all(n in arc1["eval"] for n in names[4:])
    assert names[:4] == sorted(names[:4]) and names[4:] == sorted(names[4:])
    n_tests = [len(arc1["eval"][n]["test"]) for n in names[4:]]
    assert 2 in n_tests and n_tests.count(1) >= 2, ("pick another SMALL seed", names, n_tests)
    assert counts["eval_test_inputs"] == sum(n_tests)

    # the stored pairs are the JSON's pairs, in order
    assert counts["pairs"] == len(a["pairs"])
    row = 0
    for t, name in enumerate(names):
        for gi, go, kind, j in pair_grids(arc1, "eval" if is_eval[t] else "train", name):
            pt, pi, po, pk, pj = a["pairs"][row]
            assert (pt, pk, pj) == (t, kind, j)
            assert np.array_equal(stored(a, pi), gi) and np.array_equal(stored(a, po), go)
            row += 1
    assert row == len(a["pairs"])


def test_variants(small, arc1):
    a = small.arrays()
    counts = small.read_manifest()["counts"]
    names, is_eval = a["task_names"].tolist(), a["task_is_eval"]
    var_task, var_k, var_perm = a["var_task"], a["var_k"].astype(int), a["var_perm"].astype(int)
    # the real tasks all have far more than 1 + AUG distinct variants: none is short
    assert counts["variants"] == len(var_task) == len(names) * (1 + AUG)
    assert np.all(np.diff(var_task) >= 0)  # grouped by task, in task order
    for t, name in enumerate(names):
        vs = np.nonzero(var_task == t)[0]
        assert len(vs) == 1 + AUG
        assert var_k[vs[0]] == 0 and var_perm[vs[0]].tolist() == list(range(10))  # variant 0 is the task
        pairs = pair_grids(arc1, "eval" if is_eval[t] else "train", name)
        keys = set()
        for v in vs:
            k, perm = var_k[v], var_perm[v]
            assert 0 <= k < 8 and perm[0] == 0 and sorted(perm.tolist()) == list(range(10))
            keys.add(task_key(pairs, k, perm))
        assert len(keys) == len(vs), f"two variants of {name} make the same task"
    assert (var_k != 0).any() and (var_perm != np.arange(10)).any()  # not all identity
    lay = small.layout
    assert lay.n_puzzle_ids == 1 + len(var_task) and lay.in_len == lay.out_len == SIDE * SIDE and lay.vocab == 12


def test_build_is_deterministic(small, tmp_path):
    other = ArcAgi1(ArcAgi1.Config(**SMALL), tmp_path)
    m = other.build()
    assert m["files"] == small.read_manifest()["files"] and m["counts"] == small.read_manifest()["counts"]
    a, b = small.arrays(), other.arrays()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    idx = torch.tensor([0, 5, 17, 3, len(small.train_set()) - 1])
    b1, b2 = small.train_set().batch(idx), other.train_set().batch(idx)
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    e1, e2 = small.eval_set(), other.eval_set()
    assert torch.equal(e1.inputs, e2.inputs) and torch.equal(e1.targets, e2.targets)


def test_a_different_seed_gives_different_variants(small, tmp_path):
    other = ArcAgi1(ArcAgi1.Config(**{**SMALL, "seed": 3}), tmp_path)
    assert other.dir_name() != small.dir_name()
    other.build()
    assert other.arrays()["task_names"].tolist() != small.arrays()["task_names"].tolist()


def gkey(g: np.ndarray) -> tuple:
    return g.shape, np.asarray(g, dtype=np.int64).tobytes()


def train_item_sets(task) -> tuple[set, np.ndarray]:
    ts = task.train_set()
    return {tuple(int(x) for x in it) for it in ts.items}, ts.items


def test_training_items_follow_the_protocol(small, arc1, tmp_path):
    a = small.arrays()
    pairs, is_eval = a["pairs"], a["task_is_eval"]
    var_task = a["var_task"]
    items, raw = train_item_sets(small)
    assert len(items) == len(raw)  # no duplicate items
    want = set()
    for pt, pi, po, kind, _ in pairs:
        if is_eval[pt] and kind == 1:
            continue
        for v in np.nonzero(var_task == pt)[0]:
            want.add((int(pi), int(po), int(v)))
    assert items == want  # every training pair and every eval demonstration, under every variant of its task
    eval_test_grids = {int(g) for pt, pi, po, kind, _ in pairs if is_eval[pt] and kind == 1 for g in (pi, po)}
    eval_demo_grids = {int(g) for pt, pi, po, kind, _ in pairs if is_eval[pt] and kind == 0 for g in (pi, po)}
    used = set(raw[:, :2].ravel().tolist())
    assert not used & eval_test_grids and eval_demo_grids <= used

    # no eval test pair is a training pair, by content either (in the original frame)
    tests = {(gkey(np.array(p["input"])), gkey(np.array(p["output"])))
             for n in a["task_names"][is_eval] for p in arc1["eval"][str(n)]["test"]}
    for gi, go, v in raw[::7]:
        assert (gkey(stored(a, gi)), gkey(stored(a, go))) not in tests

    # without the eval demonstrations, nothing of an eval task is trained on
    strict = ArcAgi1(ArcAgi1.Config(**SMALL, train_on_eval_demos=False), tmp_path)
    assert strict.dir_name() != small.dir_name()
    strict.build()
    sa = strict.arrays()
    assert np.array_equal(sa["pairs"], pairs) and np.array_equal(sa["var_task"], var_task)
    s_items, s_raw = train_item_sets(strict)
    eval_grids = eval_test_grids | eval_demo_grids
    assert not set(s_raw[:, :2].ravel().tolist()) & eval_grids
    assert not {int(var_task[v]) for v in s_raw[:, 2]} & set(np.nonzero(is_eval)[0].tolist())
    assert s_items == {it for it in items if not is_eval[var_task[it[2]]]}
    assert len(strict.eval_set()) == len(small.eval_set())  # evaluation is unchanged


def test_training_examples_are_augmented_and_translated(small, arc1):
    a = small.arrays()
    ts = small.train_set()
    names, is_eval = a["task_names"], a["task_is_eval"]
    # (grid index) -> the original grid, straight from the JSON
    orig = {}
    for pt, pi, po, kind, j in a["pairs"]:
        p = arc1["eval" if is_eval[pt] else "train"][str(names[pt])]["train" if kind == 0 else "test"][j]
        orig[int(pi)], orig[int(po)] = np.array(p["input"]), np.array(p["output"])
    offsets = set()
    plain = arc.ArcTrainSet(ts.grids, ts.shapes, ts.items, ts.var_k, ts.var_perm, False, ts.seed)
    for i in range(len(ts)):
        gi, go, v = (int(x) for x in ts.items[i])
        k, perm = int(a["var_k"][v]), a["var_perm"][v].astype(np.int64)
        A, B = perm[dihedral(orig[gi], k)], perm[dihedral(orig[go], k)]
        x, y, pid = ts.example(i)
        assert pid == v + 1 and 1 <= pid <= len(a["var_task"])
        dr, dc = offset_of(x)
        assert offset_of(y) == (dr, dc)  # input and output move together
        assert 0 <= dr <= SIDE - max(A.shape[0], B.shape[0]) and 0 <= dc <= SIDE - max(A.shape[1], B.shape[1])
        offsets.add((dr, dc))
        for tok, G in ((x, A), (y, B)):
            assert np.array_equal(canvas(tok), expected_canvas(G, dr, dc)), i
            if dr + G.shape[0] < SIDE and dc + G.shape[1] < SIDE:
                assert np.array_equal(decode(unshift(tok, dr, dc)), G), i
            else:  # clipped at the border: the cells are still there
                assert np.array_equal(canvas(tok)[dr:dr + G.shape[0], dc:dc + G.shape[1]] - 2, G)
        # without translation: at (0, 0), decodable as is, and un-augmenting gives the JSON pair
        x0, y0, pid0 = plain.example(i)
        assert pid0 == pid
        assert np.array_equal(decode(x0), A) and np.array_equal(decode(y0), B)
        assert np.array_equal(invert_grid(decode(x0), k, perm), orig[gi])
        assert np.array_equal(invert_grid(decode(y0), k, perm), orig[go])
    assert len(offsets) > len(ts) // 4  # translation really moves things


def test_batches_are_a_pure_function_of_the_indices(small):
    ts = small.train_set()
    idx = torch.tensor([3, 0, 41, 41, len(ts) - 1, 7])
    torch.manual_seed(0)
    np.random.seed(0)
    b1 = ts.batch(idx)
    torch.manual_seed(123)
    np.random.seed(123)
    b2 = small.train_set().batch(idx)
    for k in ("inputs", "targets", "puzzle_ids"):
        assert torch.equal(b1[k], b2[k]), k
    assert b1["inputs"].shape == (6, SIDE * SIDE) and b1["inputs"].dtype == torch.long
    assert torch.equal(b1["inputs"][2], b1["inputs"][3])  # the same index twice -> the same example
    order = torch.tensor([5, 4, 3, 2, 1, 0])
    b3 = ts.batch(idx[order])
    for k in b1:
        assert torch.equal(b3[k], b1[k][order]), k
    b4 = ts.to(torch.device("cpu")).batch(idx)
    assert all(torch.equal(b4[k], b1[k]) for k in b1)
    pids = torch.cat([ts.batch(torch.arange(s, min(s + 64, len(ts))))["puzzle_ids"] for s in range(0, len(ts), 64)])
    assert pids.min() >= 1 and pids.max() <= len(small.arrays()["var_task"]) == small.layout.n_puzzle_ids - 1


def test_eval_set_is_untranslated_test_inputs_under_every_variant(small, arc1):
    a = small.arrays()
    es, rows = small.eval_set(), small.eval_rows()
    names, pairs = a["task_names"], a["pairs"]
    n_eval_vars = sum(int((a["var_task"] == t).sum()) for t in np.nonzero(a["task_is_eval"])[0])
    want = sum(len(arc1["eval"][str(n)]["test"]) for n in names[a["task_is_eval"]]) * (1 + AUG)
    assert len(es) == len(rows) == want and n_eval_vars == 3 * (1 + AUG)
    assert es.ids.tolist() == list(range(len(es)))
    for r, (p, v) in enumerate(rows):
        pt, _, _, kind, j = pairs[p]
        assert kind == 1 and a["task_is_eval"][pt] and a["var_task"][v] == pt
        assert int(es.puzzle_ids[r]) == v + 1
        k, perm = int(a["var_k"][v]), a["var_perm"][v].astype(np.int64)
        p_json = arc1["eval"][str(names[pt])]["test"][j]
        assert np.array_equal(invert_grid(decode(es.inputs[r].numpy()), k, perm), np.array(p_json["input"]))
        assert np.array_equal(invert_grid(decode(es.targets[r].numpy()), k, perm), np.array(p_json["output"]))
    limited = ArcAgi1(ArcAgi1.Config(**SMALL, eval_variants=2), small.data_root)
    assert limited.dir_name() == small.dir_name()  # eval_variants is not part of the data's identity
    assert len(limited.eval_rows()) == want // (1 + AUG) * 2


# ---- the variant loop on synthetic tasks (load_arc_json replaced): rejected duplicates


def synthetic(task_grids: dict[str, list[list[list[int]]]]) -> dict:
    def task(gs):
        return {"train": [{"input": g, "output": g} for g in gs[:-1]], "test": [{"input": gs[-1], "output": gs[-1]}]}

    return {"train": {n: task(g) for n, g in task_grids.items() if n.startswith("t")},
            "eval": {n: task(g) for n, g in task_grids.items() if n.startswith("e")}}


def test_duplicate_variants_are_rejected(monkeypatch, tmp_path):
    data = synthetic({
        "t0": [[[0, 0], [0, 0]]] * 2,  # one color, 0: a single distinct variant
        "t5": [[[5, 5], [5, 5]]] * 2,  # one color, not 0, square: 9 distinct variants (the color)
        "t0x": [[[0, 0, 0]]] * 2,  # 1x3 of 0: 2 distinct variants (1x3, 3x1)
        "tgen": [[[1, 2, 3], [4, 5, 6], [7, 8, 9]]] * 2,  # generic: never short
        "e1": [[[0, 3]], [[3, 0]]],
    })
    monkeypatch.setattr(arc, "load_arc_json", lambda version: data)
    aug = 12
    task = ArcAgi1(ArcAgi1.Config(augmentations=aug), tmp_path)
    counts = task.build()["counts"]
    a = task.arrays()
    per = {str(n): int((a["var_task"] == t).sum()) for t, n in enumerate(a["task_names"])}
    assert per["t0"] == 1 and per["t0x"] == 2 and per["t5"] == 9 and per["tgen"] == 1 + aug
    assert per["e1"] == 1 + aug  # (1x2 [0,3] / [3,0] under 8 transforms x 9 colors: enough)
    assert counts["variants"] == sum(per.values())
    # each short task draws its whole budget of 10 * aug + 100 tries, keeping only its distinct variants
    assert counts["duplicate_variants_rejected"] >= 3 * (10 * aug + 100) - (1 + 9 + 2)
    for t, n in enumerate(a["task_names"]):  # every kept variant is a different task
        vs = np.nonzero(a["var_task"] == t)[0]
        pairs = pair_grids(data, "eval" if a["task_is_eval"][t] else "train", str(n))
        assert len({task_key(pairs, int(a["var_k"][v]), a["var_perm"][v].astype(np.int64)) for v in vs}) == len(vs)


def test_bad_json_is_a_usage_error(monkeypatch, tmp_path):
    for bad in ([[1, 2], [3]], [[10]], [], [[1] * 31]):
        data = {"train": {"t": {"train": [{"input": bad, "output": [[1]]}], "test": []}}, "eval": {}}
        monkeypatch.setattr(arc, "load_arc_json", lambda version, d=data: d)
        with pytest.raises(UsageError, match="task t train pair 0 input"):
            ArcAgi1(ArcAgi1.Config(augmentations=1), tmp_path).build_arrays()
    data = {"train": {"t": {"train": [{"input": [[1]]}], "test": []}}, "eval": {}}
    monkeypatch.setattr(arc, "load_arc_json", lambda version: data)
    with pytest.raises(UsageError, match="input and output"):
        ArcAgi1(ArcAgi1.Config(augmentations=1), tmp_path).build_arrays()


def test_config_check():
    ArcAgi1.Config().check()
    for bad in ({"extra_train": "arc-agi-3"}, {"tie_break": "vote"}, {"augmentations": -1}):
        with pytest.raises(ValueError):
            ArcAgi1.Config(**bad).check()
    assert TASKS.get("arc-agi-1") is ArcAgi1 and TASKS.get("arc-agi-2") is ArcAgi2
    assert ArcAgi1.model_hints(None)["beta"] == 0.04 and ArcAgi2.model_hints(None)["beta"] == 0.1


# ----------------------------------------------------------------------------- 5. protocol


def test_arc1_with_arc2_training_is_refused(arc1, arc2, tmp_path):
    clash = set(arc2["train"]) & set(arc1["eval"])
    assert len(clash) == 376  # as the module docstring says
    task = ArcAgi1(ArcAgi1.Config(augmentations=1, train_tasks=2, eval_tasks=1, extra_train="arc-agi-2"), tmp_path)
    with pytest.raises(UsageError) as e:
        task.build()
    msg = str(e.value)
    assert f"{len(clash)} of the arc-agi-1 evaluation tasks" in msg and "extra_train" in msg
    assert any(n in msg for n in clash)
    assert not task.data_dir.exists()
    # on its own, ARC-AGI-1 trains on nothing it evaluates (by name)
    assert not set(arc1["train"]) & set(arc1["eval"])


def test_arc2_with_arc1_training(arc1, arc2, tmp_path):
    clash = (set(arc2["train"]) | set(arc1["train"])) & set(arc2["eval"])
    # by content too: no ARC-AGI-2 evaluation test pair is an ARC-AGI-1 training pair
    train_pairs = {json.dumps([p["input"], p["output"]])
                   for t in arc1["train"].values() for p in t["train"] + t["test"]}
    content = [n for n, t in arc2["eval"].items()
               for p in t["test"] if json.dumps([p["input"], p["output"]]) in train_pairs]
    assert not content
    cfg = ArcAgi2.Config(augmentations=1, train_tasks=3, eval_tasks=2, extra_train="arc-agi-1")
    task = ArcAgi2(cfg, tmp_path)
    if clash:
        with pytest.raises(UsageError, match="evaluation tasks"):
            task.build()
        return
    counts = task.build()["counts"]
    assert counts["train_tasks"] == 3 and counts["eval_tasks"] == 2
    assert all(str(n) in arc2["eval"] for n in task.arrays()["task_names"][task.arrays()["task_is_eval"]])
    full = ArcAgi2(ArcAgi2.Config(extra_train="arc-agi-1"), tmp_path)
    train, evals = full._task_lists()
    names = [n for n, _ in train]
    assert len(names) == len(set(names)) == len(set(arc2["train"]) | set(arc1["train"]))
    assert len(evals) == 120 and not set(names) & {n for n, _ in evals}
    # a name in both keeps ARC-AGI-2's version
    both = sorted(set(arc2["train"]) & set(arc1["train"]))
    differ = [n for n in both if arc1["train"][n] != arc2["train"][n]]
    name = (differ or both)[0]
    assert dict(train)[name] == arc2["train"][name]


# ----------------------------------------------------------------------------- 6. voting and pass@k


def wrong_of(truth: np.ndarray) -> np.ndarray:
    w = truth.copy()
    w[0, 0] = (w[0, 0] + 1) % 10
    return w


def make_records(task, preds: np.ndarray, halt: np.ndarray, lprm: np.ndarray | None = None):
    es = task.eval_set()
    P = torch.from_numpy(preds)
    fields = {k: v.numpy() for k, v in task.verify(es.inputs, P, es.ids).items()}
    exact = (P == es.targets.unsqueeze(1)).all(-1).numpy()
    keys = [task.canonical(p) for p in preds]
    scores = {"halt": halt} if lprm is None else {"halt": halt, "lprm": lprm}
    return fields, example_records(es.ids, es.n_solutions, keys, fields, exact, scores, preds)


N = 6


def test_voting_pass_at_k_and_submission(small, arc1, tmp_path):
    a = small.arrays()
    es, rows = small.eval_set(), small.eval_rows()
    names, pairs = a["task_names"], a["pairs"]
    eval_tasks = [int(t) for t in np.nonzero(a["task_is_eval"])[0]]
    n_tests = {t: len(arc1["eval"][str(names[t])]["test"]) for t in eval_tasks}
    two = next(t for t in eval_tasks if n_tests[t] == 2)
    singles = [t for t in eval_tasks if n_tests[t] == 1][:2]
    # the scenario of each test input (task index, test index)
    scenario = {(two, 0): "tie_correct", (two, 1): "invalid", (singles[0], 0): "wrong_wins",
                (singles[1], 0): "tie_wrong"}
    V = 1 + AUG
    rng = np.random.default_rng(5)
    junk = [np.zeros(SIDE * SIDE, dtype=np.int64), np.full(SIDE * SIDE, EOS, dtype=np.int64),
            rng.integers(0, 12, SIDE * SIDE)]
    assert all(decode(j) is None for j in junk)
    preds = np.zeros((len(rows), N, SIDE * SIDE), dtype=np.int64)
    halt = np.zeros((len(rows), N), dtype=np.float32)
    lprm = np.zeros((len(rows), N), dtype=np.float32)
    truths, wrongs, kinds = {}, {}, {}
    for r, (p, v) in enumerate(rows):
        t, j = int(pairs[p, 0]), int(pairs[p, 4])
        k, perm = int(a["var_k"][v]), a["var_perm"][v].astype(np.int64)
        truth = np.array(arc1["eval"][str(names[t])]["test"][j]["output"])
        wrong = wrong_of(truth)
        truths[t, j], wrongs[t, j] = truth, wrong
        T = encode(augment_grid(truth, k, perm))
        W = encode(augment_grid(wrong, k, perm))
        assert np.array_equal(T, es.targets[r].numpy())  # the row's frame
        off = encode(augment_grid(truth, k, perm)[:min(3, truth.shape[0]), :1], 1, 1)  # not at (0, 0)
        s = scenario[t, j]
        first_variant = v == np.nonzero(a["var_task"] == t)[0][0]
        if s == "wrong_wins":  # within variant 0 the truth wins; over all variants the wrong grid does
            kind = "TTTTWx" if first_variant else "TWWWWx"
            h = lp = {"T": 0.9, "W": 0.1}
        elif s == "tie_correct":  # equal votes: the halting confidence picks the truth (LPRM would not)
            kind, h, lp = "TTWWxx", {"T": 0.8, "W": 0.3}, {"T": 0.1, "W": 0.9}
        elif s == "tie_wrong":
            kind, h, lp = "TTWWxx", {"T": 0.3, "W": 0.8}, {"T": 0.9, "W": 0.1}
        else:
            kind, h, lp = "xxxxxo", {}, {}
        kinds[r] = kind
        for n_, ch in enumerate(kind):
            preds[r, n_] = {"T": T, "W": W, "o": off}.get(ch, junk[(r + n_) % len(junk)])
            halt[r, n_] = h.get(ch, 0.99)
            lprm[r, n_] = lp.get(ch, 0.99)
    fields, records = make_records(small, preds, halt)

    # the verifier: valid exactly at the truth, no answer exactly at the junk, one hash per grid
    for r in range(len(rows)):
        t, j = int(pairs[rows[r][0], 0]), int(pairs[rows[r][0], 4])
        for n_, ch in enumerate(kinds[r]):
            assert bool(fields["valid"][r, n_]) == (ch == "T"), (r, n_)
            assert bool(fields["no_answer"][r, n_]) == (ch in "xo"), (r, n_)
            want_h = {"T": grid_hash(truths[t, j]), "W": grid_hash(wrongs[t, j])}.get(ch, 0)
            assert int(fields["grid_hash"][r, n_]) == want_h, (r, n_)

    ranked = small.ranked_candidates(records)
    test_pair = {(int(pairs[p, 0]), int(pairs[p, 4])): int(p) for p in set(rows[:, 0].tolist())}
    wt, tt = grid_hash(wrongs[singles[0], 0]), grid_hash(truths[singles[0], 0])
    assert [(c[0], c[1], c[3]) for c in ranked[test_pair[singles[0], 0]]] == \
        [(wt, 1 + 4 * (V - 1), False), (tt, 4 + (V - 1), True)]  # votes pooled over the variants
    assert [(c[1], c[3]) for c in ranked[test_pair[two, 0]]] == [(2 * V, True), (2 * V, False)]
    assert [(c[1], c[3]) for c in ranked[test_pair[singles[1], 0]]] == [(2 * V, False), (2 * V, True)]
    assert ranked[test_pair[two, 1]] == []
    assert ranked[test_pair[two, 0]][0][2] == pytest.approx(0.8)  # the mean halting confidence

    m = small.extra_metrics(records)
    # per task: two -> (1 + 0) / 2 at every k; wrong_wins and tie_wrong -> 0 at k=1, 1 from k=2
    want = {"pass@1": 1 / 6, "pass@2": 5 / 6, "pass@5": 5 / 6, "pass@1000": 5 / 6,
            "pass@1_task": 0.0, "pass@2_task": 2 / 3, "pass@1000_task": 2 / 3}
    for name, value in want.items():
        assert m[name]["value"] == pytest.approx(value), name
        assert m[name]["n"] == 3
        assert m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"]
    assert {f"pass@{k}{s}" for k in arc.PASS_KS for s in ("", "_task")} == set(m)
    assert small.extra_metrics([]) == {}

    # LPRM as the tie-break: reversing the order of the tie flips pass@1
    _, rec2 = make_records(small, preds, halt, lprm)
    by_lprm = ArcAgi1(ArcAgi1.Config(**SMALL, tie_break="lprm"), small.data_root)
    assert by_lprm.dir_name() == small.dir_name()
    m2 = by_lprm.extra_metrics(rec2)
    assert m2["pass@1"]["value"] == pytest.approx((0 + 0 + 1) / 3)  # tie_wrong now passes, tie_correct fails
    assert m2["pass@2"]["value"] == pytest.approx(5 / 6)
    assert small.extra_metrics(rec2)["pass@1"]["value"] == pytest.approx(1 / 6)  # halt ignores lprm

    # only part of the records: the tasks that are there
    part = [rec for rec in records if int(pairs[rows[rec["id"]][0], 0]) == singles[1]]
    assert small.extra_metrics(part)["pass@2"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 1}

    # the submission: per task, one entry per test input, the vote winner first
    paths = small.write_artifacts(tmp_path, "test", records)
    assert paths == [tmp_path / "test.submission.json"]
    sub = json.loads(paths[0].read_text())
    assert set(sub) == {str(names[t]) for t in eval_tasks}
    assert sub[str(names[two])] == [{"attempt_1": truths[two, 0].tolist(), "attempt_2": wrongs[two, 0].tolist()},
                                   {"attempt_1": [[0]], "attempt_2": [[0]]}]
    for t in singles:
        assert sub[str(names[t])] == [{"attempt_1": wrongs[t, 0].tolist(), "attempt_2": truths[t, 0].tolist()}]
    assert small.write_artifacts(tmp_path, "empty", []) == []


def test_answers_from_some_variants_pool_into_one_candidate(small):
    """The correct answer given in the frames of only some variants un-augments to one candidate
    with a vote per variant; a test input no variant answers has no candidates."""
    es, rows = small.eval_set(), small.eval_rows()
    preds = np.zeros((len(rows), 2, SIDE * SIDE), dtype=np.int64)
    for r in range(len(rows)):
        v = rows[r][1]
        if v % 2 == 0:
            preds[r, 0] = es.targets[r].numpy()
    fields, records = make_records(small, preds, np.zeros((len(rows), 2), dtype=np.float32))
    ranked = small.ranked_candidates(records)
    for p, cands in ranked.items():
        vs = rows[rows[:, 0] == p][:, 1]
        n_even = int((vs % 2 == 0).sum())
        if n_even:
            assert len(cands) == 1 and cands[0][1] == n_even and cands[0][3]
        else:
            assert cands == []
    assert fields["valid"][:, 1].sum() == 0 and fields["no_answer"][:, 1].all()


def test_samples_decoding_to_the_same_grid_are_the_same_answer(small):
    es = small.eval_set()
    T = es.targets.numpy()
    rows = len(T)
    preds = np.zeros((rows, 5, SIDE * SIDE), dtype=np.int64)
    for r in range(rows):
        truth = decode(T[r])
        wrong = (truth + 1) % 10  # another grid of the same shape (0 -> 1 is fine: both are colors)
        variants = []
        for junk in range(3):  # the correct grid three times, each with different junk past its border
            t = T[r].copy().reshape(SIDE, SIDE)
            if truth.shape[0] + 1 < SIDE:  # the last row lies below the EOS row
                t[-1, junk] = 5
            variants.append(t.reshape(-1))
        preds[r] = np.stack(variants + [encode(wrong), encode(wrong)])
    small_rows = [r for r in range(rows) if decode(T[r]).shape[0] + 1 < SIDE]
    assert small_rows  # rows whose grid leaves room for junk past the border
    for r in small_rows:  # the three correct samples really are the same grid
        assert all(np.array_equal(decode(preds[r, i]), decode(T[r])) for i in range(3))
    fields, records = make_records(small, preds, np.zeros((rows, 5), dtype=np.float32))
    assert fields["valid"][small_rows, :3].all()
    keys = small.canonical(preds[small_rows[0]])
    assert keys[0] == keys[1] == keys[2]  # the same solution -> the same canonical key
    recs = [records[r] for r in small_rows]
    assert all(rec["distinct_valid"] <= rec["n_solutions"] == 1 for rec in recs)
    assert summarize(recs)["coverage"]["value"] <= 1.0
    assert summarize(recs)["accuracy_vote"]["value"] == 1.0  # 3 votes for the truth, 2 for the wrong grid


# ----------------------------------------------------------------------------- 7. end to end


def test_smoke_run_through_the_cli(cli, tmp_path, arc1):
    res = cli("run", "--task", "arc-agi-1", "--model", "gram", *SMOKE,
              "--runs-dir", tmp_path / "runs", "--data-dir", tmp_path / "data")
    assert res.exit_code == 0, res.output
    cfg = resolve("arc-agi-1", "gram", "smoke")
    rdir = run_path(tmp_path / "runs", cfg)
    summary = json.loads((rdir / "eval" / "test.json").read_text())
    task = ArcAgi1(cfg.task, tmp_path / "data")
    a = task.arrays()
    evals = [str(n) for n in a["task_names"][a["task_is_eval"]]]
    for name in ("pass@2", "pass@2_task", "pass@1"):
        m = summary["metrics"][name]
        assert 0.0 <= m["value"] <= 1.0 and m["n"] == len(evals) == cfg.task.eval_tasks
    assert summary["n_examples"] == min(len(task.eval_rows()), cfg.eval.limit)
    sub = json.loads((rdir / "eval" / "test.submission.json").read_text())
    assert sorted(sub) == sorted(evals)
    for name, entries in sub.items():
        assert len(entries) == len(arc1["eval"][name]["test"])
        for e in entries:
            assert set(e) == {"attempt_1", "attempt_2"}
            for g in e.values():
                arr = np.array(g)
                assert arr.ndim == 2 and 1 <= min(arr.shape) and max(arr.shape) <= SIDE
                assert arr.min() >= 0 and arr.max() <= 9
