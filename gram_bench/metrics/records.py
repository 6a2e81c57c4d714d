"""Selection rules and per-example records (the source of truth for every metric)."""

from __future__ import annotations

from collections import Counter

import numpy as np

SELECTIONS = ("first", "vote", "lprm", "halt", "loglik")


def select(keys: list[bytes], scores: dict[str, np.ndarray]) -> dict[str, int]:
    """Index of the chosen sample per rule, for one input with N samples.

    first: sample 0.  vote: the most frequent answer (ties -> higher mean LPRM value, or
    model log-likelihood for models without a value head, then earliest).  lprm / halt /
    loglik: the highest value-head / halting-confidence / model log-likelihood score (AR:
    the sample's log-likelihood; diffusion: its final-step confidence)."""
    counts = Counter(keys)
    lprm = scores.get("lprm", scores.get("loglik"))

    def vote_key(i: int) -> tuple:
        mean_v = float(np.mean([lprm[j] for j, k in enumerate(keys) if k == keys[i]])) if lprm is not None else 0.0
        return (counts[keys[i]], mean_v, -i)

    out = {"first": 0, "vote": max(range(len(keys)), key=vote_key)}
    for name in ("lprm", "halt", "loglik"):
        if name in scores:
            out[name] = int(np.argmax(scores[name]))
    return out


def answer_ids(keys: list[bytes]) -> list[int]:
    """Each sample's answer as a small id: 0 for the first distinct answer, 1 for the next...
    Equal ids = the same solution (up to the task's canonical form). With `valid` and the
    scores, this is enough to recompute votes and coverage for any prefix of the N samples."""
    ids: dict[bytes, int] = {}
    return [ids.setdefault(k, len(ids)) for k in keys]


def example_records(ids: np.ndarray, n_solutions: np.ndarray, keys: list[list[bytes]],
                    fields: dict[str, np.ndarray], exact: np.ndarray,
                    scores: dict[str, np.ndarray], preds: np.ndarray) -> list[dict]:
    """One JSON-ready record per input. fields/exact/scores are [B, N]; preds [B, N, L]."""
    out = []
    for i in range(len(ids)):
        valid = fields["valid"][i].astype(bool)
        sc = {k: v[i] for k, v in scores.items()}
        sel = select(keys[i], sc)
        rec = {
            "id": int(ids[i]),
            "n_solutions": int(n_solutions[i]),
            "valid": valid.astype(int).tolist(),
            "exact": exact[i].astype(int).tolist(),
            "distinct_valid": len({k for k, v in zip(keys[i], valid) if v}),
            "distinct": len(set(keys[i])),
            "answer_ids": answer_ids(keys[i]),
            "selected": sel,
            "scores": {k: np.round(v.astype(float), 5).tolist() for k, v in sc.items()},
            "answer": "".join(map(str, preds[i, sel["vote"]].tolist())) if preds.max() < 10
            else preds[i, sel["vote"]].tolist(),
        }
        for name, arr in fields.items():
            if name != "valid":
                rec[name] = arr[i].astype(int).tolist()
        out.append(rec)
    return out


def truncate(record: dict, n: int) -> dict:
    """The record an eval with only the first `n` samples would have written (votes, coverage
    and per-sample fields recomputed). Needs `answer_ids` (records from schema 2 on)."""
    N = len(record["valid"])
    if "answer_ids" in record:
        ids = record["answer_ids"][:n]
    elif record.get("distinct") == 1:  # every sample is the same answer (e.g. a deterministic model)
        ids = [0] * min(n, N)
    else:
        raise ValueError("this record has no answer_ids (written before schema 2); evaluate again")
    if n >= N:
        return record
    valid = record["valid"][:n]
    scores = {k: v[:n] for k, v in record["scores"].items()}
    out = dict(record)
    for k, v in record.items():
        if isinstance(v, list) and len(v) == N and k != "answer":
            out[k] = v[:n]
    out["scores"] = scores
    out.pop("answer", None)  # the answer of the N-sample vote; the n-sample vote may differ
    out["selected"] = select(ids, {k: np.asarray(v) for k, v in scores.items()})
    out["distinct_valid"] = len({a for a, ok in zip(ids, valid) if ok})
    out["distinct"] = len(set(ids))
    return out
