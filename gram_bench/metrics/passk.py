"""pass@k over per-example records (DESIGN.md section 6), for tasks that score a test input by
ranking the candidate answers of several rows (ARC: the augmented variants of one test input).

Each record holds, per sample, an answer key (`grid_hash`, 0 = no answer), whether it is
`valid`, and optional per-sample `scores`. The task says which test input a record belongs
to and which task that test input belongs to; everything else is here."""

from __future__ import annotations

from typing import Callable, Hashable

import numpy as np

from gram_bench.metrics.stats import bootstrap_ci, mean_stat

PASS_KS = (1, 2, 5, 10, 100, 1000)

# a candidate answer: (answer key, votes, mean tie-break score, correct)
Candidate = tuple[int, int, float, bool]


def rank_candidates(records: list[dict], group_of: Callable[[dict], Hashable], tie_break: str,
                    key_field: str = "grid_hash") -> dict[Hashable, list[Candidate]]:
    """{group: candidates best first} over every record and sample of the group: ranked by
    votes, then by the mean of score `tie_break` (falling back to `halt`; 0 without either),
    then by the answer key. Key 0 (no answer) is never a candidate."""
    stats: dict[Hashable, dict[int, list]] = {}
    for rec in records:
        g = group_of(rec)
        score = rec.get("scores", {}).get(tie_break) or rec.get("scores", {}).get("halt")
        for s, h in enumerate(rec[key_field]):
            if h == 0:
                continue
            st = stats.setdefault(g, {}).setdefault(int(h), [0, 0.0, False])
            st[0] += 1
            st[1] += float(score[s]) if score is not None else 0.0
            st[2] = st[2] or bool(rec["valid"][s])
    out = {}
    for g in {group_of(r) for r in records}:
        cands = [(h, n, tot / n, ok) for h, (n, tot, ok) in stats.get(g, {}).items()]
        out[g] = sorted(cands, key=lambda c: (-c[1], -c[2], c[0]))
    return out


def pass_at_k(ranked: dict[Hashable, list[Candidate]], task_of: Callable[[Hashable], Hashable],
              ks: tuple[int, ...] = PASS_KS) -> dict[str, dict]:
    """`pass@k`: the fraction of a task's test inputs whose correct answer is among the top k,
    averaged over tasks (TRM's form); `pass@k_task`: the fraction of tasks whose every test
    input passes (HRM's form). Each {value, ci_low, ci_high, n}, 95% bootstrap CIs over tasks."""
    per_task: dict[Hashable, list[list[bool]]] = {}
    for g, cands in sorted(ranked.items()):
        hits = [any(c[3] for c in cands[:k]) for k in ks]
        per_task.setdefault(task_of(g), []).append(hits)
    out = {}
    for j, k in enumerate(ks):
        frac = np.array([np.mean([h[j] for h in hs]) for hs in per_task.values()])
        full = np.array([float(all(h[j] for h in hs)) for hs in per_task.values()])
        for name, arr in ((f"pass@{k}", frac), (f"pass@{k}_task", full)):
            v, lo, hi = bootstrap_ci([arr], mean_stat)
            out[name] = {"value": v, "ci_low": lo, "ci_high": hi, "n": len(arr)}
    return out
