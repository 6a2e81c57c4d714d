"""Image metrics (DESIGN.md section 6): Inception Score and Frechet distance with a named
feature network, and mode-collapse diagnostics.

The feature network `mnistnet` is a small CNN the harness trains on the task's real training
images (`train_mnistnet`, stored with the dataset, its held-out accuracy in the manifest): its
class probabilities give `is_mnistnet` and its penultimate features give `fid_mnistnet`.
Scores from different feature networks are not comparable, so every metric carries the
network's name (`fid_inception` uses an ImageNet Inception network from a local TorchScript
file the user gives).

- IS = exp(E_x KL(p(y | x) || p(y))), p(y) the mean of p(y | x) over the sample set.
- FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2), Gaussians fitted
  to the two feature sets; the matrix square root by symmetric eigendecompositions.
- 95% intervals: percentile bootstrap over groups of samples (the eval's per-input records),
  the reference statistics held fixed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGE_RESAMPLES = 200  # bootstrap resamples for IS/FID (each needs an eigendecomposition)
IMAGE_CI_METHOD = f"percentile bootstrap over eval inputs (groups of samples), {IMAGE_RESAMPLES} resamples, seed 0"


# ----------------------------------------------------------------------------- closed forms


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and covariance [F, F] (ddof=1) of features [M, F], in float64."""
    f = np.asarray(feats, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """The Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2), squared."""
    s1 = _sqrt_psd(cov1)
    inner = np.linalg.eigvalsh(s1 @ cov2 @ s1)
    tr_sqrt = float(np.sqrt(np.clip(inner, 0, None)).sum())
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)
    return max(d, 0.0)


def fid(feats: np.ndarray, ref_mu: np.ndarray, ref_cov: np.ndarray) -> float:
    mu, cov = gaussian_stats(feats)
    return frechet_distance(mu, cov, ref_mu, ref_cov)


def inception_score(probs: np.ndarray) -> float:
    """exp(mean over samples of KL(p(y | x) || p(y))) for class probabilities [M, C]."""
    p = np.asarray(probs, dtype=np.float64)
    marginal = p.mean(0, keepdims=True)
    kl = (p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(marginal, 1e-12, None)))).sum(1)
    return float(np.exp(kl.mean()))


def grouped_bootstrap(groups: list[np.ndarray], statistic: Callable[[np.ndarray], float],
                      resamples: int = IMAGE_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(value, low, high): `statistic` of all groups' rows concatenated, and a 95% percentile
    bootstrap interval from resampling whole groups with replacement."""
    value = statistic(np.concatenate(groups))
    if len(groups) < 2:
        return value, value, value
    rng = np.random.default_rng(seed)
    stats = [statistic(np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))]))
             for _ in range(resamples)]
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return value, min(float(lo), value), max(float(hi), value)


# ----------------------------------------------------------------------------- diagnostics


def mean_pairwise_hamming(bits: np.ndarray, max_images: int = 2000) -> float:
    """Mean Hamming distance (in pixels) over all pairs of the first `max_images` binary
    images [M, P]: 0 when every image is the same (mode collapse)."""
    x = torch.from_numpy(np.asarray(bits[:max_images], dtype=np.float32))
    m = x.shape[0]
    if m < 2:
        return 0.0
    ones = x.sum(1)
    d = ones[:, None] + ones[None, :] - 2 * (x @ x.T)  # |a xor b| = |a| + |b| - 2 a.b
    return float(d.sum() / (m * (m - 1)))


# ----------------------------------------------------------------------------- over eval records

FeatureFn = Callable[[np.ndarray], np.ndarray]  # images [M, P] in [0, 1] -> features [M, F]


def image_set_metrics(records: list[dict], images: list[np.ndarray],
                      classify: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                      reference: tuple[np.ndarray, np.ndarray], net: str = "mnistnet",
                      other_fids: dict[str, tuple[FeatureFn, np.ndarray, np.ndarray]] | None = None,
                      hash_field: str = "board_hash") -> dict[str, dict]:
    """Metrics of the whole sample set of an eval: `is_<net>` and `fid_<net>` from
    `classify(images) -> (class probabilities, features)` against `reference` (mean, cov of
    the real images' features), `fid_<name>` for each of `other_fids` {name: (features,
    mean, cov)}, `distinct_images` (distinct `hash_field` values) and `hamming_mean`.
    `images` holds each record's samples [N, P]; IS/FID intervals resample whole records."""
    sizes = [len(g) for g in images]
    bits = np.concatenate(images)
    probs, feats = classify(bits.astype(np.float32))
    bounds = np.cumsum([0] + sizes)
    idx = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    n = len(records)

    def metric(vlh):
        return {"value": vlh[0], "ci_low": vlh[1], "ci_high": vlh[2], "n": n, "ci_method": IMAGE_CI_METHOD}

    mu, cov = reference
    out = {
        f"is_{net}": metric(grouped_bootstrap(idx, lambda i: inception_score(probs[i]))),
        f"fid_{net}": metric(grouped_bootstrap(idx, lambda i: fid(feats[i], mu, cov))),
    }
    distinct = len(np.unique(np.concatenate([np.asarray(r[hash_field], dtype=np.int64) for r in records])))
    out["distinct_images"] = {"value": float(distinct), "ci_low": float(distinct), "ci_high": float(distinct),
                              "n": n, "of": int(len(bits))}
    ham = mean_pairwise_hamming(bits)
    out["hamming_mean"] = {"value": ham, "ci_low": ham, "ci_high": ham, "n": n,
                           "pairs_of_first": int(min(len(bits), 2000))}
    for name, (features, omu, ocov) in (other_fids or {}).items():
        f_other = features(bits.astype(np.float32))
        out[f"fid_{name}"] = metric(grouped_bootstrap(idx, lambda i: fid(f_other[i], omu, ocov)))
    return out


