"""`leaderboard export`: entries ranked by each dataset's primary metric, with params, FLOPs,
profile, seeds and working relative links to the run directories; CSV that pandas reads back;
the CLI; and the time to load and tabulate 1,000 run directories."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gram_bench.leaderboards import load_runs
from gram_bench.leaderboards.export import export, leaderboard_frame
from gram_bench.leaderboards.tables import build_table
from gram_bench.metrics import bootstrap_ci, seed_interval, summarize
from gram_bench.metrics.stats import mean_stat, sum_stat

from test_tables import TASK_FIELDS, records  # the shared synthetic-record builder

# ----------------------------------------------------------------------------- synthetic runs

def make_run(root: Path, task: str, model: str, size: int, recs: list[dict], *, seed: int = 0,
             profile: str = "cpu", overrides: dict | None = None, params: int = 1234,
             flops: int = 2_000_000, steps: int = 16) -> Path:
    """runs/<task>/<model>/<run-id>/ whose eval/test.json is summarize(recs)."""
    overrides = overrides or {}
    digest = hashlib.sha256(json.dumps([task, size, model, seed, overrides], sort_keys=True).encode())
    rdir = root / task / model / f"{profile}-seed{seed}-{digest.hexdigest()[:8]}"
    (rdir / "eval").mkdir(parents=True)
    cfg = {"task": {"name": task, TASK_FIELDS[task]: size}, "model": {"name": model, "hidden": 16},
           "train": {"steps": 100}, "eval": {"samples": len(recs[0]["valid"])}, "seed": seed,
           "profile": profile, "overrides": overrides}
    (rdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (rdir / "env.json").write_text(json.dumps({"dataset": f"{task}-{size}", "device": "cpu",
                                               "device_name": "cpu", "params": params}))
    (rdir / "status").write_text("finished\n")
    (rdir / "train.jsonl").write_text('{"step": 50, "loss": 2.0, "elapsed_s": 5.0}\n'
                                      '{"step": 100, "loss": 1.0, "elapsed_s": 10.0}\n'
                                      '{"step": 100, "eval_accuracy_first": 0.5}\n')
    summary = {"schema_version": 2, "split": "test", "n_examples": len(recs), "samples": len(recs[0]["valid"]),
               "steps": steps, "selection": "vote", "seconds": 1.0, "flops_per_answer": flops,
               "model_params": params, "metrics": summarize(recs)}
    (rdir / "eval" / "test.json").write_text(json.dumps(summary))
    with gzip.open(rdir / "eval" / "test.examples.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    return rdir


def nq(correct: int, total: int = 4) -> list[dict]:
    """nqueens records: `correct` of `total` inputs voted right (1 solution each, 3 samples)."""
    return records([(1, "aab", "a")] * correct + [(1, "bbb", "a")] * (total - correct))


def gc(conflicts: list[int]) -> list[dict]:
    """graph-coloring records whose vote-selected answers have these conflicts (0, 2 or 3)."""
    answer = {0: "aab", 2: "bba", 3: "cca"}
    return records([(2, answer[c], "a") for c in conflicts])


def ci(x, stat=mean_stat):
    return bootstrap_ci([np.asarray(x, dtype=float)], stat)


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lb") / "runs"
    d = {"root": root}
    d["gram"] = make_run(root, "nqueens", "gram", 8, nq(2), params=10_000_000, flops=3_500_000_000)  # 0.5
    d["trm"] = make_run(root, "nqueens", "trm", 8, nq(3), params=7_000_000)  # 0.75
    d["hrm"] = [make_run(root, "nqueens", "hrm", 8, nq(k), seed=s) for s, k in enumerate((1, 2, 4))]  # mean 7/12
    d["gram_sum"] = make_run(root, "nqueens", "gram", 8, nq(4), overrides={"model.ce_reduce": "sum"})  # 1.0
    d["gram_gc"] = make_run(root, "graph-coloring", "gram", 8, gc([0, 2, 3, 0]))  # 5 conflicts
    d["trm_gc"] = make_run(root, "graph-coloring", "trm", 8, gc([0, 2, 0, 0]))  # 2
    d["hrm_gc"] = make_run(root, "graph-coloring", "hrm", 8, gc([3, 3, 3, 0]))  # 9
    return d


def section(md: str, dataset: str) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, preamble) of the table under `## dataset`."""
    part = md.split(f"## {dataset}\n", 1)[1].split("\n## ", 1)[0]
    lines = [x for x in part.splitlines() if x.startswith("|")]
    cells = [[c.strip() for c in x.strip("|").split("|")] for x in lines]
    return cells[0], cells[2:], part


