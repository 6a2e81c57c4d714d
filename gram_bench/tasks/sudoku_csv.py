"""Sudoku grids as digit arrays and the Sudoku-Extreme CSV files: the rule checks on
[M, 81] digit grids (0 = blank), and the reader that takes the rows a build asks for, with
the malformed rows it leaves out ("file:line: reason")."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from gram_bench.core.errors import UsageError

HEADER = ["source", "question", "answer", "rating"]
ENV_DIR = "GRAM_BENCH_SUDOKU_DIR"
DATA_URL = "https://huggingface.co/datasets/sapientinc/sudoku-extreme"
_ROW_RE = re.compile(r"[.0-9]{81}")
_ANSWER_RE = re.compile(r"[1-9]{81}")

# the 27 units (9 rows, 9 columns, 9 boxes) as cell indices
UNITS = np.array([[r * 9 + c for c in range(9)] for r in range(9)]
                 + [[r * 9 + c for r in range(9)] for c in range(9)]
                 + [[(3 * (b // 3) + i // 3) * 9 + 3 * (b % 3) + i % 3 for i in range(9)] for b in range(9)])


# ----------------------------------------------------------------------------- grid checks (numpy)


def grids_valid(grids: np.ndarray) -> np.ndarray:
    """[M, 81] digits (0 = blank) -> [M] bool: complete, and every unit holds 1-9 once."""
    g = np.asarray(grids)
    units = np.sort(g[:, UNITS], axis=-1)  # [M, 27, 9]
    return (units == np.arange(1, 10)).all(axis=(1, 2))


def keeps_givens(questions: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """[M] bool: every given digit of the question is the answer's digit in that cell."""
    q, a = np.asarray(questions), np.asarray(answers)
    return ((q == 0) | (q == a)).all(axis=1)


def parse_grid(s: str) -> np.ndarray:
    """An 81-character string ('.' or '0' = blank) -> [81] uint8 digits, 0 = blank."""
    return np.frombuffer(s.replace(".", "0").encode("ascii"), dtype=np.uint8) - ord("0")


def grid_string(grid: np.ndarray) -> str:
    return "".join("." if d == 0 else str(int(d)) for d in grid)


# ----------------------------------------------------------------------------- the CSV files


@dataclass
class CsvRows:
    """Rows read from a Sudoku-Extreme CSV: the file's data-row indices (0 = first row after the
    header), digit grids and ratings, plus the malformed rows found as "file:line: reason"."""

    rows: np.ndarray  # [M] int64
    questions: np.ndarray  # [M, 81] uint8
    answers: np.ndarray  # [M, 81] uint8
    ratings: np.ndarray  # [M] int64
    bad: list[str] = field(default_factory=list)


