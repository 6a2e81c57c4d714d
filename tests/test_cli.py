"""The `gram-bench` CLI: one-line errors with exit code 2, the run record of a smoke run,
re-evaluation at another width/depth, and what happens when a run directory exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gram_bench.harness.config import load_config, resolve
from gram_bench.core.io import read_jsonl, read_jsonl_gz
from gram_bench.harness.build import build
from gram_bench.metrics import summarize

SMOKE = ("--profile", "smoke", "--device", "cpu")


def run_args(tmp_path, *extra, task="nqueens", model="gram"):
    return ("run", "--task", task, "--model", model, *SMOKE,
            "--runs-dir", tmp_path / "runs", "--data-dir", tmp_path / "data", *extra)


def assert_usage_error(res, phrase):
    assert res.exit_code == 2, res.output
    assert phrase in res.text, res.output
    assert "Traceback" not in res.output
    assert res.text.startswith("error:")


# ----------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("kwargs, extra, phrase", [
    ({"task": "nqeens"}, (), "Did you mean 'nqueens'"),
    ({"model": "grm"}, (), "Did you mean 'gram'"),
    ({"model": "resnet"}, (), "Unknown model 'resnet'"),
    ({}, ("--profile", "smok"), "Did you mean 'smoke'"),
    ({}, ("--set", "model.hiden=3"), "Did you mean 'model.hidden'"),
    ({}, ("--set", "train.lr=abc"), "'train.lr' must be of type float"),
    ({}, ("--set", "train.lr"), "--set expects key=value"),
    ({}, ("--set", "task.n=30"), "n must be between 4 and 12"),
    ({}, ("--samples", "0"), "--samples must be at least 1"),
    ({}, ("--seeds", "a,b"), "--seeds expects comma-separated integers"),
    ({}, ("--seeds", "-1"), "non-negative"),
    ({}, ("--resume", "--force"), "contradict"),
    ({}, ("--device", "tpu"), "Unknown device 'tpu'"),
])
def test_run_usage_errors(cli, tmp_path, kwargs, extra, phrase):
    res = cli(*run_args(tmp_path, *extra, **kwargs))
    assert_usage_error(res, phrase)
    assert not (tmp_path / "runs").exists()  # nothing is written before the arguments check out
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_run_cuda_without_gpu(cli, tmp_path):
    assert_usage_error(cli(*run_args(tmp_path, "--device", "cuda")), "no CUDA GPU is visible")


def test_list(cli):
    res = cli("list")
    assert res.exit_code == 0, res.output
    for name in ("nqueens", "gram", "trm", "smoke", "cpu", "paper"):
        assert name in res.text
    assert_usage_error(cli("list", "taks"), "Unknown list 'taks'")


def test_eval_usage_errors(cli, tmp_path, gram_run, copy_run, data_root):
    assert_usage_error(cli("eval", tmp_path), "is not a run directory")
    assert_usage_error(cli("eval", tmp_path / "nope"), "is not a run directory")
    rdir = copy_run(gram_run)
    assert_usage_error(cli("eval", rdir, "--samples", "0"), "--samples must be at least 1")
    assert_usage_error(cli("eval", rdir, "--steps", "0"), "--steps must be at least 1")
    assert_usage_error(cli("eval", rdir, "--select", "best"), "--select must be one of first, vote, lprm, halt")
    assert_usage_error(cli("eval", rdir, "--limit", "-1", "--device", "cpu"), "--limit must be 0")
    (rdir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert_usage_error(cli("eval", rdir, "--device", "cpu", "--data-dir", data_root), "Cannot load checkpoint")
    assert_usage_error(cli("eval", rdir, "--device", "cpu", "--data-dir", tmp_path / "empty"),
                       "gram-bench data build --task nqueens")
    (rdir / "checkpoint.pt").unlink()
    assert_usage_error(cli("eval", rdir), "has no checkpoint.pt")
    assert sorted(p.name for p in (rdir / "eval").iterdir()) == ["test.examples.jsonl.gz", "test.json"]


def test_error_message_with_brackets_is_printed_verbatim(cli, tmp_path):
    d = tmp_path / "x[bold]y"
    d.mkdir()
    res = cli("eval", d)
    assert res.exit_code == 2
    assert "x[bold]y is not a run directory" in res.text


# ----------------------------------------------------------------------------- the run record


@pytest.mark.parametrize("model", ["gram", "trm"])
def test_smoke_run_record(request, model, data_root):
    rdir = request.getfixturevalue(f"{model}_run")
    assert rdir.parts[-3:-1] == ("nqueens", model)
    assert (rdir / "status").read_text().strip() == "finished"
    for name in ("config.yaml", "env.json", "train.jsonl", "checkpoint.pt", "eval/test.json",
                 "eval/test.examples.jsonl.gz"):
        assert (rdir / name).is_file(), name
    assert not [p for p in rdir.rglob("*.tmp")]  # atomic writes leave no temp files

    cfg_yaml = yaml.safe_load((rdir / "config.yaml").read_text())
    assert {"task", "model", "train", "eval", "seed", "profile"} <= set(cfg_yaml)
    assert cfg_yaml["profile"] == "smoke" and cfg_yaml["seed"] == 0 and cfg_yaml["model"]["name"] == model
    cfg = load_config(rdir / "config.yaml")
    assert cfg == resolve("nqueens", model, "smoke")

    env = json.loads((rdir / "env.json").read_text())
    assert {"torch", "device", "start_time", "end_time", "params", "python", "git_commit"} <= set(env)
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert env["start_time"] <= env["end_time"]
    _, fresh = build(cfg, data_root, torch.device("cpu"))
    assert env["params"] == fresh.num_params() > 0

    rows = read_jsonl(rdir / "train.jsonl")
    assert all("step" in r for r in rows)
    loss_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in loss_rows] == [2, 4, 6]  # log_every=2, steps=6
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in loss_rows)  # finite, positive CE
    assert [r["step"] for r in rows if "eval_accuracy_first" in r] == [4]  # eval_every=4

    summary = json.loads((rdir / "eval/test.json").read_text())
    assert summary["schema_version"] == 2 and summary["flops_per_answer"] > 0
    assert (summary["n_examples"], summary["samples"], summary["steps"], summary["split"]) == (16, 3, 2, "test")
    assert summary["selection"] == "vote" and summary["ema"] is True
    assert summary["model_params"] == env["params"]
    m = summary["metrics"]
    assert ("accuracy_lprm" in m) == (model == "gram")  # only GRAM has an LPRM value head
    for k in ("accuracy_first", "accuracy_vote", "accuracy_oracle", "coverage", "coverage_pooled"):
        assert {"value", "ci_low", "ci_high"} <= set(m[k]), k
        assert 0 <= m[k]["ci_low"] <= m[k]["value"] <= m[k]["ci_high"] <= 1, k
        assert m[k]["n"] == 16

    records = read_jsonl_gz(rdir / "eval/test.examples.jsonl.gz")
    assert len(records) == 16
    for r in records:
        assert {"id", "n_solutions", "valid", "exact", "conflicts", "selected", "scores"} <= set(r)
        assert len(r["valid"]) == len(r["exact"]) == len(r["conflicts"]) == 3
    # the per-example records are the source of truth: the summary recomputes exactly
    assert summarize(records) == m


def test_records_agree_with_the_task(gram_run, nq8):
    """ids and n_solutions come from the test split; valid/conflicts of the voted answer
    are what the verifier says of the stored answer."""
    es = nq8.eval_set("test")
    row = {int(i): k for k, i in enumerate(es.ids)}
    records = read_jsonl_gz(gram_run / "eval/test.examples.jsonl.gz")
    assert len({r["id"] for r in records}) == 16
    for r in records:
        k = row[r["id"]]
        assert r["n_solutions"] == int(es.n_solutions[k])
        answer = torch.tensor([int(ch) for ch in r["answer"]])
        assert answer.shape == (64,)
        out = nq8.verify(es.inputs[k:k + 1], answer[None, None])
        v = r["selected"]["vote"]
        assert bool(out["valid"][0, 0]) == bool(r["valid"][v])
        assert int(out["conflicts"][0, 0]) == r["conflicts"][v]
        assert r["distinct_valid"] <= min(r["n_solutions"], sum(r["valid"]))


def test_gram_samples_differ_in_the_run(gram_run):
    records = read_jsonl_gz(gram_run / "eval/test.examples.jsonl.gz")
    assert max(r["distinct"] for r in records) > 1


def test_trm_samples_are_identical_in_the_run(trm_run):
    records = read_jsonl_gz(trm_run / "eval/test.examples.jsonl.gz")
    assert all(r["distinct"] == 1 for r in records)
    assert all(len(set(r["valid"])) == 1 for r in records)


# ----------------------------------------------------------------------------- eval at another width/depth


def test_eval_other_width_and_depth(cli, gram_run, copy_run, data_root):
    rdir = copy_run(gram_run)
    before = (rdir / "eval/test.json").read_bytes()
    res = cli("eval", rdir, "--samples", "2", "--steps", "3", "--device", "cpu", "--data-dir", data_root)
    assert res.exit_code == 0, res.output
    assert (rdir / "eval/test.json").read_bytes() == before
    s = json.loads((rdir / "eval/test-n2-s3.json").read_text())
    assert (s["samples"], s["steps"], s["n_examples"], s["selection"]) == (2, 3, 16, "vote")
    recs = read_jsonl_gz(rdir / "eval/test-n2-s3.examples.jsonl.gz")
    assert len(recs) == 16 and all(len(r["valid"]) == 2 for r in recs)
    assert summarize(recs) == s["metrics"]
    # the same test inputs as the run's own evaluation
    orig = read_jsonl_gz(rdir / "eval/test.examples.jsonl.gz")
    assert [r["id"] for r in recs] == [r["id"] for r in orig]


def test_eval_with_limit_keeps_the_runs_own_summary(cli, gram_run, copy_run, data_root):
    rdir = copy_run(gram_run)
    before = (rdir / "eval/test.json").read_bytes()
    res = cli("eval", rdir, "--limit", "4", "--device", "cpu", "--data-dir", data_root)
    assert res.exit_code == 0, res.output
    assert (rdir / "eval/test.json").read_bytes() == before


# ----------------------------------------------------------------------------- existing run directories


@pytest.mark.parametrize("extra", [(), ("--resume",)])
def test_finished_run_is_not_rerun(cli, gram_run, runs_root, data_root, extra):
    """A finished run is skipped, with or without --resume (so `results/reproduce.sh` can pass
    --resume to every command), and nothing in it is rewritten."""
    mtimes = {p: p.stat().st_mtime_ns for p in gram_run.rglob("*") if p.is_file()}
    res = cli("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", runs_root,
              "--data-dir", data_root, *extra)
    assert res.exit_code == 0, res.output
    assert "already finished" in res.text
    assert {p: p.stat().st_mtime_ns for p in gram_run.rglob("*") if p.is_file()} == mtimes


def test_dry_run_prints_each_run_directory_and_status_and_runs_nothing(cli, gram_run, runs_root, data_root):
    before = sorted(p for p in runs_root.rglob("*"))
    res = cli("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", runs_root, "--data-dir", data_root,
              "--seeds", "0,7", "--dry-run")
    assert res.exit_code == 0, res.output
    lines = [line.split("\t") for line in res.stdout.strip().splitlines()]
    assert lines[0] == [str(gram_run), "finished"]
    assert Path(lines[1][0]).parent == gram_run.parent and "-seed7-" in lines[1][0] and lines[1][1] == "new"
    assert sorted(p for p in runs_root.rglob("*")) == before  # nothing written


def test_unfinished_run_needs_resume(cli, gram_run, copy_run, data_root):
    rdir = copy_run(gram_run)
    (rdir / "status").write_text("running\n")
    runs = rdir.parents[2]
    res = cli("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", runs, "--data-dir", data_root)
    assert_usage_error(res, "--resume")
    assert "status: running" in res.text and "--force" in res.text
    assert (rdir / "status").read_text() == "running\n"


def test_debug_shows_the_exception(cli, tmp_path):
    from gram_bench.core.errors import UsageError

    res = cli("--debug", *run_args(tmp_path, task="nqeens"))
    assert isinstance(res.exception, UsageError)
    assert "Did you mean 'nqueens'" in str(res.exception)
    assert cli(*run_args(tmp_path, task="nqeens")).exit_code == 2  # the flag does not stick
