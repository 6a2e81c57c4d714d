"""Load a runs directory into one DataFrame: a row per run x eval file x metric."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

COLUMNS = ["task", "model", "run_id", "profile", "seed", "status", "eval", "split", "samples", "steps",
           "selection", "params", "device", "metric", "value", "ci_low", "ci_high", "n"]


def load_runs(runs_dir: str | Path = "runs", include_unfinished: bool = False) -> pd.DataFrame:
    """Every metric of every eval file under `runs_dir/<task>/<model>/<run-id>/eval/*.json`.

    Runs whose status is not `finished` are skipped unless `include_unfinished`; their
    `status` column says what they are."""
    rows = []
    for cfg_path in sorted(Path(runs_dir).glob("*/*/*/config.yaml")):
        rdir = cfg_path.parent
        status_p = rdir / "status"
        status = status_p.read_text().strip() if status_p.exists() else "unknown"
        if status != "finished" and not include_unfinished:
            continue
        try:
            cfg = yaml.safe_load(cfg_path.read_text())
            env = json.loads((rdir / "env.json").read_text()) if (rdir / "env.json").exists() else {}
        except (yaml.YAMLError, json.JSONDecodeError):
            continue
        for ev in sorted((rdir / "eval").glob("*.json")):
            try:
                s = json.loads(ev.read_text())
            except json.JSONDecodeError:
                continue
            for metric, m in s.get("metrics", {}).items():
                rows.append({
                    "task": cfg["task"]["name"], "model": cfg["model"]["name"], "run_id": rdir.name,
                    "profile": cfg.get("profile"), "seed": cfg.get("seed"), "status": status,
                    "eval": ev.stem, "split": s.get("split"), "samples": s.get("samples"),
                    "steps": s.get("steps"), "selection": s.get("selection"),
                    "params": s.get("model_params", env.get("params")), "device": env.get("device_name"),
                    "metric": metric, "value": m["value"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                    "n": m["n"],
                })
    return pd.DataFrame(rows, columns=COLUMNS)