def count_data_rows(path: Path) -> int:
    """Data rows of a CSV file (lines after the header), after checking the header."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        try:
            header = next(csv.reader(f), None)
        except csv.Error as e:
            raise UsageError(f"{path}:1: not a CSV header ({e}).") from None
    if header != HEADER:
        shown = repr(header) if len(repr(header)) <= 120 else repr(header)[:120] + "..."
        raise UsageError(f"{path}:1: the header is {shown}, expected {','.join(HEADER)} (the Sudoku-Extreme "
                         f"format; see {DATA_URL}).")
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            n += block.count(b"\n")
            last = block
    if n and not last.endswith(b"\n"):  # no newline after the last row
        n += 1
    return n - 1


def read_rows(path: Path, wanted: np.ndarray | None, on_bad: str,
              progress: Callable[[int, int], None] | None = None, total: int = 0) -> CsvRows:
    """Read the data rows `wanted` (indices, any order; None = all) of a Sudoku-Extreme CSV and
    check them; a malformed row is dropped and described in `bad`, or raises with
    `on_bad="error"`. Results are in file order."""
    want = None if wanted is None else set(int(i) for i in wanted)
    idx, qs, ans, rts, bad = [], [], [], [], []

    def reject(line: int, reason: str) -> None:
        msg = f"{path}:{line}: {reason}"
        if on_bad == "error":
            raise UsageError(f"{msg}; fix or remove the row, or pass --set task.bad_rows=skip to leave malformed "
                             f"rows out.")
        bad.append(msg)

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:  # bad bytes fail the row checks
        reader = csv.reader(f)
        for i, rec in enumerate(_csv_records(reader, path)):
            if i == 0:
                continue  # the header (checked by count_data_rows)
            i -= 1
            if progress and i % 100_000 == 0:
                progress(i, total)
            if want is not None and i not in want:
                continue
            line = reader.line_num
            if len(rec) != 4:
                reject(line, f"{len(rec)} fields, expected 4 ({','.join(HEADER)})")
                continue
            _, q, a, r = rec
            if not _ROW_RE.fullmatch(q):
                reject(line, "the question is not 81 characters of digits and '.'")
                continue
            if not _ANSWER_RE.fullmatch(a):
                reject(line, "the answer is not 81 digits 1-9")
                continue
            try:
                rating = int(r) if len(r) <= 30 else None
            except ValueError:
                rating = None
            if rating is None or not -2 ** 63 <= rating < 2 ** 63:
                reject(line, f"the rating {r[:30]!r}{'...' if len(r) > 30 else ''} is not an integer (64-bit)")
                continue
            idx.append(i)
            qs.append(q)
            ans.append(a)
            rts.append(rating)
    if progress:
        progress(total, total)
    q = np.stack([parse_grid(s) for s in qs]) if qs else np.zeros((0, 81), np.uint8)
    a = np.stack([parse_grid(s) for s in ans]) if ans else np.zeros((0, 81), np.uint8)
    ok = grids_valid(a) & keeps_givens(q, a)
    for j in np.nonzero(~ok)[0]:
        # the line number of a row that passed the structural checks: data row i is line i + 2
        reason = ("the answer breaks a Sudoku rule" if not grids_valid(a[j:j + 1])[0]
                  else "the answer contradicts a given of the question")
        reject(idx[j] + 2, reason)
    keep = np.nonzero(ok)[0]
    return CsvRows(np.asarray(idx, dtype=np.int64)[keep], q[keep], a[keep], np.asarray(rts, dtype=np.int64)[keep],
                   bad)


def _csv_records(reader, path: Path):
    """The reader's records; a CSV syntax error (e.g. a field over the csv module's size limit)
    is a UsageError naming the file and line, whatever `bad_rows` says."""
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise UsageError(f"{path}:{reader.line_num}: not valid CSV ({e}); fix or remove the row.") from None
        yield rec


def pick_rows(path: Path, n_rows: int, count: int, seed: int, on_bad: str,
              progress: Callable[[int, int], None] | None = None) -> CsvRows:
    """The first `count` well-formed rows in a seeded permutation of the file's rows (all of
    them, in file order, when count is 0 or at least the number of rows)."""
    if count <= 0 or count >= n_rows:
        out = read_rows(path, None, on_bad, progress, n_rows)
        if count > len(out.rows):
            raise UsageError(f"{path} has only {len(out.rows)} well-formed rows of the {count} asked for; lower the "
                             f"count.")
        return out if count <= 0 else take_rows(out, np.arange(count))
    order = np.random.default_rng(seed).permutation(n_rows)
    got: list[CsvRows] = []
    pos, have, bad = 0, 0, []
    while have < count and pos < n_rows:
        chunk = order[pos:pos + (count - have) + max(16, (count - have) // 20)]  # a few spares per pass
        pos += len(chunk)
        part = read_rows(path, chunk, on_bad, progress, n_rows)
        bad += part.bad
        rank = {int(r): k for k, r in enumerate(chunk)}  # keep the permutation's order
        part = take_rows(part, np.argsort([rank[int(r)] for r in part.rows], kind="stable")[:count - have])
        got.append(part)
        have += len(part.rows)
    if have < count:
        raise UsageError(f"{path} has only {have} well-formed rows of the {count} asked for; lower the count.")
    return CsvRows(*(np.concatenate([getattr(g, f) for g in got]) for f in ("rows", "questions", "answers",
                                                                             "ratings")), bad)


def take_rows(r: CsvRows, sel: np.ndarray) -> CsvRows:
    return CsvRows(r.rows[sel], r.questions[sel], r.answers[sel], r.ratings[sel], r.bad)


def csv_dir(data_dir: str) -> Path:
    """The directory holding train.csv and test.csv, from the config or the environment."""
    d = data_dir or os.environ.get(ENV_DIR, "")
    hint = (f"download train.csv and test.csv from {DATA_URL} and pass --set task.data_dir=DIR (or set "
            f"{ENV_DIR}=DIR), or use the offline generator with --set task.source=generated")
    if not d:
        raise UsageError(f"No Sudoku-Extreme CSV directory given; {hint}.")
    p = Path(d).expanduser()
    for name in ("train.csv", "test.csv"):
        if not (p / name).is_file():
            raise UsageError(f"{p / name} does not exist; {hint}.")
    return p


def rating_summary(r: np.ndarray) -> dict:
    if not len(r):
        return {}
    return {"min": int(r.min()), "median": float(np.median(r)), "p90": float(np.percentile(r, 90)),
            "max": int(r.max()), "zero": round(float((r == 0).mean()), 4)}