# ----------------------------------------------------------------------------- markdown


def test_markdown_ranks_by_accuracy_vote_for_nqueens(board, tmp_path):
    out = tmp_path / "site" / "LEADERBOARD.md"
    md = export(load_runs(board["root"]), "markdown", out)
    head, rows, part = section(md, "nqueens-8")
    assert "Ranked by `accuracy_vote` (higher is better)." in part
    assert head == ["#", "model", "accuracy_vote", "coverage", "accuracy_oracle", "params", "N", "steps",
                    "calls/answer", "GFLOP/answer", "train steps", "profile", "seeds", "hardware", "runs"]
    col = {h: i for i, h in enumerate(head)}
    assert [r[col["model"]] for r in rows] == ["gram (model.ce_reduce=sum)", "trm", "hrm", "gram"]
    assert [r[col["#"]] for r in rows] == ["1", "2", "3", "4"]
    by = {r[col["model"]]: r for r in rows}
    _, lo, hi = ci([1, 1, 0, 0])
    assert by["gram"][col["accuracy_vote"]] == f"50.0 [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert by["gram"][col["params"]] == "10,000,000" and by["trm"][col["params"]] == "7,000,000"
    assert by["gram"][col["GFLOP/answer"]] == "3.5" and by["trm"][col["GFLOP/answer"]] == "0.002"
    assert by["gram"][col["N"]] == "3" and by["gram"][col["steps"]] == "16"
    assert by["gram"][col["train steps"]] == "100" and by["gram"][col["hardware"]] == "cpu"
    assert all(r[col["profile"]] == "cpu" for r in rows)
    assert [r[col["seeds"]] for r in rows] == ["1", "1", "3", "1"]
    si = seed_interval([0.25, 0.5, 1.0])
    assert by["hrm"][col["accuracy_vote"]] == f"{100 * si['mean']:.1f} [{100 * si['low']:.1f}, {100 * si['high']:.1f}]"
    # secondary metrics: the inputs voted wrong have no valid sample at all
    _, lo, hi = ci([1, 1, 1, 0])
    assert by["trm"][col["coverage"]] == by["trm"][col["accuracy_oracle"]] == f"75.0 [{100 * lo:.1f}, {100 * hi:.1f}]"


def test_markdown_links_resolve_from_the_output_directory(board, tmp_path):
    out = tmp_path / "site" / "LEADERBOARD.md"
    out.parent.mkdir()
    md = export(load_runs(board["root"]), "markdown", out)
    head, rows, _ = section(md, "nqueens-8")
    links = {r[1]: re.findall(r"\[(\d+)\]\(([^)]+)\)", r[-1]) for r in rows}
    assert [n for n, _ in links["hrm"]] == ["1", "2", "3"]
    for model, found in links.items():
        for _, rel in found:
            assert not Path(rel).is_absolute() and rel.startswith("../"), rel
            assert (out.parent / rel).is_dir(), rel
            assert (out.parent / rel / "config.yaml").exists()
    assert {(out.parent / rel).resolve() for _, rel in links["hrm"]} == {p.resolve() for p in board["hrm"]}
    assert (out.parent / links["gram"][0][1]).resolve() == board["gram"].resolve()


def test_markdown_ranks_graph_coloring_by_fewest_conflicts(board, tmp_path):
    md = export(load_runs(board["root"]), "markdown", tmp_path / "LEADERBOARD.md")
    head, rows, part = section(md, "graph-coloring-8")
    assert "Ranked by `conflicts_total` (lower is better)." in part
    assert head[2:5] == ["conflicts_total", "coverage", "accuracy_vote"]
    assert [r[1] for r in rows] == ["trm", "gram", "hrm"]
    _, lo, hi = ci([0, 2, 3, 0], sum_stat)
    assert rows[1][2] == f"5.0 [{lo:.1f}, {hi:.1f}]"  # a count, not a percentage
    assert [r[2].split()[0] for r in rows] == ["2.0", "5.0", "9.0"]
    assert md.index("## graph-coloring-8") < md.index("## nqueens-8")


