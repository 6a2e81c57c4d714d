"""Checkpoints: loading one safely, refusing one written for another config or model, and the
RNG state and device moves a checkpoint's contents need.

A checkpoint holds everything the next step depends on (model, EMA, optimizer, data position,
carry, the partial log averages, and the torch, CUDA, numpy and Python RNG states), so a run
killed at any moment and resumed ends bit-identical to an uninterrupted one. It is loaded
with the weights-only unpickler: a checkpoint file can never run code."""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from gram_bench.core.identity import identity_view
from gram_bench.harness.config import RunConfig, config_diff
from gram_bench.core.errors import UsageError


CHECKPOINT_KEYS = ("step", "fingerprint", "config", "model", "optimizer", "sampler", "rng")


def load_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True: tensors and plain containers only, so a checkpoint
    can never run code (a pickle that names any other callable is refused)."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 64": the error below says it all
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        msg = " ".join(str(e).split())
        if "Weights only load failed" in msg:  # torch's advice (weights_only=False) is the one thing not to do
            why = re.search(r"WeightsUnpickler error: (.*?)(?: Please use| Check the documentation|$)", msg)
            reason = why.group(1).strip() if why else ""
            msg = f"refused by the weights-only loader{': ' + reason if reason else ''}"
        if len(msg) > 300:
            msg = msg[:300] + " ..."
        raise UsageError(f"Cannot load checkpoint {path} ({type(e).__name__}: {msg}); it is corrupt, or not a "
                         f"gram-bench checkpoint (only tensors and plain containers are ever unpickled).") from None
    if not isinstance(ck, dict) or not all(k in ck for k in CHECKPOINT_KEYS) or not isinstance(ck["model"], dict):
        keys = ", ".join(map(str, ck)) if isinstance(ck, dict) else type(ck).__name__
        raise UsageError(f"Cannot load checkpoint {path}: it is not a gram-bench checkpoint (it holds {keys}).")
    return ck


def check_checkpoint(ck: dict, cfg: RunConfig, path: Path, *, strict: bool = True, ignore: tuple[str, ...] = ()
                     ) -> None:
    """Refuse a checkpoint written for another config or model, naming what differs.
    `strict` (resume): the fingerprints must match. Otherwise (eval): every setting both
    configs have must agree, except `ignore` (e.g. inference-only `model.decode`)."""
    if strict and ck.get("fingerprint") == cfg.fingerprint():
        return
    diff = [d for d in config_diff(identity_view(ck.get("config"), type(cfg.task)),
                                    identity_view(cfg.to_dict(), type(cfg.task)))
            if d.split(":", 1)[0] not in ignore and (strict or "<unset>" not in d)]
    if not diff and not strict:
        return
    what = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    if not what:
        what = f"fingerprint {ck.get('fingerprint')} in the checkpoint, {cfg.fingerprint()} for this config"
    raise UsageError(f"{path} was written by another config (checkpoint -> this run: {what}); use --force to start "
                     f"over.")


def load_model_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    """`model.load_state_dict`, with a refusal that names the missing, unexpected and
    mis-shaped weights when the checkpoint belongs to another model."""
    try:
        model.load_state_dict(state)
        return
    except (RuntimeError, TypeError, ValueError, AttributeError, KeyError):
        pass
    own = model.state_dict()
    shape = lambda v: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__  # noqa: E731
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    bad = [f"{k} {shape(state[k])} vs {shape(own[k])}" for k in own if k in state and shape(state[k]) != shape(own[k])]
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("shape (checkpoint vs model)", bad)):
        if items:
            parts.append(f"{label}: {', '.join(map(str, items[:3]))}" + (f" (+{len(items) - 3})" if len(items) > 3 else ""))
    raise UsageError(f"{path} does not fit this model ({'; '.join(parts) or 'unreadable weights'}); it was written "
                     f"by another model or config.")


def rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
            "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]}}


def set_rng_state(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"], device)
    if rng.get("numpy") is not None:
        n = rng["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if rng.get("python") is not None:
        py = rng["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def tree_to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: tree_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(tree_to(v, device) for v in obj)
    return obj

