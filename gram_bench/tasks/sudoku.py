"""Sudoku-Extreme and unconditional Sudoku generation (REFERENCE.md section 3).

**Sources.** `source=csv` reads the public Sudoku-Extreme files (`train.csv`, `test.csv`
with header `source,question,answer,rating`; question and answer are 81-character
row-major strings, `.` or `0` = blank) from `task.data_dir` or, when that is empty, from
the directory in the environment variable `GRAM_BENCH_SUDOKU_DIR`. `source=generated`
draws puzzles with a unique solution from the offline generator
(`gram_bench.tasks.sudoku_solver`), puzzle i from the seed and i alone, rated by the
solver's backtrack count and kept when the rating is at least `task.min_rating`.

**Protocol (HRM/TRM).** Training uses `task.train_puzzles` (1,000) puzzles chosen by a seeded
permutation of the train file's rows (the chosen row indices are stored as
`train_rows.npy`) and `task.augmentations` (1,000) validity-preserving variants of each,
generated on the fly from a seeded parameter table: transpose (p=0.5), a permutation of the
bands and of the rows within each band, of the stacks and of the columns within each stack,
and a permutation of the digits 1-9. Variant 0 is the puzzle itself, so an epoch is
train_puzzles x (augmentations + 1) examples. The test split is the test file, not
augmented, or a seeded subset of `task.test_limit` rows.

**Malformed rows** (a wrong number of fields, a string that is not 81 characters of digits
and blanks, an answer with a blank, an answer that breaks a Sudoku rule or contradicts a
given of its question, a rating that is not an integer) are never trained on: with
`task.bad_rows=skip` (default) they are left out, counted in the manifest with their line
numbers, and replaced by the next rows of the seeded order; with `bad_rows=error` the first
one stops the build with its file and line.

Tokens: 0 pad, 1 blank, digits 1-9 -> 2..10 (vocabulary 11, length 81). Accuracy is the
exact match of all 81 cells (`exact_*`) and, separately, constraint validity (`accuracy_*`:
every row, column and box holds 1-9 once and every given is kept).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from gram_bench.core.io import sha256_file
from gram_bench.tasks import TASKS
from gram_bench.tasks.base import EvalSet, Layout, Task, TaskConfig, TrainSet, check_source_fields
from gram_bench.tasks.sudoku_csv import (UNITS, CsvRows, count_data_rows, csv_dir, pick_rows, rating_summary,
                                         take_rows)

BLANK, DIGIT0 = 1, 2  # token of a blank cell, token of digit 1
VOCAB = 11
GENERATED_TEST_DEFAULT = 1000  # test puzzles of the generated source when test_limit is 0

PERM3 = np.array(list(itertools.permutations(range(3))), dtype=np.int64)  # [6, 3]
N_AUG_PARAMS = 18  # transpose, band perm, 3 row perms, stack perm, 3 column perms, 9 digits


# ----------------------------------------------------------------------------- augmentation


def augmentation_params(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 18] uint8: transpose flag, band perm, 3 row-in-band perms, stack perm, 3
    column-in-stack perms (each an index into the 6 permutations of 3), digit perm (9)."""
    out = np.empty((n, N_AUG_PARAMS), dtype=np.uint8)
    out[:, 0] = rng.random(n) < 0.5
    out[:, 1:9] = rng.integers(0, 6, size=(n, 8))
    out[:, 9:] = np.argsort(rng.random((n, 9)), axis=1)
    return out


def identity_params(n: int) -> np.ndarray:
    out = np.zeros((n, N_AUG_PARAMS), dtype=np.uint8)
    out[:, 9:] = np.arange(9)
    return out


