"""Metrics from hand-made per-example records: exact values, selection rules, intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gram_bench.metrics import SELECTIONS, bootstrap_ci, example_records, seed_interval, summarize
from gram_bench.metrics.records import select
from gram_bench.metrics.stats import mean_stat, ratio_stat


def rec(n_solutions, valid, exact, selected, distinct_valid, distinct, conflicts=None):
    r = {"id": 0, "n_solutions": n_solutions, "valid": valid, "exact": exact, "selected": selected,
         "distinct_valid": distinct_valid, "distinct": distinct, "scores": {}}
    if conflicts is not None:
        r["conflicts"] = conflicts
    return r


def all_rules(i):
    return {"first": 0, "vote": i, "lprm": i, "halt": i}


def test_coverage_two_inputs():
    """Inputs with 4 and 2 solutions, each with 2 distinct valid answers found."""
    records = [rec(4, [1, 1, 0], [0, 1, 0], all_rules(0), 2, 3),
               rec(2, [1, 1, 1], [1, 0, 0], all_rules(0), 2, 2)]
    m = summarize(records)
    assert m["coverage"]["value"] == pytest.approx(0.75)
    assert m["coverage_pooled"]["value"] == pytest.approx(4 / 6)
    assert m["accuracy_first"]["value"] == 1.0
    assert m["accuracy_oracle"]["value"] == 1.0
    assert m["exact_first"]["value"] == 0.5
    # constant across examples -> the interval is the value
    assert (m["accuracy_first"]["ci_low"], m["accuracy_first"]["ci_high"]) == (1.0, 1.0)
    assert m["coverage"]["n"] == 2
    for k in ("coverage_multi", "accuracy_first_multi"):
        assert k not in m  # every input has several answers: no separate slice


@pytest.fixture
def four():
    return [
        rec(4, [1, 0, 1], [0, 0, 1], {"first": 0, "vote": 2, "lprm": 1, "halt": 0}, 2, 3, [0, 2, 0]),
        rec(2, [0, 1, 1], [0, 1, 0], {"first": 0, "vote": 1, "lprm": 2, "halt": 1}, 2, 2, [1, 0, 0]),
        rec(3, [0, 0, 0], [0, 0, 0], {"first": 0, "vote": 0, "lprm": 0, "halt": 2}, 0, 1, [3, 3, 3]),
        rec(1, [1, 1, 1], [1, 1, 1], {"first": 0, "vote": 0, "lprm": 0, "halt": 0}, 1, 1, [0, 0, 0]),
    ]


def test_summarize_values(four):
    m = summarize(four)
    expected = {
        "accuracy_first": 0.5, "accuracy_vote": 0.75, "accuracy_lprm": 0.5, "accuracy_halt": 0.75,
        "accuracy_oracle": 0.75,
        "exact_first": 0.25, "exact_vote": 0.75, "exact_lprm": 0.25, "exact_halt": 0.5, "exact_oracle": 0.75,
        "sample_validity": (2 / 3 + 2 / 3 + 0 + 1) / 4,
        "coverage": (2 / 4 + 2 / 2 + 0 / 3 + 1 / 1) / 4,
        "coverage_pooled": (2 + 2 + 0 + 1) / (4 + 2 + 3 + 1),
        "conflicts_total": 3.0, "conflicts_mean": 0.75,  # of the vote-selected answers: 0, 0, 3, 0
        "conflicts_total_first": 4.0,  # of sample 0: 0, 1, 3, 0
        "distinct_samples": 1.75,
        # inputs with >= 2 solutions: the first three
        "accuracy_first_multi": 1 / 3, "accuracy_vote_multi": 2 / 3, "accuracy_oracle_multi": 2 / 3,
        "coverage_multi": (0.5 + 1 + 0) / 3, "coverage_pooled_multi": 4 / 9,
    }
    for k, v in expected.items():
        assert m[k]["value"] == pytest.approx(v), k
    assert m["accuracy_first"]["n"] == 4 and m["coverage_multi"]["n"] == 3


def test_every_metric_has_an_ordered_interval(four):
    m = summarize(four)
    for k, v in m.items():
        assert set(v) == {"value", "ci_low", "ci_high", "n"}, k
        assert v["ci_low"] <= v["value"] <= v["ci_high"], k
    # a metric that varies across examples has a non-degenerate interval within [0, 1]
    assert 0 <= m["accuracy_first"]["ci_low"] < 0.5 < m["accuracy_first"]["ci_high"] <= 1


def test_summarize_is_deterministic(four):
    assert summarize(four) == summarize(four)
    a, b = summarize(four, seed=0), summarize(four, seed=1)
    assert all(a[k]["value"] == b[k]["value"] for k in a)


def test_summarize_edge_cases():
    assert summarize([]) == {}
    unknown = [rec(0, [1], [1], all_rules(0), 1, 1)]
    assert "coverage" not in summarize(unknown)  # 0 = number of answers unknown
    no_conflicts = [rec(1, [1], [1], all_rules(0), 1, 1)]
    assert "conflicts_total" not in summarize(no_conflicts)
    only_first = [{**rec(1, [1, 0], [1, 0], {"first": 0, "vote": 0}, 1, 2)}]
    m = summarize(only_first)
    assert "accuracy_lprm" not in m and m["accuracy_vote"]["value"] == 1.0


def test_select_rules():
    keys = [b"a", b"b", b"b", b"c", b"b"]
    assert select(keys, {}) == {"first": 0, "vote": 1}
    s = select(keys, {"lprm": np.array([0.1, 0.2, 0.3, 0.9, 0.0]), "halt": np.array([0.5, 0.1, 0.7, 0.2, 0.6])})
    assert s == {"first": 0, "vote": 1, "lprm": 3, "halt": 2}


def test_select_vote_ties():
    keys = [b"a", b"b", b"a", b"b"]
    assert select(keys, {})["vote"] == 0  # tie, no values -> earliest
    lprm = np.array([0.1, 0.9, 0.2, 0.8])  # mean value: a 0.15, b 0.85
    assert select(keys, {"lprm": lprm})["vote"] == 1  # tie -> higher mean value, earliest of it


def test_example_records():
    keys = [[b"x", b"y", b"x"], [b"p", b"q", b"r"]]
    fields = {"valid": np.array([[1, 0, 1], [0, 0, 1]], dtype=bool),
              "conflicts": np.array([[0, 2, 0], [1, 4, 0]])}
    exact = np.array([[0, 0, 0], [0, 0, 1]], dtype=bool)
    scores = {"lprm": np.array([[0.1, 0.2, 0.3], [0.5, 0.4, 0.9]], dtype=np.float32)}
    preds = np.array([[[1, 2], [2, 1], [1, 2]], [[2, 2], [1, 1], [2, 1]]])
    r = example_records(np.array([7, 9]), np.array([3, 1]), keys, fields, exact, scores, preds)
    assert [x["id"] for x in r] == [7, 9]
    assert r[0]["valid"] == [1, 0, 1] and r[0]["exact"] == [0, 0, 0]
    assert r[0]["distinct_valid"] == 1 and r[0]["distinct"] == 2
    assert r[0]["selected"] == {"first": 0, "vote": 0, "lprm": 2}
    assert r[0]["answer"] == "12" and r[0]["conflicts"] == [0, 2, 0]
    assert r[1]["selected"] == {"first": 0, "vote": 2, "lprm": 2}  # all distinct: tie -> best value
    assert r[1]["answer"] == "21" and r[1]["n_solutions"] == 1
    assert r[0]["scores"]["lprm"] == [0.1, 0.2, 0.3]
    m = summarize(r)
    assert m["accuracy_vote"]["value"] == 1.0 and m["accuracy_first"]["value"] == 0.5
    assert m["coverage"]["value"] == pytest.approx((1 / 3 + 1) / 2)
    assert set(SELECTIONS) == {"first", "vote", "lprm", "halt", "loglik"}


def test_bootstrap_ci_of_a_constant_is_degenerate():
    v, lo, hi = bootstrap_ci([np.full(50, 0.3)], mean_stat)
    assert v == lo == hi == pytest.approx(0.3)
    assert bootstrap_ci([np.array([1.0])], mean_stat) == (1.0, 1.0, 1.0)
    assert bootstrap_ci([np.full(5, 2.0), np.full(5, 4.0)], ratio_stat) == (0.5, 0.5, 0.5)


def test_bootstrap_ci_brackets_the_mean():
    x = np.array([0, 1] * 50, dtype=float)
    v, lo, hi = bootstrap_ci([x], mean_stat)
    assert v == 0.5
    assert 0.35 < lo < 0.5 < hi < 0.65
    # the normal-approximation half-width is 1.96 * 0.5 / 10 = 0.098
    assert (hi - lo) / 2 == pytest.approx(0.098, abs=0.02)
    assert bootstrap_ci([x], mean_stat) == (v, lo, hi)  # seeded


def test_seed_interval_matches_t_interval():
    s = seed_interval([1, 2, 3])
    t975 = stats.t.ppf(0.975, df=2)
    assert t975 == pytest.approx(4.302652729749464)
    half = t975 * 1.0 / math.sqrt(3)  # sample std of 1, 2, 3 is exactly 1
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["n"] == 3
    assert s["low"] == pytest.approx(2 - half) and s["high"] == pytest.approx(2 + half)
    assert s["low"] == pytest.approx(-0.48413771, abs=1e-6)


def test_seed_interval_small_inputs():
    assert seed_interval([0.4]) == {"mean": 0.4, "std": 0.0, "low": 0.4, "high": 0.4, "n": 1}
    s = seed_interval([0.5, 0.5, 0.5])
    assert s["low"] == s["high"] == 0.5
    assert math.isnan(seed_interval([])["mean"])
