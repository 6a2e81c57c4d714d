"""Data parallel under torchrun: 2 gloo processes on CPU train to the same parameters as one
process with the same global batch, and a sharded eval writes one record per test input."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from gram_bench.harness import dist
from gram_bench.harness.config import resolve
from gram_bench.core.errors import UsageError
from gram_bench.harness.rundir import run_path

from conftest import SMOKE

# deterministic training (no ACT exploration draws): one process and two must agree
ARGS = ("run", "--task", "nqueens", "--model", "trm", *SMOKE, "--set", "model.act=false")


def _load(rdir):
    ck = torch.load(rdir / "checkpoint.pt", map_location="cpu", weights_only=True)
    with gzip.open(rdir / "eval" / "test.examples.jsonl.gz", "rt") as f:
        recs = [json.loads(line) for line in f]
    return ck, recs, json.loads((rdir / "eval" / "test.json").read_text())


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, data_root):
    from typer.testing import CliRunner

    from gram_bench.harness.cli import app

    root = tmp_path_factory.mktemp("ddp")
    cfg = resolve("nqueens", "trm", "smoke", {"model.act": False})
    out = {}
    for n in (1, 2):
        runs = root / f"runs{n}"
        res = CliRunner().invoke(app, [*ARGS, "--runs-dir", str(runs), "--data-dir", str(data_root), "--nproc", str(n)])
        assert res.exit_code == 0, res.output
        out[n] = _load(run_path(runs, cfg))
    return out


def test_two_processes_train_the_same_parameters_as_one(two_runs):
    (ck1, _, _), (ck2, _, _) = two_runs[1], two_runs[2]
    assert ck1["step"] == ck2["step"] and ck2["world_size"] == 2 and len(ck2["ranks"]) == 2
    for k, v in ck1["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(ck2["model"][k], v, rtol=1e-5, atol=1e-5)


def test_sharded_eval_writes_exactly_one_record_per_test_input(two_runs):
    (_, r1, s1), (_, r2, s2) = two_runs[1], two_runs[2]
    ids = [r["id"] for r in r2]
    assert len(ids) == len(set(ids)) == s2["n_examples"] == s1["n_examples"]
    assert ids == [r["id"] for r in r1]  # the same inputs, in the same order
    assert s2["world_size"] == 2 and s1["world_size"] == 1


def test_bad_nproc_is_refused(cli, tmp_path):
    res = cli(*ARGS, "--runs-dir", tmp_path, "--nproc", "0")
    assert res.exit_code == 2 and "--nproc must be at least 1" in res.text


def test_a_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 4)
    assert dist.local_batch(16) == 4
    with pytest.raises(UsageError, match="multiple of 4"):
        dist.local_batch(18)


def test_single_process_helpers_are_no_ops():
    assert dist.world_size() == 1 and dist.is_main() and not dist.launched()
    idx = torch.arange(10)
    assert torch.equal(dist.my_slice(idx), idx)
    assert dist.gather_objects({"a": 1}) == [{"a": 1}] and dist.any_rank(True) and not dist.any_rank(False)


@pytest.mark.parametrize("argv, code", [(["list", "tasks"], 0), (["run", "--task", "nope", "--model", "gram"], 2)])
def test_the_cli_leaves_the_process_group_on_every_exit(monkeypatch, argv, code):
    """A group left alive at interpreter exit kills the rank with SIGABRT (torchrun then fails
    the run at random): `main` destroys it on success and on error alike."""
    import socket
    import sys

    import torch.distributed as tdist

    from gram_bench.harness.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    monkeypatch.setattr(sys, "argv", ["gram-bench", *argv])
    try:
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == code
        assert not tdist.is_initialized()
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
