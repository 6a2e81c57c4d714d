"""Run identity: which config fields make a run (or a dataset) what it is.

A dataclass field declared with `metadata={"identity": False}` (e.g. where a data file lies)
is not part of it; neither are the train fields in TRAIN_LOGGING. Only fields that differ from
their defaults enter a fingerprint, so adding a knob with a default never renames a run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

# train fields that do not enter a run's identity (its fingerprint, and the tables' override
# matching): logging, checkpointing, threads, compilation, time limits, and the non-finite
# policy (so that `--resume --set train.nonfinite=skip` continues a run that stopped on a NaN)
TRAIN_LOGGING = ("log_every", "eval_every", "eval_examples", "eval_samples", "checkpoint_every", "threads",
                 "max_minutes", "nonfinite", "compile")


def is_identity(f: dataclasses.Field) -> bool:
    return f.metadata.get("identity", True)


def non_identity_names(cls: type) -> set[str]:
    """The fields of dataclass `cls` marked `metadata={"identity": False}`."""
    return {f.name for f in dataclasses.fields(cls) if not is_identity(f)}


def identity(cfg: Any) -> dict:
    """A config as a dict without the fields marked `metadata={"identity": False}` (where
    the data lies is not what the data is; a dataset's manifest holds the files' hashes)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if is_identity(f)}


def identity_of_dict(cls: type, d: Any) -> Any:
    """`identity` of a saved config dict of dataclass `cls`: only its identity fields."""
    if not isinstance(d, dict):
        return d
    keep = {f.name for f in dataclasses.fields(cls) if is_identity(f)}
    return {k: v for k, v in d.items() if k in keep}


def non_default(obj: Any) -> dict:
    """The identity fields of a dataclass instance whose values differ from their defaults."""
    out = {}
    for f in dataclasses.fields(obj):
        if not is_identity(f):
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        value = getattr(obj, f.name)
        if value != default:
            out[f.name] = value
    return out


def training_only(train: dict) -> dict:
    """A train section (a dict) less the TRAIN_LOGGING fields."""
    return {k: v for k, v in train.items() if k not in TRAIN_LOGGING}


def fingerprint(task_name: str, task: Any, model_name: str, model: Any, train: Any, seed: int,
                profile: str) -> str:
    """8 hex digits of sha256 over everything that changes training (not eval or logging
    settings): the non-default identity fields of the task, model and train configs, the
    seed and the profile."""
    d = {
        "task": {"name": task_name, **non_default(task)},
        "model": {"name": model_name, **non_default(model)},
        "train": training_only(non_default(train)),
        "seed": seed,
        "profile": profile,
    }
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def identity_view(d: dict, task_cls: type) -> dict:
    """The parts of a saved run config (`RunConfig.to_dict()`) that make a run what it is: the
    task section less the fields `task_cls` (the task's Config) marks non-identity, the
    model, training less TRAIN_LOGGING, seed and profile; not eval or overrides."""
    if not isinstance(d, dict):
        return {}
    out = {k: d.get(k) for k in ("task", "model", "seed", "profile")}
    skip = non_identity_names(task_cls)
    out["task"] = {k: v for k, v in (d.get("task") or {}).items() if k not in skip}
    out["train"] = training_only(d.get("train") or {})
    return out