# ----------------------------------------------------------------------------- the feature network


class MnistNet(nn.Module):
    """A small MNIST classifier, [B, 1, 28, 28] in [0, 1] -> (logits [B, 10], features [B, 128])."""

    feature_dim = 128

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(64 * 7 * 7, self.feature_dim)
        self.drop = nn.Dropout(0.3)
        self.cls = nn.Linear(self.feature_dim, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = F.relu(self.fc(self.convs(x).flatten(1)))
        return self.cls(self.drop(feats)), feats


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translations by up to 2 pixels with zero fill (training augmentation)."""
    B, _, H, W = x.shape
    dy, dx = torch.randint(-2, 3, (2, B, 1), generator=g)
    padded = F.pad(x, (2, 2, 2, 2))
    rows = (torch.arange(H)[None] + 2 - dy)[:, :, None]  # [B, H, 1]
    cols = (torch.arange(W)[None] + 2 - dx)[:, None, :]  # [B, 1, W]
    return padded[torch.arange(B)[:, None, None], 0, rows, cols].unsqueeze(1)


def train_mnistnet(images: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0, batch_size: int = 128,
                   progress: Callable[[int, int], None] | None = None) -> MnistNet:
    """Train the feature network on real grey-level images [M, 28, 28] uint8 with labels [M]:
    AdamW, a cosine schedule, random shifts of up to 2 pixels; deterministic in `seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = MnistNet()
        g = torch.Generator().manual_seed(seed)
        x_all = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).unsqueeze(1)
        y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        steps_per_epoch = max(1, -(-len(x_all) // batch_size))
        total = epochs * steps_per_epoch
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(total, 1))
        net.train()
        done = 0
        for _ in range(epochs):
            perm = torch.randperm(len(x_all), generator=g)
            for s in range(steps_per_epoch):
                idx = perm[s * batch_size:(s + 1) * batch_size]
                logits, _ = net(_shift(x_all[idx], g))
                loss = F.cross_entropy(logits, y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                if progress and done % 20 == 0:
                    progress(done, total)
        net.eval()
    return net


@torch.no_grad()
def mnistnet_outputs(net: MnistNet, images: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Images [M, 28, 28] in [0, 1] (float) -> (class probabilities [M, 10], features [M, 128])."""
    net.eval()
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)).view(-1, 1, 28, 28)
    probs, feats = [], []
    for s in range(0, len(x), batch_size):
        logits, f = net(x[s:s + batch_size])
        probs.append(torch.softmax(logits.float(), -1).numpy())
        feats.append(f.float().numpy())
    if not probs:
        return np.zeros((0, 10)), np.zeros((0, MnistNet.feature_dim))
    return np.concatenate(probs), np.concatenate(feats)


def net_state_arrays(net: nn.Module, prefix: str = "mnistnet.") -> dict[str, np.ndarray]:
    """A module's state as named arrays (stored with the dataset: no pickle anywhere)."""
    return {prefix + k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def net_from_arrays(arrays: dict[str, np.ndarray], prefix: str = "mnistnet.") -> MnistNet:
    net = MnistNet()
    state = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(prefix)}
    net.load_state_dict(state)
    net.eval()
    return net


@torch.no_grad()
def inception_features(path: str, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """Features of images [M, 28, 28] in [0, 1] from a TorchScript Inception network at `path`
    (for example a pool3 feature extractor): each image is repeated to 3 channels, resized
    bilinearly to 299 x 299 and scaled to [-1, 1]; the network must return [B, F] features."""
    net = torch.jit.load(path, map_location="cpu")
    net.eval()
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)).view(-1, 1, 28, 28)
    out = []
    for s in range(0, len(x), batch_size):
        b = F.interpolate(x[s:s + batch_size], size=(299, 299), mode="bilinear", align_corners=False)
        f = net(b.repeat(1, 3, 1, 1) * 2 - 1)
        if isinstance(f, (tuple, list)):
            f = f[0]
        out.append(f.float().flatten(1).numpy())
    return np.concatenate(out)