def test_empty_runs_dir(tmp_path):
    md = export(load_runs(tmp_path), "markdown", tmp_path / "LEADERBOARD.md")
    assert md.startswith("# gram-bench leaderboard") and "No finished runs yet." in md
    assert leaderboard_frame(load_runs(tmp_path)).empty


# ----------------------------------------------------------------------------- csv


def test_csv_parses_back(board):
    df = load_runs(board["root"])
    text = export(df, "csv")
    back = pd.read_csv(io.StringIO(text))
    lb = leaderboard_frame(df)
    assert list(back.columns) == list(lb.columns)
    assert len(back) == len(lb) == 7 * 3  # 7 entries x (primary + 2 secondary)
    prim = back[back["primary"]].set_index(["dataset", "entry"])
    assert prim.loc[("nqueens-8", "hrm"), "value"] == pytest.approx(7 / 12)
    assert prim.loc[("nqueens-8", "hrm"), "seeds"] == 3
    assert prim.loc[("graph-coloring-8", "trm"), "value"] == 2.0
    assert bool(prim.loc[("graph-coloring-8", "trm"), "lower_is_better"]) is True
    assert prim.loc[("nqueens-8", "gram"), "params"] == 10_000_000
    hrm = back[(back["dataset"] == "nqueens-8") & (back["entry"] == "hrm")]
    assert set(hrm["run_dirs"].iloc[0].split(";")) == set(map(str, board["hrm"]))


def test_unknown_format(board):
    from gram_bench.core.errors import UsageError

    with pytest.raises(UsageError, match="choose markdown or csv"):
        export(load_runs(board["root"]), "latex")


# ----------------------------------------------------------------------------- CLI


def test_cli_export_writes_the_file(cli, board, tmp_path):
    out = tmp_path / "docs" / "LEADERBOARD.md"
    res = cli("leaderboard", "export", "--runs-dir", board["root"], "-o", out)
    assert res.exit_code == 0, res.output
    assert out.exists() and "wrote" in res.text
    assert out.read_text() == export(load_runs(board["root"]), "markdown", out)
    res = cli("leaderboard", "export", "--runs-dir", board["root"], "--format", "csv")
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(io.StringIO(res.output))) == 21


def test_cli_export_relative_paths(cli, board, tmp_path, monkeypatch):
    monkeypatch.chdir(board["root"].parent)
    res = cli("leaderboard", "export", "--runs-dir", "runs", "-o", "LEADERBOARD.md")
    assert res.exit_code == 0, res.output
    md = (board["root"].parent / "LEADERBOARD.md").read_text()
    rels = re.findall(r"\]\((runs/[^)]+)\)", md)
    assert len(rels) == 9 and all((board["root"].parent / r).is_dir() for r in rels)


def test_cli_missing_runs_dir_is_a_one_line_usage_error(cli, tmp_path):
    res = cli("leaderboard", "export", "--runs-dir", tmp_path / "nope", "-o", tmp_path / "LB.md")
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert res.text.startswith("error: Runs directory") and "does not exist" in res.text
    assert "Traceback" not in res.output and not (tmp_path / "LB.md").exists()
    res = cli("leaderboard", "export", "--runs-dir", tmp_path, "--format", "html")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output


# ----------------------------------------------------------------------------- 1,000 runs

CONFIG_MODEL = {"hidden": 64, "heads": 4, "ffn_hidden": 128, "layers": 2, "n": 2, "T": 2, "n_sup": 8,
                "prefix": 1, "rope_theta": 10000.0, "ce_reduce": "mean", "act": True, "halting": "bce"}
