"""Run directories (DESIGN.md section 5): layout, status, environment record."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import torch

import gram_bench
from gram_bench.harness.config import RunConfig
from gram_bench.harness.io import atomic_write_json, atomic_write_text

SCHEMA_VERSION = 2  # 2: records carry answer_ids; summaries carry flops_per_answer


def run_id(cfg: RunConfig) -> str:
    return f"{cfg.profile}-seed{cfg.seed}-{cfg.fingerprint()}"


def run_path(runs_dir: Path, cfg: RunConfig) -> Path:
    return Path(runs_dir) / cfg.task_name / cfg.model_name / run_id(cfg)


def read_status(run_dir: Path) -> str | None:
    p = Path(run_dir) / "status"
    return p.read_text().strip() if p.exists() else None


def write_status(run_dir: Path, status: str) -> None:
    atomic_write_text(Path(run_dir) / "status", status + "\n")


def git_commit() -> str | None:
    try:
        root = Path(gram_bench.__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def env_record(device: torch.device, bf16: bool) -> dict:
    rec = {
        "gram_bench": gram_bench.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "bf16_autocast": bf16,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return rec


def write_env(run_dir: Path, env: dict) -> None:
    atomic_write_json(Path(run_dir) / "env.json", env)
