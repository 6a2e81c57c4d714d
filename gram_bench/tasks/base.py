"""The Task seam: config, deterministic build with a manifest, token layout, verifier.

Every dataset directory holds `.npy` files and a `manifest.json` with the task config,
counts and the sha256 of every file. `load_arrays` refuses a directory whose manifest or
hashes don't match, naming the file and the command that rebuilds it.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from gram_bench.core.errors import UsageError
from gram_bench.core.identity import identity, identity_of_dict
from gram_bench.core.io import atomic_write_json, sha256_file

MANIFEST_VERSION = 1
_NPY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.npy")  # a file in the dataset directory, nowhere else


def check_source_fields(cfg: Any, read_by: dict[str, str]) -> None:
    """Refuse a field set away from its default when the chosen `source` never reads it
    (`read_by`: field -> the one source that reads it), e.g. a data_dir with the generator."""
    for name, source in read_by.items():
        f = next(f for f in dataclasses.fields(cfg) if f.name == name)
        if getattr(cfg, name) != f.default and cfg.source != source:
            raise ValueError(f"task.{name} is read only by task.source={source}, but task.source={cfg.source}; "
                             f"pass --set task.source={source} too, or drop task.{name}")


@dataclass(frozen=True)
class Layout:
    """Token layout seen by models: input length, output length, shared vocabulary size.

    `image` = (height, width, patch) when the answer is an image of height x width pixel tokens
    (row-major, out_len = height * width): models that support it (`Model.supports_image`)
    read and write it as (height/patch) x (width/patch) patches."""

    in_len: int
    out_len: int
    vocab: int
    n_puzzle_ids: int = 1
    image: tuple[int, int, int] | None = None

    @property
    def n_patches(self) -> int:
        H, W, P = self.image
        return (H // P) * (W // P)


@dataclass
class EvalSet:
    """Test inputs with every valid answer, for accuracy and coverage."""

    ids: np.ndarray  # [U] stable example ids
    inputs: torch.Tensor  # [U, in_len] long
    puzzle_ids: torch.Tensor  # [U] long
    targets: torch.Tensor  # [U, out_len] long, the stored reference answer
    n_solutions: np.ndarray  # [U] number of valid answers (0 = unknown)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray) -> "EvalSet":
        t = torch.as_tensor(idx, dtype=torch.long)
        return EvalSet(self.ids[idx], self.inputs[t], self.puzzle_ids[t], self.targets[t],
                       self.n_solutions[idx])


@dataclass
class TrainSet:
    """Training examples. The runner draws example indices and asks `batch(idx)` for them, so a
    task may generate examples on the fly (e.g. Sudoku's augmentations) by overriding
    `__len__`, `batch` and `to`."""

    inputs: torch.Tensor  # [M, in_len] long
    targets: torch.Tensor  # [M, out_len] long
    puzzle_ids: torch.Tensor  # [M] long

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device: torch.device) -> "TrainSet":
        return TrainSet(self.inputs.to(device), self.targets.to(device), self.puzzle_ids.to(device))

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"inputs": self.inputs[idx], "targets": self.targets[idx], "puzzle_ids": self.puzzle_ids[idx]}


class TaskConfig:
    """Base of every task's frozen `Config` dataclass (the fields are the subclass's)."""

    def check(self) -> None:
        """Raise ValueError naming a bad value or combination of values; called whenever a
        config is resolved. Accepts everything by default."""


class Task(abc.ABC):
    """Base class. Subclasses set `name` and `Config` (a frozen dataclass subclassing
    `TaskConfig`) and implement the abstract methods; every other hook has a default."""

    name: ClassVar[str]
    Config: ClassVar[type[TaskConfig]]
    name_fields: ClassVar[tuple[str, ...]] = ()  # config fields spelled out in the directory name
    images: ClassVar[bool] = False  # are the answers images (`Layout.image`)?

    def __init__(self, cfg: Any, data_root: Path | str = "data"):
        self.cfg = cfg
        self.data_root = Path(data_root)
        self._arrays: dict[str, np.ndarray] | None = None

    # ---- identity
    @classmethod
    def model_hints(cls, cfg: Any) -> dict:
        """Per-task values for model fields left as null (e.g. GRAM's KL weight `beta`)."""
        return {}

    def dir_name(self) -> str:
        """`<name>-<name_fields...>`, e.g. `nqueens-8`; when any other config field differs from
        its default, a short hash of the whole config is appended so that two configurations
        never share (and overwrite) one directory."""
        parts = [self.name] + [str(getattr(self.cfg, f)) for f in self.name_fields]
        return self.hashed_name("-".join(parts), self.Config(**{f: getattr(self.cfg, f) for f in self.name_fields}))

    def hashed_name(self, base: str, default) -> str:
        """`base`, plus `-<hash>` of the config's identity fields when they differ from `default`.
        Fields marked `metadata={"identity": False}` (e.g. where a CSV lies) never count."""
        ident = identity(self.cfg)
        if ident == identity(default):
            return base
        blob = json.dumps(ident, sort_keys=True).encode()
        return f"{base}-{hashlib.sha256(blob).hexdigest()[:8]}"

    @property
    def data_dir(self) -> Path:
        return self.data_root / self.dir_name()

    def build_command(self) -> str:
        sets = " ".join(f"--set task.{k}={v}" for k, v in dataclasses.asdict(self.cfg).items())
        return f"gram-bench data build --task {self.name} {sets} --force"

    # ---- data
    @abc.abstractmethod
    def build_arrays(self, progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict]:
        """Return ({file stem: array}, counts). Must be deterministic in the config."""

    def build(self, force: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
        """Write the dataset directory atomically (temp dir + rename); return the manifest."""
        out = self.data_dir
        if out.exists() and not force:
            return self.verify_files()
        arrays, counts = self.build_arrays(progress)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        try:
            files = {}
            for stem, arr in sorted(arrays.items()):
                p = tmp / f"{stem}.npy"
                np.save(p, arr, allow_pickle=False)
                files[p.name] = sha256_file(p)
            manifest = {
                "manifest_version": MANIFEST_VERSION,
                "task": self.name,
                "config": dataclasses.asdict(self.cfg),
                "counts": counts,
                "files": files,
            }
            atomic_write_json(tmp / "manifest.json", manifest)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    def read_manifest(self) -> dict:
        mpath = self.data_dir / "manifest.json"
        if not mpath.exists():
            raise UsageError(f"No dataset at {self.data_dir}; build it with: {self.build_command()}")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise UsageError(f"{mpath} is not valid JSON; rebuild with: {self.build_command()}") from None
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or not files or not isinstance(manifest.get("counts"), dict) or not all(isinstance(f, str) and _NPY_NAME.fullmatch(f) and isinstance(h, str)
                                                  for f, h in files.items()):
            raise UsageError(f"{mpath} is not a dataset manifest (it needs 'counts', and 'files' mapping .npy names in "
                             f"the directory to sha256 digests); rebuild with: {self.build_command()}")
        if manifest.get("task") != self.name or identity_of_dict(type(self.cfg), manifest.get("config")) != identity(self.cfg):
            raise UsageError(f"{mpath} was built for another config ({str(manifest.get('config'))[:300]}); "
                             f"rebuild with: {self.build_command()}")
        return manifest

    def verify_files(self) -> dict:
        manifest = self.read_manifest()
        for fname, digest in manifest["files"].items():
            p = self.data_dir / fname
            if not p.exists():
                raise UsageError(f"{p} is missing; rebuild with: {self.build_command()}")
            if sha256_file(p) != digest:
                raise UsageError(f"{p} does not match the sha256 in its manifest; rebuild with: "
                                 f"{self.build_command()}")
        return manifest

    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            manifest = self.verify_files()
            out = {}
            for fname in manifest["files"]:
                try:
                    out[fname[:-4]] = np.load(self.data_dir / fname, allow_pickle=False)
                except (ValueError, OSError, EOFError) as e:
                    raise UsageError(f"{self.data_dir / fname} cannot be read ({e}); rebuild with: "
                                     f"{self.build_command()}") from None
            self._arrays = out
        return self._arrays

    # ---- the seam used by the runner
    @property
    @abc.abstractmethod
    def layout(self) -> Layout:
        """Input/output length, vocabulary, number of puzzle ids, image shape."""

    @abc.abstractmethod
    def train_set(self) -> TrainSet:
        """The training examples."""

    @abc.abstractmethod
    def eval_set(self, split: str = "test") -> EvalSet:
        """The test inputs of `split`, with their stored targets and number of valid answers."""

    @abc.abstractmethod
    def verify(self, inputs: torch.Tensor, preds: torch.Tensor, ids: np.ndarray | None = None
               ) -> dict[str, torch.Tensor]:
        """inputs [B, in_len], preds [B, N, out_len] -> integer fields [B, N]; must include `valid`.
        `ids` are the eval rows' example ids, for tasks whose rows need more than their tokens
        (e.g. ARC: which augmentation to invert)."""

    def extra_metrics(self, records: list[dict]) -> dict[str, dict]:
        """Task-level metrics over groups of records (e.g. ARC's pass@k over augmented views of
        one test input), each {value, ci_low, ci_high, n}; computed from the records alone."""
        return {}

    def write_artifacts(self, eval_dir: Path, name: str, records: list[dict]) -> list[Path]:
        """Extra files an evaluation leaves beside eval/<name>.json (e.g. ARC's submission)."""
        return []

    def canonical(self, preds: np.ndarray) -> list[bytes]:
        """[M, out_len] -> a hashable key per answer; equal keys = the same solution."""
        return [row.astype(np.uint8).tobytes() for row in preds]

    def reference_keys(self, split: str) -> list[set[bytes]] | None:
        """Canonical keys of every valid answer per eval input, when the task knows them."""
        return None