CONFIG_TRAIN = {"steps": 5000, "batch_size": 64, "lr": 0.001, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95,
                "warmup_steps": 100, "grad_clip": 1.0, "ema": 0.999, "precision": "auto", "log_every": 20,
                "eval_every": 2500, "eval_examples": 128, "eval_samples": 4, "checkpoint_every": 500,
                "threads": 0, "max_minutes": 12.0}
TRAIN_LINE = ('{"step":%d,"lr":0.001,"loss":0.74378,"grad_norm":0.2707,"ce":0.73112,"halt":0.02212,'
              '"value":0.0032,"token_acc":0.58389,"exact":0.00313,"steps":4.1,"examples_per_s":809.1,'
              '"elapsed_s":%.2f}\n')
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
MODELS = ["direct", "looped-tf", "hrm", "trm", "ar", "mdlm", "gram"]


def write_many(root: Path, n: int) -> None:
    """n small run directories: 7 models x 2 datasets x 10 seeds x training variants, each with
    a realistic config.yaml, env.json, a 50-line train.jsonl and a 3-metric eval/test.json."""
    rng = np.random.default_rng(0)
    for i in range(n):
        model, (task, size), seed, variant = MODELS[i % 7], (("nqueens", 8), ("graph-coloring", 8))[i // 7 % 2], \
            i // 14 % 10, i // 140
        overrides = {"model.hidden": 32 * variant} if variant else {}
        rdir = root / task / model / f"cpu-seed{seed}-{variant:08x}"
        (rdir / "eval").mkdir(parents=True)
        cfg = {"task": {"name": task, TASK_FIELDS[task]: size, "seed": 0}, "model": {"name": model, **CONFIG_MODEL},
               "train": CONFIG_TRAIN, "eval": {"samples": 20, "steps": 0, "limit": 0, "split": "test"},
               "seed": seed, "profile": "cpu", "overrides": overrides}
        (rdir / "config.yaml").write_text(yaml.dump(cfg, Dumper=DUMPER, sort_keys=False))
        (rdir / "env.json").write_text(json.dumps({"dataset": f"{task}-{size}", "device": "cpu",
                                                   "device_name": "AMD EPYC", "params": 91202}, indent=2))
        (rdir / "status").write_text("finished\n")
        (rdir / "train.jsonl").write_text("".join(TRAIN_LINE % (20 * k, 0.1 * k) for k in range(1, 51)))
        names = (["accuracy_vote", "coverage", "accuracy_oracle"] if task == "nqueens"
                 else ["conflicts_total", "coverage", "accuracy_vote"])
        metrics = {}
        for m in names:
            v = float(rng.uniform(0, 100 if m.startswith("conflicts") else 1))
            metrics[m] = {"value": v, "ci_low": 0.9 * v, "ci_high": 1.1 * v, "n": 128}
        (rdir / "eval" / "test.json").write_text(json.dumps(
            {"schema_version": 2, "split": "test", "n_examples": 128, "samples": 20, "steps": 16,
             "selection": "vote", "seconds": 1.0, "flops_per_answer": 1000, "model_params": 91202,
             "metrics": metrics}, indent=2))


def test_1000_runs_load_table_and_export(tmp_path):
    root = tmp_path / "runs"
    write_many(root, 1000)
    t0 = time.perf_counter()
    df = load_runs(root)
    t1 = time.perf_counter()
    table = build_table("multi-solution", df).render("markdown")
    t2 = time.perf_counter()
    md = export(df, "markdown", tmp_path / "LEADERBOARD.md")
    t3 = time.perf_counter()
    print(f"\n1,000 runs: load_runs {t1 - t0:.2f} s, build_table(multi-solution) {t2 - t1:.2f} s, "
          f"export {t3 - t2:.2f} s, total {t3 - t0:.2f} s")
    assert len(df) == 3000 and df["run_dir"].nunique() == 1000
    # canonical rows use the variant-free runs: 10 seeds per model on each 8-size dataset
    assert "profile `cpu`, 10 seeds (mean, 95% Student-t interval over seeds)" in table
    assert md.count("\n| ") == 2 * (1 + 7 * 8)  # per dataset: header + 7 models x 8 training variants
    assert t3 - t0 < 60  # a loose sanity bound, not a benchmark
