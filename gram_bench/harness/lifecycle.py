"""The lifecycle of a run directory around its run: whether a run is skipped (finished),
refused (in use by another process, or unfinished without --resume or --force) or started
over (--force clears all but the lock), and SIGTERM turned into an exception so that a
pre-empted run records why it stopped."""

from __future__ import annotations

import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from gram_bench.core.errors import UsageError
from gram_bench.core.runs import LOCK_NAME, is_locked
from gram_bench.harness.rundir import in_use_message, read_status


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler pre-empting the job) turned into an exception, so the run records
    `failed: terminated` and cleans up its temp files on the way out."""


@contextmanager
def sigterm_as_exception():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("terminated by SIGTERM")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def refuse_or_skip(rdir: Path, resume: bool, force: bool, console: Console, check_lock: bool = True) -> bool:
    """True when the run is finished and --force is not given (skip it, with or without
    --resume: a finished run has nothing to continue, so `run --resume` can be repeated over a
    list of runs); UsageError when the run directory is in use, or exists unfinished without
    --resume or --force."""
    if check_lock and is_locked(rdir):
        raise UsageError(in_use_message(rdir))
    status = read_status(rdir)
    if status is None or force:
        return False
    if status == "finished":
        console.print(f"[green]{escape(str(rdir))} already finished[/]; pass --force to run it again.")
        return True
    if not resume:
        gone = " (its process is gone: it was killed or crashed)" if status == "running" else ""
        raise UsageError(f"Run directory {rdir} exists (status: {status}){gone}; pass --resume to continue it or "
                         f"--force to start over.")
    return False


def clear_run_dir(rdir: Path) -> None:
    """--force: delete everything in the run directory but its lock (which we hold)."""
    for p in rdir.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()

