"""N-Queens completion (REFERENCE.md section 3).

All solutions of the n x n board by backtracking; each puzzle is a solution with k queens
removed (k in {n-3, n-2, n-1}, i.e. 1 to 3 queens kept: {5,6,7} for n=8 and {7,8,9} for
n=10, as the paper); inputs deduplicated; 85:15 split by unique input with a seeded
shuffle (train = floor(0.85 U)); every input stores all its valid completions.
Tokens: n*n cells row-major, 0 pad, 1 empty, 2 queen.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from gram_bench.tasks import TASKS
from gram_bench.tasks.base import EvalSet, Layout, Task, TaskConfig, TrainSet

EMPTY, QUEEN = 1, 2


def solve_all(n: int) -> list[tuple[int, ...]]:
    """Every placement as a tuple of column indices per row, in lexicographic order."""
    out: list[tuple[int, ...]] = []
    cols: list[int] = []

    def place(r: int, used: int, d1: int, d2: int) -> None:
        if r == n:
            out.append(tuple(cols))
            return
        for c in range(n):
            if used >> c & 1 or d1 >> (r + c) & 1 or d2 >> (r - c + n - 1) & 1:
                continue
            cols.append(c)
            place(r + 1, used | 1 << c, d1 | 1 << (r + c), d2 | 1 << (r - c + n - 1))
            cols.pop()

    place(0, 0, 0, 0)
    return out


def removal_counts(n: int) -> tuple[int, ...]:
    return tuple(k for k in (n - 3, n - 2, n - 1) if k >= 1)


@TASKS.register("nqueens")
class NQueens(Task):
    name = "nqueens"
    name_fields = ("n",)

    @dataclass(frozen=True)
    class Config(TaskConfig):
        n: int = 8
        split_seed: int = 0
        train_fraction: float = 0.85

        def check(self) -> None:
            if not 4 <= self.n <= 12:
                raise ValueError("n must be between 4 and 12")
            if not 0 < self.train_fraction < 1:
                raise ValueError("train_fraction must be in (0, 1)")

    @classmethod
    def model_hints(cls, cfg: "NQueens.Config") -> dict:
        return {"beta": {8: 0.07, 10: 0.045}.get(cfg.n, 0.07)}

    @property
    def layout(self) -> Layout:
        return Layout(in_len=self.cfg.n ** 2, out_len=self.cfg.n ** 2, vocab=3)

    def build_arrays(self, progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict]:
        n, L = self.cfg.n, self.cfg.n ** 2
        sols = solve_all(n)
        boards = np.full((len(sols), L), EMPTY, dtype=np.uint8)
        for i, cols in enumerate(sols):
            boards[i, [r * n + c for r, c in enumerate(cols)]] = QUEEN
        completions: dict[bytes, set[int]] = {}
        pairs = 0
        for si, cols in enumerate(sols):
            cells = [r * n + c for r, c in enumerate(cols)]
            for k in removal_counts(n):
                for removed in itertools.combinations(cells, k):
                    board = boards[si].copy()
                    board[list(removed)] = EMPTY
                    completions.setdefault(board.tobytes(), set()).add(si)
                    pairs += 1
            if progress:
                progress(si + 1, len(sols))
        keys = sorted(completions)  # deterministic order before the seeded shuffle
        perm = np.random.default_rng(self.cfg.split_seed).permutation(len(keys))
        n_train = int(self.cfg.train_fraction * len(keys))
        arrays: dict[str, np.ndarray] = {"solutions": boards}
        counts = {"solutions": len(sols), "pairs": pairs, "unique_inputs": len(keys)}
        for split, idx in (("train", perm[:n_train]), ("test", perm[n_train:])):
            idx = np.sort(idx)
            inputs = np.stack([np.frombuffer(keys[i], dtype=np.uint8) for i in idx])
            sol_lists = [sorted(completions[keys[i]]) for i in idx]
            arrays[f"{split}_ids"] = idx.astype(np.int64)
            arrays[f"{split}_inputs"] = inputs
            arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(s) for s in sol_lists])]).astype(np.int64)
            arrays[f"{split}_completions"] = np.array([s for sl in sol_lists for s in sl], dtype=np.int32)
            counts[f"{split}_inputs"] = len(idx)
            counts[f"{split}_pairs"] = int(arrays[f"{split}_offsets"][-1])
        return arrays, counts

    # ---- splits
    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a = self.arrays()
        return (a[f"{split}_ids"], a[f"{split}_inputs"], a[f"{split}_offsets"],
                a[f"{split}_completions"], a["solutions"])

    def train_set(self) -> TrainSet:
        _, inputs, offsets, comp, sols = self._split("train")
        counts = np.diff(offsets)
        x = np.repeat(inputs, counts, axis=0)
        y = sols[comp]
        return TrainSet(torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64)),
                        torch.zeros(len(x), dtype=torch.long))

    def eval_set(self, split: str = "test") -> EvalSet:
        ids, inputs, offsets, comp, sols = self._split(split)
        first = sols[comp[offsets[:-1]]]
        return EvalSet(ids, torch.from_numpy(inputs.astype(np.int64)), torch.zeros(len(ids), dtype=torch.long),
                       torch.from_numpy(first.astype(np.int64)), np.diff(offsets))

    def completions(self, split: str = "test") -> list[np.ndarray]:
        """All valid completions of every input in `split`, [n_i, L] each."""
        _, _, offsets, comp, sols = self._split(split)
        return [sols[comp[offsets[i]:offsets[i + 1]]] for i in range(len(offsets) - 1)]

    def reference_keys(self, split: str) -> list[set[bytes]]:
        return [set(self.canonical(c)) for c in self.completions(split)]

    # ---- verifier
    def verify(self, inputs: torch.Tensor, preds: torch.Tensor, ids: np.ndarray | None = None
               ) -> dict[str, torch.Tensor]:
        """inputs [B, L], preds [B, N, L] -> valid, keeps_clues, queens, conflicts: [B, N].

        `conflicts` counts attacking queen pairs (rows, columns, both diagonals)."""
        n = self.cfg.n
        dev = preds.device
        q = (preds == QUEEN).float()  # [B, N, L]
        r = torch.arange(n * n, device=dev) // n
        c = torch.arange(n * n, device=dev) % n
        lines = torch.cat([
            torch.nn.functional.one_hot(r, n), torch.nn.functional.one_hot(c, n),
            torch.nn.functional.one_hot(r + c, 2 * n - 1), torch.nn.functional.one_hot(r - c + n - 1, 2 * n - 1),
        ], dim=1).float()  # [L, 6n-2]
        per_line = q @ lines  # [B, N, 6n-2]
        conflicts = (per_line * (per_line - 1) / 2).sum(-1).round().long()
        queens = q.sum(-1).long()
        well_formed = ((preds == EMPTY) | (preds == QUEEN)).all(-1)
        given = (inputs == QUEEN).unsqueeze(1)  # [B, 1, L]
        keeps = (~given | (preds == QUEEN)).all(-1)
        valid = well_formed & keeps & (queens == n) & (conflicts == 0)
        return {"valid": valid, "keeps_clues": keeps, "queens": queens, "conflicts": conflicts}
