"""Names in a runs directory that writers (harness) and readers (leaderboards) share: run
ids, safe path components, and the run directory's lock."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gram_bench.core.errors import UsageError
from gram_bench.core.io import is_file_locked

LOCK_NAME = ".lock"  # in the run directory; held (flock) by the process writing into it
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}")


def safe_name(name: str, what: str = "name") -> str:
    """`name` if it can be one path component under the runs directory: letters, digits and
    `._+=-`, not starting with a dot, at most 200 characters; else UsageError. Every directory
    or file name built from a config (task, model, run id, eval name) goes through it, so no
    value can reach outside the runs directory (`..`, `/`, absolute paths)."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise UsageError(f"The {what} {name!r} cannot be a file name: use letters, digits and ._+=- only.")
    return name


def run_id(cfg: Any) -> str:
    """`<profile>-seed<seed>-<fingerprint>` of a run config (`RunConfig`)."""
    return safe_name(f"{cfg.profile}-seed{cfg.seed}-{cfg.fingerprint()}", "run id")


def is_locked(run_dir: Path) -> bool:
    """Is a live process writing into `run_dir` (holding its lock)?"""
    return is_file_locked(Path(run_dir) / LOCK_NAME)
