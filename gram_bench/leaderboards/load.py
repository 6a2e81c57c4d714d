"""Load a runs directory into one DataFrame: a row per run x eval file x metric.

Reads run records only (config.yaml, env.json, status, train.jsonl, eval/*.json), never
models. Usable from Python:

    from gram_bench.leaderboards import load_runs
    df = load_runs("runs")
    df[(df.metric == "coverage") & (df["eval"] == "test")]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import yaml

from gram_bench.core.identity import TRAIN_LOGGING
from gram_bench.core.runs import is_locked

try:  # libyaml is ~10x faster; PyYAML wheels ship it
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

COLUMNS = ["task", "dataset", "model", "run_id", "run_dir", "profile", "seed", "status", "eval", "split",
           "samples", "steps", "selection", "tag", "params", "train_steps", "train_seconds", "eval_seconds",
           "flops_per_answer", "calls_per_answer", "device", "hardware", "metric", "value", "ci_low", "ci_high", "n", "model_cfg",
           "overrides"]

def dataset_label(task_cfg: dict, env: dict) -> str:
    """The dataset directory's name the run recorded in env.json (`nqueens-8`); the task's
    name when env.json is missing or unreadable."""
    return env.get("dataset") or task_cfg.get("name", "?")


def training_overrides(overrides: dict) -> dict:
    """The `--set` overrides that change training: model.* and train.* except logging keys
    (task.* choose the dataset, which has its own column; eval.* do not change training)."""
    return {k: v for k, v in overrides.items()
            if k.startswith("model.") or (k.startswith("train.") and k[6:] not in TRAIN_LOGGING)}


def _train_progress(rdir: Path) -> tuple[int | None, float | None]:
    """(last logged step, training seconds) from the tail of train.jsonl."""
    p = rdir / "train.jsonl"
    if not p.exists():
        return None, None
    with open(p, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 4096))
        lines = f.read().decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        try:
            row = json.loads(line)
            if isinstance(row, dict) and "elapsed_s" in row:
                return int(row["step"]), float(row["elapsed_s"])
        except (ValueError, TypeError, KeyError, OverflowError):
            continue  # a torn last line of a run that is still writing
    return None, None


def _eval_tag(stem: str) -> str:
    return stem.split("+", 1)[1] if "+" in stem else ""


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not (isinstance(x, float) and math.isinf(x))


def _optional_int(x) -> bool:
    return x is None or (isinstance(x, int) and not isinstance(x, bool))


def _metric_ok(m) -> bool:
    return isinstance(m, dict) and all(_number(m.get(k)) for k in ("value", "ci_low", "ci_high")) and \
        _optional_int(m.get("n"))


def load_runs(runs_dir: str | Path = "runs", include_unfinished: bool = False) -> pd.DataFrame:
    """Every metric of every eval file under `runs_dir/<task>/<model>/<run-id>/eval/*.json`.

    Runs whose status is not `finished` are skipped unless `include_unfinished`; their
    `status` column says what they are. Unreadable or malformed files (a run being written,
    a torn or edited file) skip that file, never the whole load. What was left out is in
    `df.attrs`: `incomplete` [(run dir, status)] (a `running` run whose process is gone says
    so) and `unreadable` [(path, reason)]."""
    rows = []
    incomplete: list[tuple[str, str]] = []
    unreadable: list[tuple[str, str]] = []
    for cfg_path in sorted(Path(runs_dir).glob("*/*/*/config.yaml")):
        rdir = cfg_path.parent
        status_p = rdir / "status"
        try:
            status = status_p.read_text(errors="replace").strip() if status_p.exists() else "unknown"
        except OSError:
            status = "unknown"
        if status != "finished" and not include_unfinished:
            live = is_locked(rdir)
            desc = status
            if status == "running" and not live:
                desc = "running, but its process is gone (killed?): resume it with --resume"
            elif live and status == "unknown":
                desc = "starting"
            incomplete.append((str(rdir), desc))
            continue
        try:
            cfg = yaml.load(cfg_path.read_text(), Loader=_Loader)
            env = json.loads((rdir / "env.json").read_text()) if (rdir / "env.json").exists() else {}
        except (yaml.YAMLError, ValueError, OSError) as e:
            unreadable.append((str(cfg_path), type(e).__name__))
            continue
        if not isinstance(env, dict):
            env = {}
        if not (isinstance(cfg, dict) and isinstance(cfg.get("task"), dict) and isinstance(cfg.get("model"), dict)
                and isinstance(cfg["task"].get("name"), str) and isinstance(cfg["model"].get("name"), str)):
            unreadable.append((str(cfg_path), "not a run config"))
            continue
        overrides = cfg.get("overrides") if isinstance(cfg.get("overrides"), dict) else {}
        try:
            model_cfg = json.dumps({k: v for k, v in cfg["model"].items() if k != "name"}, sort_keys=True, default=str)
            overrides = json.dumps(training_overrides(overrides), sort_keys=True, default=str)
            dataset = str(dataset_label(cfg["task"], env))
        except (TypeError, ValueError) as e:
            unreadable.append((str(cfg_path), type(e).__name__))
            continue
        train_steps, train_seconds = _train_progress(rdir)
        base = {
            "task": cfg["task"]["name"], "dataset": dataset, "model": cfg["model"]["name"],
            "run_id": rdir.name, "run_dir": str(rdir), "profile": cfg.get("profile"), "seed": cfg.get("seed"),
            "status": status, "train_steps": train_steps, "train_seconds": train_seconds,
            "device": env.get("device"), "hardware": env.get("device_name"), "model_cfg": model_cfg,
            "overrides": overrides,
        }
        for ev in sorted((rdir / "eval").glob("*.json")):
            try:
                s = json.loads(ev.read_text())
            except (ValueError, OSError) as e:
                unreadable.append((str(ev), type(e).__name__))
                continue
            if not (isinstance(s, dict) and isinstance(s.get("metrics", {}), dict)
                    and all(_optional_int(s.get(k)) for k in ("samples", "steps"))):
                unreadable.append((str(ev), "not an eval summary"))
                continue
            head = {**base, "eval": ev.stem, "split": s.get("split"), "samples": s.get("samples"),
                    "steps": s.get("steps"), "selection": s.get("selection"), "tag": _eval_tag(ev.stem),
                    "params": s.get("model_params", env.get("params")), "eval_seconds": s.get("seconds"),
                    "flops_per_answer": s.get("flops_per_answer"), "calls_per_answer": s.get("calls_per_answer")}
            for metric, m in s.get("metrics", {}).items():
                if not _metric_ok(m):
                    unreadable.append((f"{ev}:{metric}", "not a metric"))
                    continue
                rows.append({**head, "metric": metric, "value": m["value"], "ci_low": m["ci_low"],
                             "ci_high": m["ci_high"], "n": m.get("n")})
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["incomplete"] = incomplete
    df.attrs["unreadable"] = unreadable
    return df
