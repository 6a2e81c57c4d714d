"""`gram-bench eval` over a width x depth grid and with inference-only overrides, the
sampling cost in eval JSON, and `gram-bench ablation --dry-run`."""

from __future__ import annotations

import gzip
import json

import yaml

from test_cli import assert_usage_error


def read_jsonl_gz(p):
    with gzip.open(p, "rt") as f:
        return [json.loads(line) for line in f]


def test_eval_grid_writes_every_pair(cli, gram_run, copy_run, data_root):
    rdir = copy_run(gram_run)
    res = cli("eval", rdir, "--samples", "1,2", "--steps", "1,3", "--device", "cpu", "--data-dir", data_root)
    assert res.exit_code == 0, res.output
    for n in (1, 2):
        for d in (1, 3):
            s = json.loads((rdir / f"eval/test-n{n}-s{d}.json").read_text())
            assert (s["samples"], s["steps"]) == (n, d)
            assert s["flops_per_answer"] > 0 and s["schema_version"] == 2
    deeper = json.loads((rdir / "eval/test-n1-s3.json").read_text())["flops_per_answer"]
    shallow = json.loads((rdir / "eval/test-n1-s1.json").read_text())["flops_per_answer"]
    assert 2.5 * shallow < deeper < 3.5 * shallow  # cost grows with depth
    recs = read_jsonl_gz(rdir / "eval/test-n2-s3.examples.jsonl.gz")
    assert all(len(r["answer_ids"]) == 2 for r in recs)


def test_eval_inference_override_is_tagged(cli, trm_run, copy_run, data_root):
    rdir = copy_run(trm_run)
    res = cli("eval", rdir, "--samples", "4", "--set", "model.decode=sample", "--device", "cpu",
              "--data-dir", data_root)
    assert res.exit_code == 0, res.output
    recs = read_jsonl_gz(rdir / "eval/test-n4-s2+decode=sample.examples.jsonl.gz")
    assert any(r["distinct"] > 1 for r in recs)  # an untrained TRM sampling its decoder gives different answers
    assert yaml.safe_load((rdir / "config.yaml").read_text())["model"]["decode"] == "argmax"  # the run is untouched


def test_eval_refuses_training_overrides_and_bad_lists(cli, trm_run, copy_run, data_root):
    rdir = copy_run(trm_run)
    assert_usage_error(cli("eval", rdir, "--set", "model.hidden=64", "--data-dir", data_root),
                       "only takes inference-only model fields")
    assert_usage_error(cli("eval", rdir, "--set", "model.decode=greedy", "--data-dir", data_root),
                       "decode must be one of argmax, sample")
    assert_usage_error(cli("eval", rdir, "--samples", "1,x", "--data-dir", data_root), "comma-separated list")
    assert_usage_error(cli("eval", rdir, "--steps", "0", "--data-dir", data_root), "--steps must be at least 1")


def test_ablation_dry_run_lists_the_grid(cli, tmp_path):
    res = cli("ablation", "--task", "nqueens", "--profile", "smoke", "--dry-run", "--runs-dir", tmp_path / "runs")
    assert res.exit_code == 0, res.output
    for key in ("gram", "no-guidance", "noise-only", "mean-only", "trm-stochastic-decoder", "trm-random-z0",
                "looped-tf", "looped-guidance", "looped-deep-guidance"):
        assert f"{key}:" in res.text
    assert "(train + eval decode=sample)" in res.text
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    assert_usage_error(cli("ablation", "--only", "gram,nope", "--dry-run"), "Unknown ablation variant(s) nope")
    assert_usage_error(cli("ablation", "--set", "model.K=4", "--dry-run"), "only the train keys outside the run id")


def test_ablation_runs_a_subset_and_writes_its_table(cli, tmp_path, data_root):
    runs = tmp_path / "runs"
    res = cli("ablation", "--task", "nqueens", "--profile", "smoke", "--only", "gram,trm-random-z0",
              "--device", "cpu", "--runs-dir", runs, "--data-dir", data_root, "--set", "train.threads=1")
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(next(runs.glob("nqueens/gram/*/config.yaml")).read_text())
    assert cfg["overrides"]["train.threads"] == 1
    table = (runs / "tables" / "ablation-nqueens-8-smoke.md").read_text()
    assert "GRAM (full)" in table and "TRM with a random z0 per inference" in table
    assert "without stochastic guidance | no run" in table
    assert list(runs.glob("nqueens/trm/*/eval/test-n5-s2+init=random.json"))
    # a second call reuses everything
    res = cli("ablation", "--task", "nqueens", "--profile", "smoke", "--only", "gram,trm-random-z0", "--dry-run",
              "--runs-dir", runs)
    assert "(reuse)" in res.text and "(train" not in res.text  # --set train.threads left the run ids as they were
