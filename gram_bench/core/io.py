"""Atomic file writes, JSON lines, hashing, and advisory file locks.

Crash safety: every file of a run record is written whole or not at all: a temp
file `.<name>.<random>.tmp` in the same directory, fsync, rename over the target, fsync of
the directory. A process killed in the middle leaves at most a stale temp file (removed by
`remove_stale_temp`), never a torn target. The one exception is an append-only JSON-lines
log (`train.jsonl`): a kill during an append may leave a torn last line, which `read_jsonl`
skips (and a resumed run rewrites the log atomically up to its checkpoint).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

try:  # POSIX advisory locks; elsewhere locking is a no-op
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

TEMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make a rename in directory `path` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a temp file in the same directory, fsync, rename)."""
    _atomic_write_bytes(path, data)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl_gz(path: Path, rows: Iterable[dict]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, separators=(",", ":")) + "\n").encode())
    _atomic_write_bytes(path, buf.getvalue())


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file. A torn last line (a writer killed mid-append: no newline at
    the end, or not valid JSON) is skipped; a bad line elsewhere raises ValueError naming
    the file and line."""
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", "replace").split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        last = i == len(lines) - 1 or not any(x.strip() for x in lines[i + 1:])
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if last:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line") from None
        if not isinstance(row, dict):
            if last:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object")
        rows.append(row)
    return rows


def atomic_torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(path, buf.getvalue())


def append_jsonl(path: Path, row: dict) -> None:
    """Append one line with a single write and fsync it (append-only: a kill during the write
    can tear only this last line, which readers skip)."""
    data = (json.dumps(row, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LockHeld(Exception):
    """Another process holds the lock; `owner` is what it wrote into the lock file."""

    def __init__(self, path: Path, owner: str):
        super().__init__(f"{path} is locked by {owner or 'another process'}")
        self.path, self.owner = path, owner


_HELD: dict[str, list] = {}  # lock path -> [fd, depth]: re-entrant within one process


@contextlib.contextmanager
def file_lock(path: Path, owner: str = "", wait: float = 2.0,
              on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """An exclusive advisory lock (fcntl.flock) on `path`, created if needed; raises LockHeld
    when another process still holds it after `wait` seconds (a reader probing with
    `is_file_locked` holds it for microseconds). The kernel drops the lock when its holder
    exits, however it dies (SIGKILL included), so a lock is never stale. Re-entrant within
    one process. `owner` (e.g. "pid 123 on host") is written into the file for messages;
    `on_wait(holder)` is called once if the lock is busy (wait=math.inf waits for ever)."""
    key = os.path.abspath(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                held_by = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                if time.monotonic() >= deadline:
                    raise LockHeld(Path(path), held_by) from None
                if on_wait is not None:
                    on_wait(held_by)
                    on_wait = None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[key]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def is_file_locked(path: Path) -> bool:
    """Does a live process hold `file_lock(path)`? (A read-only probe: a shared lock taken and
    dropped at once; False when the file is missing or locks are unsupported.)"""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_stale_temp(directory: Path) -> list[Path]:
    """Delete the temp files (`.<name>.<random>.tmp`) a killed writer left in `directory` and
    its subdirectories; only call it while holding the directory's lock."""
    gone = []
    for p in Path(directory).rglob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                gone.append(p)
    return gone
