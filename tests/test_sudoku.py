"""Sudoku-Extreme and sudoku-uncond: the CSV format, malformed rows, augmentations, the
verifier, dataset identity and the generation metrics."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from gram_bench.harness.config import resolve
from gram_bench.core.errors import UsageError
from gram_bench.metrics.summary import summarize
from gram_bench.tasks import TASKS
from gram_bench.tasks.sudoku import BLANK, DIGIT0, augment, augmentation_params, invert, verify_grids
from gram_bench.tasks.sudoku_csv import HEADER, grid_string, grids_valid

SudokuExtreme = TASKS.get("sudoku-extreme")
SudokuUncond = TASKS.get("sudoku-uncond")

# a valid complete grid by the shifted-row pattern, and a few more from it by augmentation
BASE = np.array([[(3 * (r % 3) + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)], dtype=np.uint8).ravel()


def solutions(n: int, seed: int = 0) -> np.ndarray:
    p = torch.from_numpy(augmentation_params(np.random.default_rng(seed), n))
    tok = augment(torch.from_numpy(BASE.astype(np.int64) + DIGIT0 - 1).expand(n, 81).contiguous(), p)
    return (tok - DIGIT0 + 1).numpy().astype(np.uint8)


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def good_rows(n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    out = []
    for i, a in enumerate(solutions(n, seed)):
        q = a.copy()
        q[rng.random(81) < 0.6] = 0
        out.append([f"src{i}", grid_string(q), grid_string(a), str(i)])
    return out


def test_base_grid_is_valid_and_rules_are_checked():
    assert grids_valid(BASE[None])[0]
    assert grids_valid(solutions(20)).all()
    bad = BASE.copy()
    bad[[0, 1]] = bad[[1, 0]]  # swapping two cells of a row breaks its columns
    assert not grids_valid(bad[None])[0]


def test_csv_rows_become_the_right_tokens(tmp_path):
    rows = good_rows(12, 0)
    write_csv(tmp_path / "csv" / "train.csv", rows)
    write_csv(tmp_path / "csv" / "test.csv", good_rows(6, 1))
    task = SudokuExtreme(SudokuExtreme.Config(data_dir=str(tmp_path / "csv"), train_puzzles=5, augmentations=2),
                         tmp_path / "data")
    manifest = task.build()
    assert manifest["counts"]["train_puzzles"] == 5 and manifest["counts"]["test_puzzles"] == 6
    chosen = task.arrays()["train_rows"]
    assert len(set(chosen.tolist())) == 5
    ts = task.train_set()
    assert len(ts) == 5 * 3
    for k, row in enumerate(chosen):
        q, a = rows[row][1], rows[row][2]
        want_x = [BLANK if ch == "." else int(ch) + DIGIT0 - 1 for ch in q]
        want_y = [int(ch) + DIGIT0 - 1 for ch in a]
        assert ts.inputs[k].tolist() == want_x and ts.targets[k].tolist() == want_y
    es = task.eval_set()
    assert len(es) == 6 and (es.n_solutions == 1).all()
    assert verify_grids(es.inputs, es.targets.unsqueeze(1))["valid"].all()


def test_row_subset_is_seeded_and_recorded(tmp_path):
    write_csv(tmp_path / "csv" / "train.csv", good_rows(40, 0))
    write_csv(tmp_path / "csv" / "test.csv", good_rows(4, 1))
    picks = []
    for seed in (0, 0, 1):
        task = SudokuExtreme(SudokuExtreme.Config(data_dir=str(tmp_path / "csv"), train_puzzles=8, seed=seed),
                             tmp_path / f"data{len(picks)}")
        task.build()
        picks.append(task.arrays()["train_rows"].tolist())
    assert picks[0] == picks[1] and picks[0] != picks[2]


@pytest.mark.parametrize("break_row, reason", [
    (lambda r: [r[0], r[1][:80], r[2], r[3]], "not 81 characters"),
    (lambda r: [r[0], r[1][:40] + "x" + r[1][41:], r[2], r[3]], "not 81 characters"),
    (lambda r: [r[0], r[1], r[2][:-1] + ".", r[3]], "answer is not 81 digits"),
    (lambda r: [r[0], r[1], r[2]], "3 fields"),
    (lambda r: [r[0], r[1], r[2], "hard"], "not an integer"),
    (lambda r: [r[0], r[1], r[2][1] + r[2][0] + r[2][2:], r[3]], "breaks a Sudoku rule"),
])
def test_malformed_rows_are_reported_with_their_line_and_skipped_or_rejected(tmp_path, break_row, reason):
    rows = good_rows(10, 0)
    rows[3] = break_row(rows[3])  # data row 3 = line 5 (header is line 1)
    d = tmp_path / "csv"
    write_csv(d / "train.csv", rows)
    write_csv(d / "test.csv", good_rows(3, 1))
    task = SudokuExtreme(SudokuExtreme.Config(data_dir=str(d), train_puzzles=10), tmp_path / "data")
    with pytest.raises(UsageError, match="fewer|only 9"):
        task.build()  # 10 asked, 9 well-formed: never filled with the bad row
    task = SudokuExtreme(SudokuExtreme.Config(data_dir=str(d), train_puzzles=9), tmp_path / "data")
    counts = task.build()["counts"]
    assert counts["skipped_rows"] == 1
    assert counts["skipped_first"][0].startswith(f"{d / 'train.csv'}:5:") and reason in counts["skipped_first"][0]
    assert 3 not in task.arrays()["train_rows"].tolist()
    strict = SudokuExtreme(SudokuExtreme.Config(data_dir=str(d), train_puzzles=9, bad_rows="error"),
                           tmp_path / "data2")
    with pytest.raises(UsageError, match=f"train.csv:5: .*{reason}"):
        strict.build()
    assert not (tmp_path / "data2").exists() or not any((tmp_path / "data2").iterdir())


def test_answer_contradicting_its_question_is_rejected(tmp_path):
    rows = good_rows(6, 0)
    q = list(rows[2][1])
    i = next(k for k, ch in enumerate(q) if ch != ".")
    q[i] = str(int(q[i]) % 9 + 1)  # a given that differs from the answer
    rows[2][1] = "".join(q)
    d = tmp_path / "csv"
    write_csv(d / "train.csv", rows)
    write_csv(d / "test.csv", good_rows(3, 1))
    task = SudokuExtreme(SudokuExtreme.Config(data_dir=str(d), train_puzzles=5, bad_rows="error"), tmp_path / "data")
    with pytest.raises(UsageError, match="train.csv:4: the answer contradicts a given"):
        task.build()


def test_bad_header_and_missing_files_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAM_BENCH_SUDOKU_DIR", raising=False)
    task = SudokuExtreme(SudokuExtreme.Config(), tmp_path / "data")
    with pytest.raises(UsageError, match="task.data_dir.*GRAM_BENCH_SUDOKU_DIR.*task.source=generated"):
        task.build()
    d = tmp_path / "csv"
    d.mkdir()
    (d / "train.csv").write_text("question,answer\n")
    (d / "test.csv").write_text("question,answer\n")
    monkeypatch.setenv("GRAM_BENCH_SUDOKU_DIR", str(d))  # the environment variable is honoured
    with pytest.raises(UsageError, match="train.csv:1: the header"):
        SudokuExtreme(SudokuExtreme.Config(), tmp_path / "data").build()


def test_where_the_csv_lies_is_not_part_of_the_identity(tmp_path):
    a = resolve("sudoku-extreme", "trm", "smoke", {"task.source": "csv", "task.data_dir": "/a"})
    b = resolve("sudoku-extreme", "trm", "smoke", {"task.source": "csv", "task.data_dir": "/b"})
    assert a.fingerprint() == b.fingerprint()
    ta, tb = SudokuExtreme(a.task, tmp_path), SudokuExtreme(b.task, tmp_path)
    assert ta.dir_name() == tb.dir_name() == "sudoku-extreme-" + ta.dir_name().rsplit("-", 1)[1]
    assert SudokuExtreme(SudokuExtreme.Config(), tmp_path).dir_name() == "sudoku-extreme"
    gen = SudokuExtreme(SudokuExtreme.Config(source="generated"), tmp_path).dir_name()
    assert gen == "sudoku-extreme-gen"  # generated puzzles never share the benchmark's name


def test_augmentations_keep_solutions_valid_and_puzzle_answer_consistent():
    n = 200
    sols = solutions(n, 3)
    rng = np.random.default_rng(5)
    puzzles = np.where(rng.random((n, 81)) < 0.5, 0, sols)
    x = torch.from_numpy(np.where(puzzles == 0, BLANK, puzzles.astype(np.int64) + DIGIT0 - 1))
    y = torch.from_numpy(sols.astype(np.int64) + DIGIT0 - 1)
    p = torch.from_numpy(augmentation_params(np.random.default_rng(9), n))
    ax, ay = augment(x, p), augment(y, p)
    out = verify_grids(ax, ay.unsqueeze(1))
    assert out["valid"].all()  # the augmented answer is a solution of the augmented puzzle
    assert ((ax == BLANK) == (augment(torch.where(x == BLANK, 0, 1), p) == 0)).all()  # blanks move with cells
    assert torch.equal(invert(ax, p), x) and torch.equal(invert(ay, p), y)
    assert (ax != x).any(dim=1).float().mean() > 0.95  # they really change the puzzles
    assert p[:, 0].float().mean().item() == pytest.approx(0.5, abs=0.1)  # transpose with p = 0.5


def test_augmented_train_set_is_a_pure_function_of_the_index(tmp_path):
    cfg = resolve("sudoku-extreme", "trm", "smoke").task
    task = SudokuExtreme(cfg, tmp_path)
    task.build()
    ts = task.train_set()
    A = cfg.augmentations + 1
    assert len(ts) == cfg.train_puzzles * A
    idx = torch.tensor([0, A, 2 * A + 1, 3 * A + 3, 5])
    b1, b2 = ts.batch(idx), task.train_set().batch(idx)
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    assert torch.equal(b1["inputs"][:2], ts.inputs[:2]) and torch.equal(b1["targets"][:2], ts.targets[:2])
    assert verify_grids(b1["inputs"], b1["targets"].unsqueeze(1))["valid"].all()


def test_verifier_counts_conflicts_and_given_changes():
    y = torch.from_numpy(BASE.astype(np.int64) + DIGIT0 - 1)
    x = torch.where(torch.arange(81) % 3 == 0, y, torch.tensor(BLANK))
    preds = torch.stack([y, y.clone(), y.clone(), y.clone()])
    preds[1, [0, 1]] = preds[1, [1, 0]]  # two columns get a repeated digit; cell 0 is a given
    preds[2, 5] = BLANK  # an unfilled cell
    preds[3, 2] = preds[3, 3]  # one duplicate in row 0, column 2 and box 0
    out = verify_grids(x[None], preds[None])
    assert out["valid"][0].tolist() == [True, False, False, False]
    assert out["keeps_clues"][0].tolist() == [True, False, True, True]
    assert out["conflicts"][0, 0] == 0 and out["conflicts"][0, 1] == 2 and out["conflicts"][0, 2] >= 1
    assert out["conflicts"][0, 3] == 3


def test_uncond_metrics_validity_uniqueness_novelty(tmp_path):
    task = SudokuUncond(SudokuUncond.Config(source="generated", train_boards=12, eval_inputs=3), tmp_path)
    task.build()
    train = task.train_set()
    assert (train.inputs == BLANK).all() and verify_grids(None, train.targets.unsqueeze(1))["valid"].all()
    es = task.eval_set()
    new = torch.from_numpy(solutions(2, 11).astype(np.int64) + DIGIT0 - 1)
    broken = new[0].clone()
    broken[0] = broken[1]
    # input 0: two copies of one new board and a training board; input 1: a broken and another new board
    preds = torch.stack([torch.stack([new[0], new[0], train.targets[0]]), torch.stack([broken, new[1], new[1]]),
                         torch.stack([train.targets[1]] * 3)])
    fields = task.verify(es.inputs, preds)
    assert fields["valid"].tolist() == [[True, True, True], [False, True, True], [True, True, True]]
    assert fields["in_train"].tolist() == [[False, False, True], [False, False, False], [True, True, True]]
    recs = [{"n_solutions": 0, "valid": fields["valid"][i].int().tolist(), "exact": [0, 0, 0],
             "board_hash": fields["board_hash"][i].tolist(), "in_train": fields["in_train"][i].int().tolist(),
             "selected": {"first": 0, "vote": 0}, "distinct_valid": 1, "distinct": 1} for i in range(3)]
    m = summarize(recs, slices=False)
    assert m["validity"]["value"] == pytest.approx(8 / 9)
    # valid boards: new0 x2, train0, new1 x2, train1 x3 -> 4 distinct of 8
    assert m["uniqueness"]["value"] == pytest.approx(4 / 8)
    assert m["uniqueness"]["ci_low"] < 0.5 < m["uniqueness"]["ci_high"]
    assert m["novelty"]["value"] == pytest.approx(4 / 8)


def test_generated_sudoku_is_reproducible_and_unique(tmp_path):
    from gram_bench.tasks.sudoku_solver import count_solutions

    cfg = SudokuExtreme.Config(source="generated", train_puzzles=4, augmentations=1, test_limit=3)
    a, b = SudokuExtreme(cfg, tmp_path / "a"), SudokuExtreme(cfg, tmp_path / "b")
    a.build(), b.build()
    for k in ("train_questions", "test_questions", "test_answers"):
        assert np.array_equal(a.arrays()[k], b.arrays()[k])
    for q, s in zip(a.arrays()["test_questions"], a.arrays()["test_answers"]):
        assert count_solutions(q) == 1 and grids_valid(s[None])[0] and ((q == 0) | (q == s)).all()
