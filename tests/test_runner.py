"""The runner: checkpoint contents and round trip, resuming a stopped run, and its helpers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import gram_bench.harness.runner as runner
import gram_bench.harness.training as training
from gram_bench.harness.build import build
from gram_bench.harness.checkpoint import load_checkpoint
from gram_bench.harness.config import load_config, resolve
from gram_bench.core.errors import UsageError
from gram_bench.harness.evaluate import eval_name, eval_subset
from gram_bench.core.io import atomic_write_jsonl_gz, read_jsonl, read_jsonl_gz
from gram_bench.harness.rundir import read_status, run_path
from gram_bench.tasks.nqueens import NQueens

from conftest import assert_same, quiet

CPU = torch.device("cpu")
Z0 = {"gram": ("h0", "l0"), "trm": ("y0", "z0")}


# ----------------------------------------------------------------------------- checkpoint


@pytest.mark.parametrize("model", ["gram", "trm"])
def test_checkpoint_round_trip(request, model, data_root):
    rdir = request.getfixturevalue(f"{model}_run")
    ck = torch.load(rdir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {"step", "model", "optimizer", "ema", "sampler", "carry", "rng", "fingerprint", "config"} <= set(ck)
    cfg = load_config(rdir / "config.yaml")
    assert ck["step"] == cfg.train.steps == 6
    assert ck["fingerprint"] == cfg.fingerprint() and ck["config"] == cfg.to_dict()
    assert ck["sampler"] == {"epoch": 0, "pos": 6 * cfg.train.batch_size}
    assert isinstance(ck["rng"]["torch"], torch.Tensor) and ck["rng"]["cuda"] is None
    assert int(ck["optimizer"]["state"][0]["step"]) == 6
    assert set(ck["ema"]) == {k for k, v in ck["model"].items() if v.dtype.is_floating_point}
    carry = ck["carry"]
    assert carry["steps"].shape == carry["halted"].shape == (cfg.train.batch_size,)
    assert int(carry["steps"].max()) <= cfg.model.n_sup
    assert len(carry["state"]) == 2

    # A fresh model from another seed has another z0 until the checkpoint is loaded.
    _, fresh = build(dataclasses.replace(cfg, seed=cfg.seed + 1), data_root, CPU)
    for name in Z0[model]:
        assert not torch.equal(fresh.state_dict()[name], ck["model"][name]), name
    fresh.load_state_dict(ck["model"])
    for name in Z0[model]:
        assert torch.equal(getattr(fresh, name), ck["model"][name]), name
    for k, v in ck["model"].items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # z0 is fixed: the checkpoint's is the one the run's own seed draws, untouched by training
    _, same_seed = build(cfg, data_root, CPU)
    for name in Z0[model]:
        assert torch.equal(getattr(same_seed, name), ck["model"][name]), name
    # and the loaded model samples what the trained one sampled
    es = NQueens(cfg.task, data_root).eval_set("test")
    fresh.eval()
    out = fresh.sample(es.inputs[:2], es.puzzle_ids[:2], 2, 2)
    assert out.preds.shape == (2, 2, 64)


def test_load_checkpoint_refuses_garbage(tmp_path):
    p = tmp_path / "checkpoint.pt"
    p.write_bytes(b"\x00garbage")
    with pytest.raises(UsageError, match="Cannot load checkpoint"):
        load_checkpoint(p)


# ----------------------------------------------------------------------------- resume


def test_resume_after_interrupt_matches_uninterrupted(cli, gram_run, data_root, tmp_path, monkeypatch):
    """Stop a smoke run (steps=6, checkpoints at 3 and 6) between checkpoints, then resume it.

    The interrupt comes from the periodic eval at step 4 (eval_every=4): after the step-3
    checkpoint and after step 4's update, so one step of work is lost and redone. The
    resumed run must end where the uninterrupted `gram_run` (same config, same seed) ended,
    bit for bit."""
    cfg = resolve("nqueens", "gram", "smoke")
    runs = tmp_path / "runs"
    rdir = run_path(runs, cfg)
    assert rdir.name == gram_run.name

    seen = []

    def interrupt(*args, **kwargs):
        seen.append(1)
        raise KeyboardInterrupt

    with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(training, "periodic_eval", interrupt)
        runner.run(cfg, runs, data_root, "cpu", console=quiet())
    assert seen == [1]
    assert read_status(rdir).startswith("failed: interrupted")
    assert torch.load(rdir / "checkpoint.pt", weights_only=True)["step"] == 3
    assert not (rdir / "eval").exists()
    assert [r["step"] for r in read_jsonl(rdir / "train.jsonl")] == [2, 4]

    args = ("run", "--task", "nqueens", "--model", "gram", "--profile", "smoke", "--device", "cpu",
            "--runs-dir", runs, "--data-dir", data_root)
    refused = cli(*args)
    assert refused.exit_code == 2 and "--resume" in refused.text
    res = cli(*args, "--resume")
    assert res.exit_code == 0, res.output
    assert "resumed from step 3" in res.text
    assert read_status(rdir) == "finished"

    # train.jsonl continues: the line logged after the checkpoint is dropped, no step repeats
    rows = read_jsonl(rdir / "train.jsonl")
    ref_rows = read_jsonl(gram_run / "train.jsonl")
    loss_steps = [r["step"] for r in rows if "loss" in r]
    assert loss_steps == [2, 4, 6] == [r["step"] for r in ref_rows if "loss" in r]
    assert [r["step"] for r in rows if "eval_accuracy_first" in r] == [4]
    assert rows[0]["loss"] == ref_rows[0]["loss"]
    assert rows[-1]["loss"] == ref_rows[-1]["loss"]  # steps 5-6: the same updates as without the stop

    ck = torch.load(rdir / "checkpoint.pt", weights_only=True)
    ref = torch.load(gram_run / "checkpoint.pt", weights_only=True)
    assert ck["step"] == ref["step"] == 6
    for k in ref["model"]:
        assert torch.equal(ck["model"][k], ref["model"][k]), k
    for part in ("ema", "optimizer", "sampler", "carry", "rng", "fingerprint", "config"):
        assert_same(ck[part], ref[part], part)

    # so the evaluation is the same too (timings aside)
    assert read_jsonl_gz(rdir / "eval/test.examples.jsonl.gz") == \
        read_jsonl_gz(gram_run / "eval/test.examples.jsonl.gz")


def test_resume_refuses_a_checkpoint_from_another_config(tmp_path, gram_run, copy_run, data_root):
    rdir = copy_run(gram_run)
    ck = torch.load(rdir / "checkpoint.pt", weights_only=True)
    ck["fingerprint"] = "00000000"
    torch.save(ck, rdir / "checkpoint.pt")
    (rdir / "status").write_text("failed: interrupted\n")
    cfg = resolve("nqueens", "gram", "smoke")
    with pytest.raises(UsageError, match="another config"):
        runner.run(cfg, rdir.parents[2], data_root, "cpu", resume=True, console=quiet())
    status = read_status(rdir)
    assert status.startswith("failed: ") and "written by another config" in status


# ----------------------------------------------------------------------------- helpers


def test_epoch_sampler_covers_each_epoch_and_resumes():
    s = training.EpochSampler(10, seed=3)
    first = torch.cat([s.next(4), s.next(4), s.next(4)])
    assert sorted(first[:10].tolist()) == list(range(10))
    assert s.state_dict() == {"epoch": 1, "pos": 2}
    t = training.EpochSampler(10, seed=3)
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.next(13), s.next(13))
    assert not torch.equal(training.EpochSampler(10, seed=4).next(10), training.EpochSampler(10, seed=3).next(10))


def test_ema_warmup_decay_and_apply():
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = training.EMA(m, decay=0.999)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update(m, step=0)  # decay min(0.999, 1/10) = 0.1
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.1 * 1 + 0.9 * 3))
    ema.update(m, step=10**6)  # decay 0.999
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.999 * 2.8 + 0.001 * 3))
    with ema.applied(m):
        assert torch.allclose(m.weight, ema.shadow["weight"])
    assert torch.equal(m.weight, torch.full((1, 2), 3.0))


def test_lr_warmup():
    tc = resolve("nqueens", "gram", "smoke").train  # lr 1e-3, warmup 2
    assert [training.lr_at(s, tc) for s in range(4)] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    tc = resolve("nqueens", "gram", "smoke", {"train.schedule": "cosine", "train.steps": 6}).train  # warmup 2
    assert [training.lr_at(s, tc) for s in range(7)] == pytest.approx(
        [5e-4, 1e-3, 1e-3, 1e-3 * (1 + 2 ** -0.5) / 2, 5e-4, 1e-3 * (1 - 2 ** -0.5) / 2, 0.0])


def test_eval_subset_and_name():
    assert eval_subset(10, 0).tolist() == list(range(10))
    assert eval_subset(10, 20).tolist() == list(range(10))
    sub = eval_subset(773, 16)
    assert len(sub) == 16 and np.all(np.diff(sub) > 0) and sub.max() < 773
    assert np.array_equal(sub, eval_subset(773, 16))
    assert eval_name("test", 3, 2, own=True) == "test"
    assert eval_name("test", 2, 3) == "test-n2-s3"
    assert eval_name("test", 3, 2, limit=4) == "test-n3-s2-l4"


def test_jsonl_gz_is_byte_deterministic(tmp_path):
    rows = [{"id": 1, "valid": [1, 0]}, {"id": 2, "valid": [0, 0]}]
    atomic_write_jsonl_gz(tmp_path / "a.jsonl.gz", rows)
    atomic_write_jsonl_gz(tmp_path / "b.jsonl.gz", rows)
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert read_jsonl_gz(tmp_path / "a.jsonl.gz") == rows
