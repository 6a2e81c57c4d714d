"""`gram-bench plot`: every kind writes a PNG and an SVG for synthetic runs; widths below an
eval's N come from its records; bad kinds and non-run directories are usage errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from gram_bench.core.errors import UsageError
from gram_bench.leaderboards.plots import PLOTS, curves_frame, plot, scaling_frame, solutions_frame
from gram_bench.metrics import example_records, summarize

# ----------------------------------------------------------------------------- synthetic runs


def records(examples: list[tuple[int, str, str]]) -> list[dict]:
    """Records from `(n_solutions, answers, valid answers)`, e.g. `(2, "aab", "ab")`: 3 samples
    answering a, a, b, both valid."""
    keys = [[c.encode() for c in ans] for _, ans, _ in examples]
    valid = np.array([[c in ok for c in ans] for _, ans, ok in examples])
    exact = np.array([[c == "a" for c in ans] for _, ans, _ in examples])
    preds = np.array([[[ord(c) - 97, 1] for c in ans] for _, ans, _ in examples])
    return example_records(np.arange(len(examples)), np.array([e[0] for e in examples]), keys,
                           {"valid": valid}, exact, {}, preds)


def write_eval(rdir: Path, name: str, recs: list[dict], steps: int) -> None:
    summary = {"schema_version": 2, "split": "test", "n_examples": len(recs), "samples": len(recs[0]["valid"]),
               "steps": steps, "selection": "vote", "seconds": 1.0, "flops_per_answer": 1000, "model_params": 123,
               "metrics": summarize(recs)}
    (rdir / "eval" / f"{name}.json").write_text(json.dumps(summary))
    with gzip.open(rdir / "eval" / f"{name}.examples.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)


def make_run(root: Path, model: str, evals: dict, *, seed: int = 0, overrides: dict | None = None) -> Path:
    """runs/nqueens/<model>/cpu-seed<seed>-…/ with a train.jsonl and eval files (name -> (records, steps))."""
    rdir = root / "nqueens" / model / f"cpu-seed{seed}-{len(overrides or {}):08x}"
    (rdir / "eval").mkdir(parents=True)
    cfg = {"task": {"name": "nqueens", "n": 8}, "model": {"name": model, "hidden": 16}, "train": {"steps": 60},
           "eval": {"samples": 20}, "seed": seed, "profile": "cpu", "overrides": overrides or {}}
    (rdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (rdir / "env.json").write_text(json.dumps({"dataset": "nqueens-8", "device": "cpu", "device_name": "cpu",
                                               "params": 123}))
    (rdir / "status").write_text("finished\n")
    lines = []
    for step in range(10, 70, 10):
        lines.append({"step": step, "loss": 2.0 / step, "kl": 0.1, "elapsed_s": step / 10})
        if step % 30 == 0:
            lines.append({"step": step, "eval_accuracy_first": step / 100, "eval_coverage": step / 200})
    (rdir / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 7')  # torn line
    for name, (recs, steps) in evals.items():
        write_eval(rdir, name, recs, steps)
    return rdir


# 20 samples, "a" valid: (accuracy of sample 0, of the vote of the first 5, of the vote of all 20)
PATTERN = {(0, 1, 1): "baaaa" + "a" * 15, (1, 0, 1): "abbbb" + "a" * 15, (0, 0, 0): "b" * 20,
           (1, 1, 1): "a" * 20}


def scaling_records(kinds, n_solutions=(1, 2, 3, 4)):
    return records([(k, PATTERN[p], "a") for k, p in zip(n_solutions, kinds)])


S8 = [(0, 1, 1), (0, 1, 1), (1, 0, 1), (0, 0, 0)]  # N=1: 25 %, N=5: 50 %, N=20: 75 %
S16 = [(1, 0, 1), (1, 1, 1), (0, 0, 0), (0, 0, 0)]  # N=1: 50 %, N=5: 25 %, N=20: 50 %


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [
        make_run(root, "gram", {"test": (scaling_records(S16), 16), "test-n20-s8": (scaling_records(S8), 8),
                                "test-n5-s8+decode=sample": (scaling_records(S16), 8)}),
        make_run(root, "gram", {"test": (scaling_records(S8), 16)}, seed=1, overrides={"model.guidance": "none"}),
    ]


@pytest.mark.parametrize("kind", PLOTS)
def test_every_plot_writes_png_and_svg(kind, runs, tmp_path):
    paths = plot(kind, runs, tmp_path / "figs" / f"{kind}.png")
    assert paths == [tmp_path / "figs" / f"{kind}.png", tmp_path / "figs" / f"{kind}.svg"]
    png, svg = paths
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000
    assert b"<svg" in svg.read_bytes()[:2000] and svg.stat().st_size > 1000
    # the same data renders to the same bytes (results/ diffs only when the results change)
    again = plot(kind, runs, tmp_path / "again" / f"{kind}.png")
    assert [p.read_bytes() for p in again] == [png.read_bytes(), svg.read_bytes()]


def test_scaling_frame_recomputes_widths_from_records(runs):
    df = scaling_frame(runs[:1])
    acc = df[df["metric"] == "accuracy_vote"].set_index(["samples", "steps"])["value"]
    assert sorted(set(df["samples"])) == [1, 2, 5, 10, 20] and sorted(set(df["steps"])) == [8, 16]
    assert [acc[(n, 8)] for n in (1, 5, 20)] == pytest.approx([25.0, 50.0, 75.0])
    assert [acc[(n, 16)] for n in (1, 5, 20)] == pytest.approx([50.0, 25.0, 50.0])
    assert set(df["run"]) == {"gram seed 0"}
    assert set(scaling_frame(runs[1:])["run"]) == {"gram seed 1 (guidance=none)"}


def test_solutions_and_curves_frames(runs):
    sol = solutions_frame(runs[:1])  # the run's own eval (test), not test-n20-s8
    assert list(sol["n_solutions"]) == [1, 2, 3, 4]
    assert list(sol["accuracy"]) == [100.0, 100.0, 0.0, 0.0]  # S16's vote over 20 samples
    cur = curves_frame(runs[:1])
    assert set(cur["quantity"]) == {"loss", "kl", "eval_accuracy_first", "eval_coverage"}
    assert list(cur[cur["quantity"] == "eval_accuracy_first"]["value"]) == [0.3, 0.6]


def test_bad_kind_and_non_run_directory(runs, tmp_path):
    with pytest.raises(UsageError, match="Unknown plot 'histogram'"):
        plot("histogram", runs, tmp_path / "x.png")
    with pytest.raises(UsageError, match="is not a run directory"):
        plot("curves", [tmp_path], tmp_path / "x.png")
    assert not list(tmp_path.glob("x.*"))


@pytest.mark.parametrize("args, phrase", [
    (("histogram", "RUN"), "Unknown plot 'histogram'; choose one of scaling, solutions, coverage, curves."),
    (("curves", "TMP"), "is not a run directory (no config.yaml)."),
    (("scaling", "RUN", "TMP"), "is not a run directory"),
    (("solutions", "BARE"), "No eval records to plot."),
    (("curves", "EMPTY"), "No train.jsonl lines to plot."),
    (("scaling", "BARE"), "No eval records to plot"),
    (("coverage", "BARE"), "No coverage in these runs' records"),
])
def test_cli_plot_usage_errors(cli, runs, tmp_path, args, phrase):
    bare = make_run(tmp_path / "runs", "trm", {})
    empty = make_run(tmp_path / "runs", "hrm", {})
    (empty / "train.jsonl").write_text("")
    subst = {"RUN": runs[0], "TMP": tmp_path, "BARE": bare, "EMPTY": empty}
    res = cli("plot", *[subst.get(a, a) for a in args], "-o", tmp_path / "p.png")
    assert res.exit_code == 2, res.output
    assert res.text.startswith("error:") and phrase in res.text, res.output
    assert "Traceback" not in res.output and not (tmp_path / "p.png").exists()


def test_cli_plot_writes_both_files(cli, runs, tmp_path):
    res = cli("plot", "curves", *runs, "-o", tmp_path / "curves.png")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "curves.svg").stat().st_size > 0
    assert res.text.count("wrote") == 2
