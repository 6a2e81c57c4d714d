"""Confidence intervals: bootstrap over test examples within a run, t-interval across seeds."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats

N_RESAMPLES = 2000
CI_METHOD = "percentile bootstrap over test examples, 2000 resamples, seed 0"


def bootstrap_ci(data: Sequence[np.ndarray], statistic: Callable[..., np.ndarray],
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(value, low, high) of `statistic(*data)` with a paired percentile bootstrap.

    `statistic` must accept an `axis` keyword (vectorised, as scipy.stats.bootstrap asks)."""
    data = [np.asarray(d, dtype=float) for d in data]
    value = float(statistic(*data, axis=-1))
    n = len(data[0])
    if n < 2 or all(np.all(d == d[0]) for d in data):
        return value, value, value
    res = stats.bootstrap(tuple(data), statistic, paired=True, vectorized=True, n_resamples=N_RESAMPLES,
                          confidence_level=confidence, method="percentile",
                          random_state=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return value, min(lo, value), max(hi, value)


def mean_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def ratio_stat(num: np.ndarray, den: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(num, axis=axis) / np.maximum(np.sum(den, axis=axis), 1e-12)


def sum_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(x, axis=axis)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if n == 0:
        return float("nan"), float("nan")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Across seeds: mean, sample std and a Student-t interval for the mean."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean()) if len(v) else float("nan")
    if len(v) < 2:
        return {"mean": mean, "std": 0.0, "low": mean, "high": mean, "n": len(v)}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * std / np.sqrt(len(v)))
    return {"mean": mean, "std": std, "low": mean - half, "high": mean + half, "n": len(v)}