def _line_map(perm3: torch.Tensor, outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """[B] outer perm ids, [B, 3] inner perm ids -> [B, 9] source line of each new line: new line
    3k + i comes from old line 3 * outer[k] + inner[k][i]."""
    big = perm3[outer.long()]  # [B, 3]
    small = perm3[inner.long()]  # [B, 3, 3]
    return (3 * big.unsqueeze(-1) + small).reshape(-1, 9)


def cell_maps(params: torch.Tensor) -> torch.Tensor:
    """[B, 18] params -> [B, 81] source cell of each cell of the augmented grid."""
    perm3 = torch.as_tensor(PERM3, device=params.device)
    rows = _line_map(perm3, params[:, 1], params[:, 2:5])
    cols = _line_map(perm3, params[:, 5], params[:, 6:9])
    src = rows.unsqueeze(-1) * 9 + cols.unsqueeze(-2)  # [B, 9, 9]
    src = torch.where(params[:, 0].bool().view(-1, 1, 1), src.transpose(1, 2), src)
    return src.reshape(-1, 81)


def augment(tokens: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply augmentations to token grids [B, 81] (tokens: digits 2..10, anything else kept)."""
    moved = tokens.gather(1, cell_maps(params))
    digit_map = torch.arange(VOCAB, device=tokens.device).expand(len(tokens), VOCAB).clone()
    digit_map[:, DIGIT0:] = params[:, 9:].long() + DIGIT0
    return digit_map.gather(1, moved)


def invert(tokens: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The inverse of `augment` with the same params."""
    inv_digit = torch.arange(VOCAB, device=tokens.device).expand(len(tokens), VOCAB).clone()
    inv_digit.scatter_(1, params[:, 9:].long() + DIGIT0,
                       torch.arange(DIGIT0, VOCAB, device=tokens.device).expand(len(tokens), 9).contiguous())
    undigit = inv_digit.gather(1, tokens)
    out = torch.empty_like(tokens)
    return out.scatter_(1, cell_maps(params), undigit)


class AugmentedTrainSet(TrainSet):
    """Puzzles x (augmentations + 1) examples; example k is puzzle k // A under the k % A-th
    row of a seeded parameter table (row 0 of every puzzle = the identity)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, params: torch.Tensor):
        super().__init__(inputs, targets, torch.zeros(len(inputs), dtype=torch.long))
        self.params = params  # [P, A, 18] uint8

    def __len__(self) -> int:
        return self.params.shape[0] * self.params.shape[1]

    def to(self, device: torch.device) -> "AugmentedTrainSet":
        return AugmentedTrainSet(self.inputs.to(device), self.targets.to(device), self.params.to(device))

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        A = self.params.shape[1]
        base, variant = idx // A, idx % A
        p = self.params[base, variant]
        return {"inputs": augment(self.inputs[base], p), "targets": augment(self.targets[base], p),
                "puzzle_ids": self.puzzle_ids[base]}


# ----------------------------------------------------------------------------- verifier (torch)


def verify_grids(inputs: torch.Tensor | None, preds: torch.Tensor) -> dict[str, torch.Tensor]:
    """preds [B, N, 81] tokens (inputs [B, 81] or None) -> valid, keeps_clues, conflicts [B, N].

    `conflicts` counts pairs of equal digits within a row, column or box plus cells that are
    not digits; `valid` = no conflict, every cell a digit, every given kept."""
    dev = preds.device
    digit = (preds >= DIGIT0) & (preds < DIGIT0 + 9)
    onehot = torch.nn.functional.one_hot((preds - DIGIT0).clamp(0, 8), 9) * digit.unsqueeze(-1)  # [B, N, 81, 9]
    member = torch.zeros(81, 27, device=dev)
    member[torch.as_tensor(UNITS, device=dev).reshape(-1), torch.arange(27, device=dev).repeat_interleave(9)] = 1
    per_unit = torch.einsum("bncd,cu->bnud", onehot.float(), member)  # [B, N, 27, 9]
    conflicts = (per_unit * (per_unit - 1) / 2).sum((-1, -2)).round().long() + (~digit).sum(-1)
    if inputs is not None:
        given = (inputs >= DIGIT0).unsqueeze(1)
        keeps = (~given | (preds == inputs.unsqueeze(1))).all(-1)
    else:
        keeps = torch.ones(preds.shape[:2], dtype=torch.bool, device=dev)
    return {"valid": (conflicts == 0) & keeps, "keeps_clues": keeps, "conflicts": conflicts}


# ----------------------------------------------------------------------------- tasks


class SudokuTask(Task):
    """What both Sudoku tasks share: 81 cells, vocabulary 11, and the dataset name."""

    def dir_name(self) -> str:
        """`<name>` (the real data) or `<name>-gen` (the offline generator), plus a config hash
        when any other setting differs from its default: generated data never shares a name
        with the real benchmark."""
        base = self.name if self.cfg.source == "csv" else f"{self.name}-gen"
        return self.hashed_name(base, self.Config(source=self.cfg.source))

    @property
    def layout(self) -> Layout:
        return Layout(in_len=81, out_len=81, vocab=VOCAB)


@TASKS.register("sudoku-extreme")
class SudokuExtreme(SudokuTask):
    name = "sudoku-extreme"

    @dataclass(frozen=True)
    class Config(TaskConfig):
        source: str = "csv"  # csv (the real files) | generated (offline generator)
        data_dir: str = field(default="", metadata={"identity": False})  # holds train.csv, test.csv
        train_puzzles: int = 1000
        augmentations: int = 1000  # variants per training puzzle, besides the puzzle itself
        test_limit: int = 0  # csv: 0 = the whole test file; generated: 0 = 1,000 puzzles
        min_rating: int = 0  # generated source: minimum backtrack count of a kept puzzle
        seed: int = 0  # row subsets, generated puzzles, augmentation table
        bad_rows: str = "skip"  # skip | error

        def check(self) -> None:
            if self.source not in ("csv", "generated"):
                raise ValueError(f"source must be csv or generated, got '{self.source}'")
            if self.bad_rows not in ("skip", "error"):
                raise ValueError(f"bad_rows must be skip or error, got '{self.bad_rows}'")
            if self.train_puzzles < 1:
                raise ValueError("train_puzzles must be at least 1")
            for name in ("augmentations", "test_limit", "min_rating", "seed"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be non-negative")
            check_source_fields(self, {"data_dir": "csv", "bad_rows": "csv", "min_rating": "generated"})

    @classmethod
    def model_hints(cls, cfg: "SudokuExtreme.Config") -> dict:
        return {"beta": 0.1}

    # ---- data
    def build_arrays(self, progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict]:
        c = self.cfg
        if c.source == "generated":
            from gram_bench.tasks.sudoku_solver import generate

            n_test = c.test_limit or GENERATED_TEST_DEFAULT
            q, a, r = generate(c.seed, c.train_puzzles + n_test, c.min_rating, progress=progress)
            q, a = q.astype(np.uint8), a.astype(np.uint8)
            train = CsvRows(np.arange(c.train_puzzles), q[:c.train_puzzles], a[:c.train_puzzles],
                            r[:c.train_puzzles].astype(np.int64))
            test = CsvRows(np.arange(n_test), q[c.train_puzzles:], a[c.train_puzzles:],
                           r[c.train_puzzles:].astype(np.int64))
            counts: dict = {"source": "generated", "min_rating": c.min_rating}
        else:
            d = csv_dir(c.data_dir)
            n_train_rows, n_test_rows = count_data_rows(d / "train.csv"), count_data_rows(d / "test.csv")
            train = pick_rows(d / "train.csv", n_train_rows, c.train_puzzles, c.seed, c.bad_rows, progress)
            test = pick_rows(d / "test.csv", n_test_rows, c.test_limit, c.seed + 1, c.bad_rows, progress)

            counts = {"source": "csv", "csv_dir": str(d.resolve()), "train_file_rows": n_train_rows,
                      "test_file_rows": n_test_rows, "train_sha256": sha256_file(d / "train.csv"),
                      "test_sha256": sha256_file(d / "test.csv")}
            bad = train.bad + test.bad
            counts["skipped_rows"] = len(bad)
            if bad:
                counts["skipped_first"] = bad[:10]
        seen = {row.tobytes() for row in train.questions}
        overlap = np.array([row.tobytes() in seen for row in test.questions], dtype=bool)
        if overlap.any():
            test = take_rows(test, np.nonzero(~overlap)[0])
        counts.update({"train_puzzles": len(train.rows), "test_puzzles": len(test.rows),
                       "test_in_train_dropped": int(overlap.sum()),
                       "train_rating": rating_summary(train.ratings), "test_rating": rating_summary(test.ratings),
                       "mean_givens_test": round(float((test.questions > 0).sum(1).mean()), 2)})
        arrays = {"train_rows": train.rows, "train_questions": train.questions, "train_answers": train.answers,
                  "train_ratings": train.ratings, "test_rows": test.rows, "test_questions": test.questions,
                  "test_answers": test.answers, "test_ratings": test.ratings}
        return arrays, counts

    @staticmethod
    def _tokens(grids: np.ndarray) -> torch.Tensor:
        g = torch.from_numpy(grids.astype(np.int64))
        return torch.where(g == 0, BLANK, g + DIGIT0 - 1)

    def train_set(self) -> TrainSet:
        a = self.arrays()
        x, y = self._tokens(a["train_questions"]), self._tokens(a["train_answers"])
        A = self.cfg.augmentations + 1
        params = augmentation_params(np.random.default_rng([self.cfg.seed, 7]), len(x) * A).reshape(len(x), A, -1)
        params[:, 0] = identity_params(len(x))
        return AugmentedTrainSet(x, y, torch.from_numpy(params))

    def eval_set(self, split: str = "test") -> EvalSet:
        a = self.arrays()
        ids = a[f"{split}_rows"]
        return EvalSet(ids, self._tokens(a[f"{split}_questions"]), torch.zeros(len(ids), dtype=torch.long),
                       self._tokens(a[f"{split}_answers"]), np.ones(len(ids), dtype=np.int64))

    def reference_keys(self, split: str) -> list[set[bytes]]:
        return [{row} for row in self.canonical(self.eval_set(split).targets.numpy())]

    def verify(self, inputs: torch.Tensor, preds: torch.Tensor, ids: np.ndarray | None = None
               ) -> dict[str, torch.Tensor]:
        return verify_grids(inputs, preds)


HASH_WEIGHTS = torch.from_numpy(np.random.default_rng(20260519).integers(1, 2 ** 62, size=81, dtype=np.int64) | 1)


def board_hash(preds: torch.Tensor) -> torch.Tensor:
    """[..., 81] tokens -> [...] int64 hash (a random linear form mod 2^64): equal boards, equal
    hashes; two different boards collide with probability about 2^-62."""
    return (preds.long() * HASH_WEIGHTS.to(preds.device)).sum(-1)


@TASKS.register("sudoku-uncond")
class SudokuUncond(SudokuTask):
    """Unconditional generation of complete Sudoku boards: the input is an all-blank board and
    the target a full solution. Metrics: `validity` (every row, column and box holds 1-9 once)
    and `uniqueness` (distinct valid boards / valid boards) over all generated boards, plus
    `novelty` (valid boards that are not training boards / valid boards).

    The eval set is `task.eval_inputs` blank boards; with N samples each, K = eval_inputs x N
    boards are generated (100,000 at the paper profile: 5,000 x 20)."""

    name = "sudoku-uncond"

    @dataclass(frozen=True)
    class Config(TaskConfig):
        source: str = "csv"  # csv: answers of train.csv rows | generated: random complete grids
        data_dir: str = field(default="", metadata={"identity": False})
        train_boards: int = 50000
        eval_inputs: int = 5000
        seed: int = 0
        bad_rows: str = "skip"

        def check(self) -> None:
            if self.source not in ("csv", "generated"):
                raise ValueError(f"source must be csv or generated, got '{self.source}'")
            if self.bad_rows not in ("skip", "error"):
                raise ValueError(f"bad_rows must be skip or error, got '{self.bad_rows}'")
            for name in ("train_boards", "eval_inputs"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be at least 1")
            if self.seed < 0:
                raise ValueError("seed must be non-negative")
            check_source_fields(self, {"data_dir": "csv", "bad_rows": "csv"})

    @classmethod
    def model_hints(cls, cfg: "SudokuUncond.Config") -> dict:
        return {"beta": 0.05}

    def build_arrays(self, progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict]:
        c = self.cfg
        if c.source == "generated":
            from gram_bench.tasks.sudoku_solver import random_full_grid

            boards = []
            for i in range(c.train_boards):
                boards.append(random_full_grid(np.random.default_rng([c.seed, i])))
                if progress and (i + 1) % 500 == 0:
                    progress(i + 1, c.train_boards)
            grids = np.stack(boards).astype(np.uint8)
            counts: dict = {"source": "generated"}
            rows = np.arange(len(grids))
        else:
            d = csv_dir(c.data_dir)
            n_rows = count_data_rows(d / "train.csv")
            picked = pick_rows(d / "train.csv", n_rows, c.train_boards, c.seed, c.bad_rows, progress)
            grids, rows = picked.answers, picked.rows

            counts = {"source": "csv", "csv_dir": str(d.resolve()), "train_sha256": sha256_file(d / "train.csv"),
                      "skipped_rows": len(picked.bad)}
        _, first = np.unique(grids, axis=0, return_index=True)
        first = np.sort(first)
        counts.update({"train_boards": len(first), "duplicate_boards_dropped": len(grids) - len(first)})
        return {"train_rows": rows[first], "train_boards": grids[first]}, counts

    def _boards(self) -> torch.Tensor:
        g = torch.from_numpy(self.arrays()["train_boards"].astype(np.int64))
        return g + DIGIT0 - 1

    def train_set(self) -> TrainSet:
        y = self._boards()
        return TrainSet(torch.full_like(y, BLANK), y, torch.zeros(len(y), dtype=torch.long))

    def eval_set(self, split: str = "test") -> EvalSet:
        """`eval_inputs` blank boards; the stored target (the first training board) is only a
        placeholder: generation has no reference answer, so `exact_*` is not meaningful."""
        n = self.cfg.eval_inputs
        y = self._boards()[:1].expand(n, 81)
        return EvalSet(np.arange(n), torch.full((n, 81), BLANK, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                       y.clone(), np.zeros(n, dtype=np.int64))

    def verify(self, inputs: torch.Tensor, preds: torch.Tensor, ids: np.ndarray | None = None
               ) -> dict[str, torch.Tensor]:
        """valid, conflicts, board_hash and in_train [B, N]."""
        out = verify_grids(None, preds)
        out.pop("keeps_clues")
        h = board_hash(preds)
        if not hasattr(self, "_train_hashes"):
            self._train_hashes = board_hash(self._boards())
        out["board_hash"] = h
        out["in_train"] = torch.isin(h, self._train_hashes.to(h.device))
        return out
