"""Summary metrics (DESIGN.md section 6) recomputed from per-example records."""

from __future__ import annotations

import numpy as np

from gram_bench.metrics.records import SELECTIONS
from gram_bench.metrics.stats import bootstrap_ci, mean_stat, ratio_stat, sum_stat, wilson_interval


NOT_FRACTIONS = ("conflicts", "distinct", "is_", "fid_", "hamming")  # metric name prefixes shown as is


def is_fraction(metric: str) -> bool:
    """Whether a metric is a fraction in [0, 1] (displayed as a percentage)."""
    return not metric.startswith(NOT_FRACTIONS)


def _metric(value_lo_hi: tuple[float, float, float], n: int) -> dict:
    v, lo, hi = value_lo_hi
    return {"value": v, "ci_low": lo, "ci_high": hi, "n": n}


def summarize(records: list[dict], seed: int = 0, slices: bool = True) -> dict[str, dict]:
    """Every metric with a 95% bootstrap CI over examples.

    accuracy_<rule>: the selected sample satisfies every constraint (rule in first, vote,
    lprm, halt, and oracle = any of N valid, i.e. pass@N); exact_<rule>: equals the stored
    target; coverage: mean over inputs of distinct valid answers / number of valid answers;
    coverage_pooled: sum(found) / sum(total); conflicts_total (sum over the test set) and
    conflicts_mean: of the vote-selected answer; conflicts_total_first: of sample 0.
    With `slices`, the same on inputs with 2 or more solutions, suffixed `_multi`."""
    out: dict[str, dict] = {}
    if not records:
        return out
    n = len(records)
    valid = [np.asarray(r["valid"], dtype=bool) for r in records]
    exact = [np.asarray(r["exact"], dtype=bool) for r in records]
    rules = [s for s in SELECTIONS if all(s in r["selected"] for r in records)]
    for rule in rules:
        idx = [r["selected"][rule] for r in records]
        out[f"accuracy_{rule}"] = _metric(bootstrap_ci([np.array([v[i] for v, i in zip(valid, idx)])],
                                                       mean_stat, seed=seed), n)
        out[f"exact_{rule}"] = _metric(bootstrap_ci([np.array([e[i] for e, i in zip(exact, idx)])],
                                                    mean_stat, seed=seed), n)
    out["accuracy_oracle"] = _metric(bootstrap_ci([np.array([v.any() for v in valid])], mean_stat, seed=seed), n)
    out["exact_oracle"] = _metric(bootstrap_ci([np.array([e.any() for e in exact])], mean_stat, seed=seed), n)
    out["sample_validity"] = _metric(bootstrap_ci([np.array([v.mean() for v in valid])], mean_stat, seed=seed), n)
    total = np.array([r["n_solutions"] for r in records], dtype=float)
    if (total > 0).all():
        found = np.array([r["distinct_valid"] for r in records], dtype=float)
        out["coverage"] = _metric(bootstrap_ci([found / total], mean_stat, seed=seed), n)
        out["coverage_pooled"] = _metric(bootstrap_ci([found, total], ratio_stat, seed=seed), n)
    if "conflicts" in records[0]:
        c = np.array([r["conflicts"][r["selected"]["vote"]] for r in records], dtype=float)
        out["conflicts_total"] = _metric(bootstrap_ci([c], sum_stat, seed=seed), n)
        out["conflicts_mean"] = _metric(bootstrap_ci([c], mean_stat, seed=seed), n)
        c1 = np.array([r["conflicts"][0] for r in records], dtype=float)
        out["conflicts_total_first"] = _metric(bootstrap_ci([c1], sum_stat, seed=seed), n)
    if "board_hash" in records[0]:
        out.update(generation_metrics(records, seed))
    out["distinct_samples"] = _metric(bootstrap_ci([np.array([r["distinct"] for r in records], dtype=float)],
                                                   mean_stat, seed=seed), n)
    if slices:
        multi = [r for r in records if r["n_solutions"] >= 2]
        if multi and len(multi) < n:
            for k, v in summarize(multi, seed=seed, slices=False).items():
                out[f"{k}_multi"] = v
    return out


def generation_metrics(records: list[dict], seed: int = 0) -> dict[str, dict]:
    """Over every generated sample of every record (unconditional generation): `validity` =
    valid samples / samples; `uniqueness` = distinct valid samples (by `board_hash`) / valid
    samples; `novelty` = valid samples that are not training examples / valid samples (needs
    `in_train`). CIs: percentile bootstrap over records for validity and novelty; a Wilson
    interval over valid samples for uniqueness (resampling records would duplicate boards and
    bias a distinct count down)."""
    n = len(records)
    valid = [np.asarray(r["valid"], dtype=bool) for r in records]
    hashes = [np.asarray(r["board_hash"], dtype=np.int64) for r in records]
    n_valid = np.array([v.sum() for v in valid], dtype=float)
    n_all = np.array([len(v) for v in valid], dtype=float)
    out = {"validity": _metric(bootstrap_ci([n_valid, n_all], ratio_stat, seed=seed), n)}
    all_valid = np.concatenate([h[v] for h, v in zip(hashes, valid)])
    if len(all_valid):
        distinct = len(np.unique(all_valid))
        out["uniqueness"] = _metric((distinct / len(all_valid), *wilson_interval(distinct, len(all_valid))), n)
    if "in_train" in records[0] and n_valid.sum() > 0:
        novel = np.array([(v & ~np.asarray(r["in_train"], dtype=bool)).sum() for v, r in zip(valid, records)],
                         dtype=float)
        out["novelty"] = _metric(bootstrap_ci([novel, n_valid], ratio_stat, seed=seed), n)
    return out
