"""Graph 3-coloring with every solution (REFERENCE.md section 3).

Erdos-Renyi graphs G(n, p) drawn from a seeded generator, deduplicated as labelled graphs,
kept only when 3-colorable. Every valid 3-coloring is enumerated and canonicalised under
color permutation (colors relabelled in order of first appearance, so node 0 has color 0),
so a coloring and its relabelings count once. The first `n_train + n_test` kept graphs are
split by a seeded shuffle: train and test share no graph.

Edge probability `p` is not stated by the paper. The default is 0.4 for 8 nodes and 0.3 for
10 nodes, because those reproduce the paper's Table 1 ceilings: a deterministic model's
coverage is at most the mean of 1 / (number of solutions), which is 19.6% at n=8, p=0.4
(paper: 19.9-22.3% for the deterministic baselines) and 8.2% at n=10, p=0.3 (paper:
6.7-8.9%), while p=0.4 at n=10 would give 25.6%. Any p can be set with `--set task.p=...`.

Tokens: input = strict upper triangle of the adjacency matrix, row-major, n(n-1)/2 tokens
(0 pad, 1 no edge, 2 edge); output = n tokens, color c -> c + 3 (3, 4, 5), vocabulary 6.
A conflict is an edge whose two ends share a color or have a token that is not a color.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from gram_bench.core.errors import UsageError
from gram_bench.tasks import TASKS
from gram_bench.tasks.base import EvalSet, Layout, Task, TaskConfig, TrainSet

NO_EDGE, EDGE = 1, 2
COLOR0, N_COLORS = 3, 3
PAPER_SIZES = {8: (7002, 255), 10: (13465, 192)}
DEFAULT_P = {8: 0.4, 10: 0.3}
DRAW_BATCH = 4096  # graphs drawn per generator call; part of the deterministic recipe


def canonical_colorings(n: int, k: int = N_COLORS) -> np.ndarray:
    """Every coloring of n nodes with at most k colors in first-appearance form, [M, n] int8,
    in lexicographic order (M = S(n,1) + ... + S(n,k), Stirling numbers of the second kind)."""
    rows = np.zeros((1, 0), dtype=np.int8)
    used = np.zeros(1, dtype=np.int8)  # colors used so far per partial row
    for _ in range(n):
        new_rows, new_used = [], []
        for c in range(k):
            sel = np.nonzero(c <= used)[0]  # reuse a color, or open the next one
            new_rows.append(np.concatenate([rows[sel], np.full((len(sel), 1), c, np.int8)], 1))
            new_used.append(np.maximum(used[sel], c + 1).astype(np.int8))
        rows, used = np.concatenate(new_rows), np.concatenate(new_used)
    order = np.lexsort(rows.T[::-1])
    return rows[order]


def relabel(colors: np.ndarray) -> np.ndarray:
    """Canonical form of colorings [M, n] of tokens: color tokens renamed COLOR0, COLOR0+1, ...
    in order of first appearance; any other token is kept as it is."""
    out = colors.copy()
    for i, row in enumerate(colors):
        seen: dict[int, int] = {}
        for j, t in enumerate(row.tolist()):
            if COLOR0 <= t < COLOR0 + N_COLORS:
                out[i, j] = seen.setdefault(t, COLOR0 + len(seen))
    return out


@TASKS.register("graph-coloring")
class GraphColoring(Task):
    name = "graph-coloring"
    name_fields = ("nodes",)

    @dataclass(frozen=True)
    class Config(TaskConfig):
        nodes: int = 8
        p: float | None = None  # edge probability; null = 0.4 (8 nodes), 0.3 (10 nodes), else 0.4
        n_train: int | None = None  # graphs; null = the paper's 7,002 (8 nodes) / 13,465 (10 nodes)
        n_test: int | None = None  # graphs; null = the paper's 255 / 192
        seed: int = 0

        def check(self) -> None:
            if not 3 <= self.nodes <= 12:
                raise ValueError("nodes must be between 3 and 12")
            if self.p is not None and not 0 < self.p < 1:
                raise ValueError("p must be in (0, 1)")
            if self.nodes not in PAPER_SIZES and (self.n_train is None or self.n_test is None):
                raise ValueError(f"set n_train and n_test for {self.nodes} nodes (the paper only has 8 and 10)")
            for name in ("n_train", "n_test"):
                v = getattr(self, name)
                if v is not None and v < 1:
                    raise ValueError(f"{name} must be at least 1")

    @classmethod
    def model_hints(cls, cfg: "GraphColoring.Config") -> dict:
        return {"beta": {8: 0.5, 10: 0.45}.get(cfg.nodes, 0.5)}

    # ---- resolved settings
    @property
    def p(self) -> float:
        return self.cfg.p if self.cfg.p is not None else DEFAULT_P.get(self.cfg.nodes, 0.4)

    @property
    def sizes(self) -> tuple[int, int]:
        tr, te = PAPER_SIZES.get(self.cfg.nodes, (None, None))
        return (self.cfg.n_train if self.cfg.n_train is not None else tr,
                self.cfg.n_test if self.cfg.n_test is not None else te)

    @property
    def n_edges(self) -> int:
        return self.cfg.nodes * (self.cfg.nodes - 1) // 2

    @property
    def layout(self) -> Layout:
        return Layout(in_len=self.n_edges, out_len=self.cfg.nodes, vocab=COLOR0 + N_COLORS)

    # ---- data
    def build_arrays(self, progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict]:
        n, E = self.cfg.nodes, self.n_edges
        n_train, n_test = self.sizes
        need = n_train + n_test
        cols = canonical_colorings(n)
        iu = np.triu_indices(n, 1)
        same = (cols[:, iu[0]] == cols[:, iu[1]]).astype(np.float32)  # [M, E]
        rng = np.random.default_rng(self.cfg.seed)
        seen: set[bytes] = set()
        graphs: list[np.ndarray] = []
        sol_lists: list[np.ndarray] = []
        drawn = colorable = 0
        max_draws = max(1000 * need, 100_000)
        while len(graphs) < need:
            if drawn >= max_draws:
                raise UsageError(f"Only {len(graphs)} of {need} 3-colorable graphs found in {drawn:,} draws at "
                                 f"p={self.p}; lower task.p or ask for fewer graphs.")
            adj = (rng.random((DRAW_BATCH, E)) < self.p).astype(np.uint8)
            ok = (same @ adj.T.astype(np.float32)) == 0  # [M, DRAW_BATCH]: coloring m is proper on graph j
            drawn += DRAW_BATCH
            for j in np.nonzero(ok.any(0))[0]:
                colorable += 1
                key = adj[j].tobytes()
                if key in seen:
                    continue
                seen.add(key)
                graphs.append(adj[j])
                sol_lists.append(np.nonzero(ok[:, j])[0])
                if len(graphs) == need:
                    break
            if progress:
                progress(len(graphs), need)
        perm = np.random.default_rng(self.cfg.seed + 1).permutation(need)
        arrays: dict[str, np.ndarray] = {}
        n_sol = np.array([len(s) for s in sol_lists])
        counts = {"graphs": need, "p": self.p, "mean_edges": round(float(np.mean([g.sum() for g in graphs])), 3),
                  "mean_solutions": round(float(n_sol.mean()), 3), "max_solutions": int(n_sol.max())}
        for split, idx in (("train", perm[n_test:]), ("test", perm[:n_test])):
            idx = np.sort(idx)
            arrays[f"{split}_ids"] = idx.astype(np.int64)
            arrays[f"{split}_inputs"] = (np.stack([graphs[i] for i in idx]) + NO_EDGE).astype(np.uint8)
            arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum(n_sol[idx])]).astype(np.int64)
            arrays[f"{split}_solutions"] = cols[np.concatenate([sol_lists[i] for i in idx])].astype(np.uint8)
            counts[f"{split}_graphs"] = len(idx)
            counts[f"{split}_solutions"] = int(arrays[f"{split}_offsets"][-1])
        return arrays, counts

    # ---- splits
    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a = self.arrays()
        return a[f"{split}_ids"], a[f"{split}_inputs"], a[f"{split}_offsets"], a[f"{split}_solutions"]

    def train_set(self) -> TrainSet:
        """Every (graph, canonical coloring) pair, as N-Queens trains on every completion."""
        _, inputs, offsets, sols = self._split("train")
        x = np.repeat(inputs, np.diff(offsets), axis=0)
        y = sols.astype(np.int64) + COLOR0
        return TrainSet(torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y),
                        torch.zeros(len(x), dtype=torch.long))

    def eval_set(self, split: str = "test") -> EvalSet:
        ids, inputs, offsets, sols = self._split(split)
        first = sols[offsets[:-1]].astype(np.int64) + COLOR0
        return EvalSet(ids, torch.from_numpy(inputs.astype(np.int64)), torch.zeros(len(ids), dtype=torch.long),
                       torch.from_numpy(first), np.diff(offsets))

    def completions(self, split: str = "test") -> list[np.ndarray]:
        """Every canonical coloring of every graph in `split` as output tokens, [n_i, nodes] each."""
        _, _, offsets, sols = self._split(split)
        return [sols[offsets[i]:offsets[i + 1]].astype(np.int64) + COLOR0 for i in range(len(offsets) - 1)]

    def canonical(self, preds: np.ndarray) -> list[bytes]:
        return [row.astype(np.uint8).tobytes() for row in relabel(np.asarray(preds))]

    def reference_keys(self, split: str) -> list[set[bytes]]:
        return [set(self.canonical(c)) for c in self.completions(split)]

    # ---- verifier
    def verify(self, inputs: torch.Tensor, preds: torch.Tensor, ids: np.ndarray | None = None
               ) -> dict[str, torch.Tensor]:
        """inputs [B, E], preds [B, N, n] -> valid, colored, conflicts: [B, N].

        `conflicts` counts edges whose ends share a color or are not both colored; `valid`
        means every node is colored and there is no conflict."""
        n = self.cfg.nodes
        u, v = (torch.as_tensor(a, device=preds.device) for a in np.triu_indices(n, 1))
        colored = (preds >= COLOR0) & (preds < COLOR0 + N_COLORS)  # [B, N, n]
        edge = (inputs == EDGE).unsqueeze(1)  # [B, 1, E]
        bad = edge & ((preds[..., u] == preds[..., v]) | ~colored[..., u] | ~colored[..., v])
        conflicts = bad.sum(-1)
        return {"valid": colored.all(-1) & (conflicts == 0), "colored": colored.all(-1), "conflicts": conflicts}
