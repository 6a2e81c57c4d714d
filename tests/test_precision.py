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
    res = cli(*args, "--resume")
    assert res.exit_code == 0, res.output
    assert "recorded" in res.text  # a resumed run keeps the dtype it trained in
