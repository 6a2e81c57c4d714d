"""`gram-bench bench`: one process times training and sampling, counts FLOPs, writes JSON."""

from __future__ import annotations

import json

import pytest

from gram_bench.harness.bench import compare_settings, default_output, matmul_flops, parse_compare
from gram_bench.core.errors import UsageError

BENCH = ("bench", "--task", "nqueens", "--model", "trm", "--profile", "smoke", "--device", "cpu", "--steps", "2",
         "--sample-batch", "2")


def test_bench_writes_every_figure(cli, tmp_path, data_root):
    out = tmp_path / "b.json"
    res = cli(*BENCH, "--warmup", "1", "--samples", "1,4", "--set", "train.precision=fp32", "--data-dir", data_root,
              "-o", out)
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    (s,) = r["settings"]
    t = s["train"]
    assert len(t["losses"]) == 2 and t["step_s_median"] > 0 and t["flops_per_step"] > 0
    assert t["achieved_flops_per_s"] == pytest.approx(t["flops_per_step"] / t["step_s_median"])
    assert t["utilisation"] == pytest.approx(t["achieved_flops_per_s"] / t["matmul"]["flops_per_s"])
    assert t["matmul"]["dtype"] == "float32"
    assert set(s["sample"]) >= {"1", "4", "width_speedup"}
    assert s["sample"]["4"]["flops_per_answer"] > 0 and r["peak_memory_bytes"] > 0
    assert "answers/s at N=4" in res.text and "utilisation" in res.text


def test_bench_compare_alternates_settings_and_reports_ratios(cli, tmp_path, data_root):
    out = tmp_path / "c.json"
    res = cli(*BENCH, "--warmup", "0", "--samples", "1", "--compare", "train.batch_size=4,8", "--data-dir", data_root,
              "-o", out)
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert [s["label"] for s in r["settings"]] == ["train.batch_size=4", "train.batch_size=8"]
    assert [s["batch"] for s in r["settings"]] == [4, 8]
    (ratio,) = r["ratios"]
    a, b = (s["train"]["step_s_median"] for s in r["settings"])
    assert ratio["step_time_speedup"] == pytest.approx(a / b)


def test_several_compares_are_zipped_into_settings(cli, tmp_path, data_root):
    # the i-th values of every --compare form setting i: here (batch 4, lr 1e-3), (batch 8, lr 2e-3)
    out = tmp_path / "z.json"
    res = cli(*BENCH, "--warmup", "0", "--samples", "1", "--compare", "train.batch_size=4,8",
              "--compare", "train.lr=1e-3,2e-3", "--data-dir", data_root, "-o", out)
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert [s["label"] for s in r["settings"]] == ["train.batch_size=4 train.lr=0.001",
                                                   "train.batch_size=8 train.lr=0.002"]
    assert [s["batch"] for s in r["settings"]] == [4, 8]
    assert [s["sets"]["train.lr"] for s in r["settings"]] == [1e-3, 2e-3]
    assert r["compare"] == {"key": "train.batch_size+train.lr", "values": [[4, 1e-3], [8, 2e-3]]}
    assert default_output(r).name.endswith("-batch_size+lr.json")


@pytest.mark.parametrize("specs, phrase", [
    (["train.batch_size=4,8", "train.lr=1e-3,2e-3,3e-3"], "same number of values"),
    (["train.lr=1e-3,2e-3", "train.lr=3e-3,4e-3"], "names a key twice"),
])
def test_mismatched_compares_are_refused(specs, phrase):
    with pytest.raises(UsageError, match=phrase):
        compare_settings(specs)


@pytest.mark.parametrize("spec", ["train.precision", "train.precision=fp32", "=a,b"])
def test_bad_compare_specs_are_refused(spec):
    with pytest.raises(UsageError, match="KEY=V1,V2"):
        parse_compare(spec)


def test_matmul_reference_counts_two_n_cubed():
    import torch

    m = matmul_flops(torch.device("cpu"), torch.float32, n=64, repeats=2)
    assert m["flops_per_s"] == pytest.approx(2 * 64 ** 3 / m["seconds"])
    assert m["flops_per_s"] >= m["median_flops_per_s"]  # the peak is the best repeat


def test_train_compile_compiles_every_block_stack_in_place(monkeypatch, data_root):
    """`train.compile=true` (and `bench --compile`) compiles the block stacks in place, so
    parameter names, and so checkpoints, are those of the eager model; the flag is an
    execution setting, outside the run's identity."""
    import torch

    from gram_bench.harness.config import resolve
    from gram_bench.harness.build import build
    from gram_bench.models.layers import Stack

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((type(self), kw)))
    eager = resolve("nqueens", "gram", "smoke", {})
    cfg = resolve("nqueens", "gram", "smoke", {"train.compile": True})
    assert cfg.fingerprint() == eager.fingerprint()
    _, model = build(cfg, data_root, torch.device("cpu"))
    assert compiled == [(Stack, {"dynamic": False})] * 2  # f_L and f_H
    _, plain = build(eager, data_root, torch.device("cpu"))
    assert list(model.state_dict()) == list(plain.state_dict()) and len(compiled) == 2


def test_train_compile_without_a_cpp_compiler_is_refused_up_front(monkeypatch, cli, tmp_path, data_root):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    res = cli("run", "--task", "nqueens", "--model", "trm", "--profile", "smoke", "--device", "cpu",
              "--set", "train.compile=true", "--data-dir", data_root, "--runs-dir", tmp_path / "runs")
    assert res.exit_code == 2 and "needs a C++ compiler" in res.text, res.output
    assert not (tmp_path / "runs").exists()
