"""Shared fixtures: a built nqueens-8 dataset and two smoke runs made once per session.

Everything is written under pytest's tmp dirs; nothing goes into the repository. Runs use
`--device cpu` so results are the same with or without a GPU."""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from gram_bench.harness.cli import app
from gram_bench.harness.config import resolve
from gram_bench.harness.rundir import run_path
from gram_bench.tasks.nqueens import NQueens


def quiet() -> Console:
    """A console that prints nowhere (runs called in-process)."""
    return Console(file=io.StringIO())


def assert_same(a, b, path="ckpt"):
    """Exact equality of nested checkpoint contents (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def make_model(cls, cfg, layout, seed: int = 0, **changes):
    """Model `cls` from `cfg` with `changes` on `layout`, its initial weights seeded by `seed`."""
    torch.manual_seed(seed)
    return cls(dataclasses.replace(cfg, **changes), layout)


def random_batch(b: int, in_len: int, out_len: int, inputs: tuple[int, int] = (1, 3),
                 targets: tuple[int, int] = (1, 3), seed: int = 0, puzzle_ids: list[int] | None = None) -> dict:
    """`b` rows of random tokens: inputs in [inputs[0], inputs[1]), then targets, drawn from one
    generator seeded by `seed`; puzzle id 0 unless `puzzle_ids` are given."""
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(*inputs, (b, in_len), generator=g),
            "targets": torch.randint(*targets, (b, out_len), generator=g),
            "puzzle_ids": torch.zeros(b, dtype=torch.long) if puzzle_ids is None else torch.tensor(puzzle_ids)}


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def flat(text: str) -> str:
    """Output without colour codes and with all whitespace (rich's line wrapping) collapsed."""
    return " ".join(ANSI.sub("", text).split())


class Cli:
    """`cli(...)` runs `gram-bench ...` in-process; `.text` is the flattened output."""

    def __call__(self, *args: str):
        res = CliRunner().invoke(app, [str(a) for a in args])
        res.text = flat(res.output)
        return res


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root holding a freshly built nqueens-8 (read-only for tests: copy before editing)."""
    root = tmp_path_factory.mktemp("data")
    NQueens(NQueens.Config(n=8), root).build()
    return root


@pytest.fixture(scope="session")
def nq8(data_root) -> NQueens:
    task = NQueens(NQueens.Config(n=8), data_root)
    task.arrays()
    return task


@pytest.fixture
def data_copy(data_root, tmp_path) -> Path:
    """A private copy of the session data root that a test may corrupt."""
    dst = tmp_path / "data"
    shutil.copytree(data_root, dst)
    return dst


SMOKE = ("--profile", "smoke", "--device", "cpu")


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def _smoke_run(cli: Cli, model: str, runs_root: Path, data_root: Path) -> Path:
    res = cli("run", "--task", "nqueens", "--model", model, *SMOKE,
              "--runs-dir", runs_root, "--data-dir", data_root)
    assert res.exit_code == 0, res.output
    rdir = run_path(runs_root, resolve("nqueens", model, "smoke"))
    assert rdir.is_dir(), res.output
    return rdir


@pytest.fixture(scope="session")
def gram_run(cli, runs_root, data_root) -> Path:
    """`gram-bench run --task nqueens --model gram --profile smoke` (6 steps, checkpoints at 3, 6).
    Shared: tests that write into a run must work on `copy_run(...)`."""
    return _smoke_run(cli, "gram", runs_root, data_root)


@pytest.fixture(scope="session")
def trm_run(cli, runs_root, data_root) -> Path:
    return _smoke_run(cli, "trm", runs_root, data_root)


@pytest.fixture
def copy_run(tmp_path):
    """copy_run(rdir) -> a copy under tmp_path/runs with the same <task>/<model>/<run-id> layout."""

    def _copy(rdir: Path) -> Path:
        dst = tmp_path / "runs" / rdir.parent.parent.name / rdir.parent.name / rdir.name
        shutil.copytree(rdir, dst)
        return dst

    return _copy


# ----------------------------------------------------------------------------- reliability counts

_COUNTS = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def reliability_counts(request) -> dict:
    """Counters the fault-injection and fuzz tests add to (cases run, kill points, ...); the
    terminal summary prints them, so a test run reports how much was tried."""
    return request.config.stash.setdefault(_COUNTS, {})


def pytest_terminal_summary(terminalreporter, config):
    counts = config.stash.get(_COUNTS, None)
    if counts:
        terminalreporter.write_sep("-", "reliability: cases run")
        for k, v in counts.items():
            terminalreporter.write_line(f"{k}: {v}")
