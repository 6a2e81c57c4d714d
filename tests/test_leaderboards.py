"""load_runs reads finished run records into one DataFrame and skips unfinished ones."""

import json

from gram_bench.leaderboards import load_runs


def test_load_runs_reads_every_metric(gram_run, trm_run, runs_root):
    df = load_runs(runs_root)
    assert set(df["model"]) >= {"gram", "trm"}
    assert set(df["task"]) == {"nqueens"}
    row = df[(df.model == "gram") & (df.metric == "accuracy_first") & (df["eval"] == "test")].iloc[0]
    summary = json.loads((gram_run / "eval/test.json").read_text())
    assert row.value == summary["metrics"]["accuracy_first"]["value"]
    assert row.samples == 3 and row.n == 16 and row.ci_low <= row.value <= row.ci_high


def test_load_runs_skips_unfinished(gram_run, copy_run):
    rdir = copy_run(gram_run)
    root = rdir.parents[2]
    (rdir / "status").write_text("running\n")
    assert load_runs(root).empty
    df = load_runs(root, include_unfinished=True)
    assert set(df["status"]) == {"running"}
