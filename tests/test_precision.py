"""`train.precision=auto` on a CPU: measured per phase, recorded, reused, never the slower dtype."""

from __future__ import annotations

import json

import pytest
import torch

from gram_bench.harness import precision
from gram_bench.harness.config import resolve
from gram_bench.harness.precision import Precision, fixed
from gram_bench.harness.rundir import run_path

from conftest import SMOKE


def test_explicit_dtypes_and_cuda_need_no_measurement():
    cpu = torch.device("cpu")
    assert fixed("fp32", cpu) == Precision(False, False, "asked")
    assert fixed("bf16", cpu) == Precision(True, True, "asked")
    assert fixed("auto", cpu) is None


@pytest.mark.parametrize("train_t, sample_t", [((0.2, 0.3), (0.5, 0.4)), ((0.3, 0.2), (0.4, 0.5)),
                                               ((0.2, 0.9), (0.2, 0.9))])
def test_the_probe_takes_the_faster_dtype_of_each_phase(monkeypatch, train_t, sample_t):
    """Whatever the timings, the choice of each phase is the dtype measured faster."""
    from test_models import GRAM_CFG, batch, make
    from gram_bench.models.gram import GRAM

    answers = iter([dict(zip(("fp32", "bf16"), train_t)), dict(zip(("fp32", "bf16"), sample_t))])
    calls = []

    def fake_race(run, n):
        run(False)  # the callables run: a training step and a sampling batch of the copy
        calls.append(n)
        return next(answers)

    monkeypatch.setattr(precision, "_race", fake_race)
    model = make(GRAM, GRAM_CFG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    b = batch(4)

    def step(twin, opt, bb, carry, bf16):
        loss, _, carry = twin.loss(bb, carry)
        loss.backward()
        opt.step()
        return carry

    rng = torch.get_rng_state()
    p = precision.probe(model, b, b["inputs"][:2], b["puzzle_ids"][:2], 3, torch.device("cpu"), step)
    assert p.train == (train_t[1] < train_t[0]) and p.sample == (sample_t[1] < sample_t[0])
    assert p.how == "probe" and set(p.timings) == {"train_step", "sample_batch"}
    assert torch.equal(torch.get_rng_state(), rng)  # the run's RNG stream is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # so is the model


def test_auto_run_records_its_choice_and_reuses_it_on_resume(cli, tmp_path, data_root):
    args = ("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", tmp_path, "--data-dir", data_root,
            "--set", "train.precision=auto")
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert "precision: train" in res.text and "probe" in res.text
    rdir = run_path(tmp_path, resolve("nqueens", "gram", "smoke", {"train.precision": "auto"}))
    rec = json.loads((rdir / "env.json").read_text())["precision"]
    assert rec["how"] == "probe"
    for phase, key in (("train_step", "train"), ("sample_batch", "sample")):
        t = rec["timings"][phase]
        assert rec[key] == (t["bf16"] < t["fp32"])  # never the dtype measured slower
    assert json.loads((rdir / "env.json").read_text())["bf16_autocast"] == rec["train"]
    (rdir / "status").write_text("failed: interrupted (resume with --resume)\n")  # as a stopped run
    res = cli(*args, "--resume")
    assert res.exit_code == 0, res.output
    assert "recorded" in res.text  # a resumed run keeps the dtype it trained in


@pytest.mark.parametrize("eager, compiled", [(0.3, 0.2), (0.2, 0.3)])
def test_compile_auto_compiles_only_when_the_compiled_step_was_measured_faster(monkeypatch, cli, tmp_path,
                                                                              data_root, eager, compiled):
    """`train.compile=auto`: the run's own probe decides, the choice and its timings go into
    env.json, and the model is compiled exactly when the compiled step was faster."""
    from gram_bench.harness import build

    compiled_models = []
    monkeypatch.setattr(build, "probe_compile", lambda *a, **k: {"eager": eager, "compiled": compiled})
    monkeypatch.setattr(build, "compile_cores", lambda m: compiled_models.append(m) or 2)
    args = ("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", tmp_path, "--data-dir", data_root,
            "--set", "train.compile=auto")
    res = cli(*args)
    assert res.exit_code == 0, res.output
    rdir = run_path(tmp_path, resolve("nqueens", "gram", "smoke", {"train.compile": "auto"}))
    rec = json.loads((rdir / "env.json").read_text())["precision"]
    assert rec["compile_how"] == "probe" and rec["timings"]["compile_step"] == {"eager": eager, "compiled": compiled}
    assert rec["compile"] == (compiled < eager) == bool(compiled_models)
    assert ("compiled (" in res.text) == (compiled < eager)


def test_compile_auto_stays_eager_without_a_cpp_compiler(monkeypatch, cli, tmp_path, data_root):
    from gram_bench.harness import build

    monkeypatch.setattr(build, "has_compiler", lambda device: False)
    monkeypatch.setattr(build, "probe_compile", lambda *a, **k: pytest.fail("no probe without a compiler"))
    res = cli("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", tmp_path, "--data-dir", data_root,
              "--set", "train.compile=auto")
    assert res.exit_code == 0, res.output
    assert "eager" in res.text and "no C++ compiler" in res.text


def test_the_compile_probe_times_an_eager_and_a_compiled_copy_and_leaves_the_model(monkeypatch):
    from test_models import GRAM_CFG, batch, make
    from gram_bench.models.gram import GRAM

    model = make(GRAM, GRAM_CFG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = []
    b = batch(4)

    def step(twin, opt, bb, carry, bf16):
        loss, _, carry = twin.loss(bb, carry)
        loss.backward()
        opt.step()
        return carry

    rng = torch.get_rng_state()
    t = precision.probe_compile(model, b, torch.device("cpu"), step, False, compiled.append)
    assert set(t) == {"eager", "compiled"} and all(v > 0 for v in t.values())
    assert len(compiled) == 1 and compiled[0] is not model  # a copy was compiled, not the model
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
