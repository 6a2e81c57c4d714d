"""Run directories (DESIGN.md section 5): layout, status, environment record."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import torch

import gram_bench
from gram_bench.harness.config import RunConfig
from gram_bench.core.errors import UsageError
from gram_bench.core.io import LockHeld, atomic_write_json, atomic_write_text, file_lock
from gram_bench.core.runs import LOCK_NAME, run_id, safe_name

SCHEMA_VERSION = 2  # 2: records carry answer_ids; summaries carry flops_per_answer


def run_path(runs_dir: Path, cfg: RunConfig) -> Path:
    return Path(runs_dir) / safe_name(cfg.task_name, "task name") / safe_name(cfg.model_name, "model name") / run_id(cfg)


def read_status(run_dir: Path) -> str | None:
    p = Path(run_dir) / "status"
    try:
        return p.read_text(errors="replace").strip() if p.exists() else None
    except OSError:
        return None


def lock_owner() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock (`<run dir>/.lock`, created with the directory) while
    writing into it: a second process (a second `run` of the same config, an `eval` of a run
    still training) gets a UsageError saying who holds it. The lock dies with its process,
    so a killed run never leaves a stale lock."""
    try:
        with file_lock(Path(run_dir) / LOCK_NAME, lock_owner()):
            yield
    except LockHeld as e:
        raise UsageError(in_use_message(run_dir, e.owner)) from None


def in_use_message(run_dir: Path, owner: str | None = None) -> str:
    if owner is None:
        try:
            owner = (Path(run_dir) / LOCK_NAME).read_text(errors="replace").strip()
        except OSError:
            owner = ""
    return (f"{run_dir} is in use by another gram-bench process ({owner or 'unknown'}); wait for it to finish, "
            f"or stop it, then try again.")


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
