"""results/reproduce.sh and results/regenerate.sh: they parse; reproduce.sh refuses an
unknown task before it runs or writes anything (exit 2, one line naming the choices), and
DRY_RUN=1 lists a task's runs with their status and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script_env() -> dict:
    """This interpreter's environment, as the scripts expect an activated one."""
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


@pytest.mark.parametrize("name", ["reproduce.sh", "regenerate.sh"])
def test_results_scripts_parse(name):
    res = subprocess.run(["bash", "-n", str(ROOT / "results" / name)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_reproduce_refuses_an_unknown_task_before_running_anything():
    before = sorted(p.name for p in ROOT.iterdir())
    res = subprocess.run(["bash", str(ROOT / "results" / "reproduce.sh"), "nqueens", "sudokku"],
                         capture_output=True, text=True, env=script_env(), timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "unknown task 'sudokku'" in res.stderr and "graph-coloring" in res.stderr
    assert res.stdout == ""  # nqueens, named first, did not start
    assert sorted(p.name for p in ROOT.iterdir()) == before


def test_reproduce_dry_run_lists_the_runs_of_a_task_and_runs_nothing():
    from gram_bench.harness.config import resolve
    from gram_bench.harness.rundir import run_path

    before = sorted(p.name for p in ROOT.iterdir())
    res = subprocess.run(["bash", str(ROOT / "results" / "reproduce.sh"), "nqueens"], capture_output=True, text=True,
                         env={**script_env(), "DRY_RUN": "1"}, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line.split("\t") for line in res.stdout.strip().splitlines()]
    assert [r[0].split("/")[2] for r in rows] == ["gram", "trm", "hrm", "looped-tf", "ar", "mdlm", "d3pm", "d3pm"]
    assert all(len(r) == 2 and r[1] for r in rows)  # a status for each: new, finished or a stopped run's
    assert rows[0][0] == str(run_path("runs", resolve("nqueens", "gram", "cpu")))
    assert sorted(p.name for p in ROOT.iterdir()) == before
