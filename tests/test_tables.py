"""Paper-style tables from synthetic run records: cell values and CIs equal the ones computed
by hand from the per-example records, seeds are averaged with a t-interval, variant runs
stay out of the canonical rows, and every table renders in every format."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from gram_bench.leaderboards import load_runs
from gram_bench.leaderboards.render import FORMATS
from gram_bench.leaderboards.tables import TABLES, build_table
from gram_bench.metrics import bootstrap_ci, example_records, seed_interval, summarize
from gram_bench.metrics.records import truncate
from gram_bench.metrics.stats import CI_METHOD, mean_stat, sum_stat

# ----------------------------------------------------------------------------- synthetic runs

TASK_FIELDS = {"nqueens": "n", "graph-coloring": "nodes"}


def records(examples: list[tuple[int, str, str]]) -> list[dict]:
    """Per-example records from `(n_solutions, answers, valid answers)`: `(2, "aab", "ab")` is an
    input with 2 solutions whose 3 samples answered a, a, b, all valid. Answer "a" is the stored
    target (exact); an invalid answer has as many conflicts as its letter's rank (b: 2, c: 3)."""
    keys = [[c.encode() for c in ans] for _, ans, _ in examples]
    valid = np.array([[c in ok for c in ans] for _, ans, ok in examples])
    conflicts = np.array([[0 if c in ok else ord(c) - 96 for c in ans] for _, ans, ok in examples])
    exact = np.array([[c == "a" for c in ans] for _, ans, _ in examples])
    preds = np.array([[[ord(c) - 97, 1] for c in ans] for _, ans, _ in examples])
    return example_records(np.arange(len(examples)), np.array([e[0] for e in examples]), keys,
                           {"valid": valid, "conflicts": conflicts}, exact, {}, preds)


def write_eval(rdir: Path, name: str, recs: list[dict] | None, steps: int = 16, metrics: dict | None = None,
               flops: int = 2_000_000, params: int = 1234) -> None:
    """eval/<name>.json (metrics = summarize(recs)) and, with records, its examples file."""
    ev = rdir / "eval"
    ev.mkdir(parents=True, exist_ok=True)
    summary = {"schema_version": 2, "split": "test", "n_examples": len(recs) if recs else 4,
               "samples": len(recs[0]["valid"]) if recs else 3, "steps": steps, "selection": "vote",
               "seconds": 1.0, "flops_per_answer": flops, "model_params": params,
               "metrics": metrics if metrics is not None else summarize(recs)}
    (ev / f"{name}.json").write_text(json.dumps(summary))
    if recs is not None:
        with gzip.open(ev / f"{name}.examples.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)


def make_run(root: Path, task: str, model: str, size: int, evals: dict, *, seed: int = 0,
             profile: str = "cpu", overrides: dict | None = None, steps: int = 16, run_id: str | None = None,
             train_lines: list[dict] | None = None) -> Path:
    """runs/<task>/<model>/<run-id>/ with config.yaml, env.json, status, train.jsonl and one
    eval file per `evals` entry (name -> records; steps from a `-s<steps>` in the name)."""
    overrides = overrides or {}
    digest = hashlib.sha256(json.dumps([task, size, model, seed, overrides], sort_keys=True).encode())
    rdir = root / task / model / (run_id or f"{profile}-seed{seed}-{digest.hexdigest()[:8]}")
    rdir.mkdir(parents=True)
    model_cfg = {"name": model, "hidden": 16, **{k[6:]: v for k, v in overrides.items() if k.startswith("model.")}}
    cfg = {"task": {"name": task, TASK_FIELDS[task]: size}, "model": model_cfg, "train": {"steps": 100},
           "eval": {"samples": 3}, "seed": seed, "profile": profile, "overrides": overrides}
    (rdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (rdir / "env.json").write_text(json.dumps({"dataset": f"{task}-{size}", "device": "cpu",
                                               "device_name": "cpu", "params": 1234}))
    (rdir / "status").write_text("finished\n")
    lines = train_lines or [{"step": 50, "loss": 2.0, "elapsed_s": 5.0}, {"step": 100, "loss": 1.0, "elapsed_s": 10.0}]
    (rdir / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for name, recs in evals.items():
        m = re.search(r"-s(\d+)", name)
        write_eval(rdir, name, recs, steps=int(m.group(1)) if m else steps)
    return rdir


def ci(x, stat=mean_stat):
    """(value, low, high) of the bootstrap CI that summarize reports for a per-input vector."""
    return bootstrap_ci([np.asarray(x, dtype=float)], stat)


# nqueens-8, GRAM: the vote picks a (valid), b (invalid), c (valid), a (tie -> earliest; invalid)
GRAM_NQ8 = [(2, "aab", "ab"), (4, "abb", "a"), (1, "ccc", "c"), (3, "abc", "")]
GRAM_NQ8_ACC = [1, 0, 1, 0]
GRAM_NQ8_COV = [2 / 2, 1 / 4, 1 / 1, 0 / 3]
# nqueens-8, TRM: vote a, a, b, c -> valid, valid, valid, invalid
TRM_NQ8 = [(2, "aaa", "a"), (2, "aab", "ab"), (2, "bba", "b"), (1, "cca", "a")]
TRM_NQ8_ACC = [1, 1, 1, 0]
TRM_NQ8_COV = [1 / 2, 2 / 2, 1 / 2, 1 / 1]
# graph-coloring-8, GRAM: vote a (0 conflicts), b (2), c (3), a (0)
GRAM_GC8 = [(3, "aab", "ab"), (2, "bba", "a"), (2, "cca", "a"), (1, "aaa", "a")]
GRAM_GC8_CONF = [0, 2, 3, 0]
GRAM_GC8_COV = [2 / 3, 1 / 2, 1 / 2, 1 / 1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    """A runs dir with gram and trm on nqueens-8 and gram on graph-coloring-8 (cpu, seed 0)."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "root": root,
        "gram": make_run(root, "nqueens", "gram", 8, {"test": records(GRAM_NQ8)}),
        "trm": make_run(root, "nqueens", "trm", 8, {"test": records(TRM_NQ8)}),
        "gram_gc": make_run(root, "graph-coloring", "gram", 8, {"test": records(GRAM_GC8)}),
    }


def cell_of(table, row: str, col: str):
    return table.cells[(row, col)]


# ----------------------------------------------------------------------------- multi-solution


def test_multi_solution_cells_equal_hand_computed_values(synthetic):
    t = build_table("multi-solution", load_runs(synthetic["root"]))
    expected = {
        ("gram", "nq8_acc"): ci(GRAM_NQ8_ACC), ("gram", "nq8_cov"): ci(GRAM_NQ8_COV),
        ("trm", "nq8_acc"): ci(TRM_NQ8_ACC), ("trm", "nq8_cov"): ci(TRM_NQ8_COV),
        ("gram", "gc8_conf"): ci(GRAM_GC8_CONF, sum_stat), ("gram", "gc8_cov"): ci(GRAM_GC8_COV),
    }
    assert expected[("gram", "nq8_acc")][0] == 0.5 and expected[("trm", "nq8_acc")][0] == 0.75
    assert expected[("gram", "nq8_cov")][0] == pytest.approx(0.5625)
    assert expected[("gram", "gc8_conf")][0] == 5.0
    for (r, c), (v, lo, hi) in expected.items():
        cell = cell_of(t, r, c)
        assert (cell.value, cell.low, cell.high) == pytest.approx((v, lo, hi)), (r, c)
        assert lo < v < hi, (r, c)  # a varying metric has a real interval
        assert cell.seeds == 1 and cell.profile == "cpu"
    assert cell_of(t, "gram", "nq8_acc").runs == [str(synthetic["gram"])]
    assert cell_of(t, "gram", "gc8_conf").runs == [str(synthetic["gram_gc"])]
    # the CI is summarize's bootstrap CI for the same records
    m = summarize(records(GRAM_NQ8))["accuracy_vote"]
    cell = cell_of(t, "gram", "nq8_acc")
    assert (cell.value, cell.low, cell.high) == (m["value"], m["ci_low"], m["ci_high"])


def test_multi_solution_renders_values_paper_and_no_run(synthetic):
    t = build_table("multi-solution", load_runs(synthetic["root"]))
    md = t.render("markdown")
    _, lo, hi = ci(GRAM_NQ8_ACC)
    assert f"| GRAM | 50.0 [{100 * lo:.1f}, {100 * hi:.1f}] (paper 99.7 ± 0.3) |" in md
    _, lo, hi = ci(GRAM_GC8_CONF, sum_stat)
    assert f"5.00 [{lo:.2f}, {hi:.2f}] (paper 2.7 ± 2.1)" in md  # a count, not a percentage
    # no run: other models, and every nqueens-10 / graph-coloring-10 column
    assert cell_of(t, "hrm", "nq8_acc").value is None and cell_of(t, "gram", "nq10_acc").value is None
    assert "| HRM | no run (paper 78.7 ± 2.9) |" in md
    assert t.cell_text(t.rows[-1], t.cols[2]) == "no run (paper 89.7 ± 2.7)"
    assert f"profile `cpu`, 1 seed (95% CI: {CI_METHOD}): every cell with a value." in md
    frame = t.to_frame()
    row = frame[(frame["row"] == "GRAM") & (frame["column"] == "NQ8 Acc")].iloc[0]
    assert row["value"] == 50.0 and row["paper"] == 99.7 and row["seeds"] == 1
    assert row["runs"] == str(synthetic["gram"])
    empty = frame[(frame["row"] == "HRM")]
    assert empty["value"].isna().all() and (empty["seeds"] == 0).all()


def test_seeds_are_averaged_with_a_t_interval(tmp_path):
    per_seed = {0: [(1, "a", "a"), (1, "b", "a"), (1, "b", "a"), (1, "b", "a")],  # 0.25
                1: [(1, "a", "a"), (1, "a", "a"), (1, "b", "a"), (1, "b", "a")],  # 0.5
                2: [(1, "a", "a"), (1, "a", "a"), (1, "a", "a"), (1, "b", "a")]}  # 0.75
    dirs = [make_run(tmp_path, "nqueens", "trm", 8, {"test": records(ex)}, seed=s) for s, ex in per_seed.items()]
    # one smoke run: fewer seeds, so the cpu profile wins unless asked for
    smoke = make_run(tmp_path, "nqueens", "trm", 8, {"test": records([(1, "a", "a")] * 4)}, profile="smoke")
    make_run(tmp_path, "nqueens", "gram", 8, {"test": records(GRAM_NQ8)})
    df = load_runs(tmp_path)
    t = build_table("multi-solution", df)
    cell = cell_of(t, "trm", "nq8_acc")
    si = seed_interval([0.25, 0.5, 0.75])
    assert cell.seeds == 3 and cell.profile == "cpu" and sorted(cell.runs) == sorted(map(str, dirs))
    assert (cell.value, cell.low, cell.high) == pytest.approx((0.5, si["low"], si["high"]))
    assert cell.low == pytest.approx(0.5 - 4.302652729749464 * 0.25 / 3 ** 0.5)
    md = t.render("markdown")
    assert f"| TRM | 50.0 [{100 * si['low']:.1f}, {100 * si['high']:.1f}] (paper 66.8 ± 5.7) |" in md
    assert "profile `cpu`, 3 seeds (mean, 95% Student-t interval over seeds): TRM / NQ8 Acc, TRM / NQ8 Cov." in md
    assert "profile `cpu`, 1 seed (95% CI:" in md and "GRAM / NQ8 Acc, GRAM / NQ8 Cov." in md
    # profile= picks the smoke run
    s = cell_of(build_table("multi-solution", df, profile="smoke"), "trm", "nq8_acc")
    assert (s.value, s.seeds, s.profile, s.runs) == (1.0, 1, "smoke", [str(smoke)])
    assert cell_of(build_table("multi-solution", df, profile="smoke"), "gram", "nq8_acc").value is None


def test_runs_with_training_overrides_stay_out_of_canonical_rows(tmp_path):
    canon = make_run(tmp_path, "nqueens", "gram", 8, {"test": records(GRAM_NQ8)})
    make_run(tmp_path, "nqueens", "gram", 8, {"test": records([(1, "a", "a")] * 4)},
             overrides={"model.ce_reduce": "sum"})
    make_run(tmp_path, "nqueens", "trm", 8, {"test": records([(1, "a", "a")] * 4)}, seed=1,
             overrides={"train.lr": 0.01})
    t = build_table("multi-solution", load_runs(tmp_path))
    cell = cell_of(t, "gram", "nq8_acc")
    assert (cell.value, cell.seeds, cell.runs) == (0.5, 1, [str(canon)])
    assert cell_of(t, "trm", "nq8_acc").value is None  # its only run changed training


def test_logging_and_task_overrides_keep_a_run_canonical(tmp_path):
    rdir = make_run(tmp_path, "nqueens", "gram", 8, {"test": records(GRAM_NQ8)},
                    overrides={"task.n": 8, "train.log_every": 5, "eval.samples": 3})
    cell = cell_of(build_table("multi-solution", load_runs(tmp_path)), "gram", "nq8_acc")
    assert (cell.value, cell.runs) == (0.5, [str(rdir)])


# ----------------------------------------------------------------------------- ablation

# 20 samples per input; "a" is valid. Over the first 5 samples the vote differs from over all 20:
# "bbbaa" + 15 x "a": 5 samples vote b (invalid), 20 vote a (valid), and the reverse for the last.
FIRST5_WRONG = (1, "bbbaa" + "a" * 15, "a")
FIRST5_RIGHT = (1, "aaabb" + "b" * 15, "a")
NO_GUIDANCE = [FIRST5_WRONG, FIRST5_WRONG, FIRST5_WRONG, FIRST5_RIGHT]  # 20 samples: 0.75, first 5: 0.25
GRAM_20 = [FIRST5_RIGHT, FIRST5_RIGHT, FIRST5_WRONG, (1, "a" * 20, "a")]  # 20 samples: 0.5, first 5: 0.75
TRM_DECODE = [(1, "aaaab", "a"), (1, "bbbba", "a"), (1, "bbbba", "a"), (1, "bbbba", "a"), (1, "aabba", "a")]


@pytest.fixture(scope="module")
def ablation_runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ablation")
    return {
        "root": root,
        "gram": make_run(root, "nqueens", "gram", 8, {"test": records(GRAM_20)}),
        "no_guidance": make_run(root, "nqueens", "gram", 8, {"test": records(NO_GUIDANCE)},
                                overrides={"model.guidance": "none"}),
        "trm": make_run(root, "nqueens", "trm", 8, {"test": records(TRM_NQ8),
                                                    "test-n5-s8+decode=sample": records(TRM_DECODE)}),
    }


def test_ablation_truncates_to_the_first_5_samples(ablation_runs):
    t = build_table("ablation", load_runs(ablation_runs["root"]))
    recs = records(NO_GUIDANCE)
    assert summarize(recs)["accuracy_vote"]["value"] == 0.75  # what test.json says
    first5 = summarize([truncate(r, 5) for r in recs], slices=False)["accuracy_vote"]
    assert (first5["value"], first5["ci_low"], first5["ci_high"]) == ci([0, 0, 0, 1])
    cell = cell_of(t, "no-guidance", "nqueens")
    assert (cell.value, cell.low, cell.high) == pytest.approx(ci([0, 0, 0, 1]))
    assert cell.runs == [str(ablation_runs["no_guidance"])] and cell.seeds == 1
    for key in ("gram", "gram-ladder"):  # the canonical GRAM run, truncated too
        c = cell_of(t, key, "nqueens")
        assert (c.value, c.low, c.high) == pytest.approx(ci([1, 1, 0, 1]))
        assert c.runs == [str(ablation_runs["gram"])]
    md = t.render("markdown")
    _, lo, hi = ci([0, 0, 0, 1])
    assert (f"| [mechanism] without stochastic guidance | no run (paper 82.87) | "
            f"25.0 [{100 * lo:.1f}, {100 * hi:.1f}] (paper 72.91) |") in md
    # the guidance run is no canonical GRAM run either
    ms = build_table("multi-solution", load_runs(ablation_runs["root"]))
    assert cell_of(ms, "gram", "nq8_acc").runs == [str(ablation_runs["gram"])]


def test_ablation_trm_stochastic_decoder_reads_its_tagged_eval(ablation_runs):
    df = load_runs(ablation_runs["root"])
    t = build_table("ablation", df)
    cell = cell_of(t, "trm-stochastic-decoder", "nqueens")
    assert (cell.value, cell.low, cell.high) == pytest.approx(ci([1, 0, 0, 0, 1]))
    assert cell.runs == [str(ablation_runs["trm"])]
    for key in ("trm-random-z0", "noise-only", "mean-only", "looped-tf", "looped-guidance", "looped-deep-guidance"):
        assert cell_of(t, key, "nqueens").value is None, key
    assert all(cell_of(t, r.key, "sudoku").value is None for r in t.rows)
    # the tagged eval is not TRM's own eval in the main table
    assert cell_of(build_table("multi-solution", df), "trm", "nq8_acc").value == 0.75
    # another dataset: nothing
    other = build_table("ablation", df, dataset="nqueens-10")
    assert all(c.value is None for c in other.cells.values())


# ----------------------------------------------------------------------------- scaling

# 20 samples; the accuracy of the first 1, the vote of the first 5 and of all 20 samples
PATTERN = {(0, 1, 1): "baaaa" + "a" * 15, (1, 0, 1): "abbbb" + "a" * 15, (0, 0, 0): "b" * 20,
           (1, 1, 1): "a" * 20}
S8 = [(0, 1, 1), (0, 1, 1), (1, 0, 1), (0, 0, 0)]  # N=1: 0.25, N=5: 0.5, N=20: 0.75
S16 = [(1, 0, 1), (1, 1, 1), (0, 0, 0), (0, 0, 0)]  # N=1: 0.5, N=5: 0.25, N=20: 0.5


def scaling_records(kinds):
    return records([(1, PATTERN[k], "a") for k in kinds])


def test_scaling_table_derives_small_widths_from_records(tmp_path):
    rdir = make_run(tmp_path, "nqueens", "gram", 8, {"test-n20-s8": scaling_records(S8),
                                                     "test-n20-s16": scaling_records(S16)})
    t = build_table("scaling", load_runs(tmp_path), dataset="nqueens-8")
    assert [r.label for r in t.rows] == ["N=1", "N=5", "N=20", "N=50"]
    assert [c.label for c in t.cols] == ["8 steps", "16 steps"]
    for col, kinds in (("s8", S8), ("s16", S16)):
        for row, pos in (("n1", 0), ("n5", 1), ("n20", 2)):
            cell = cell_of(t, row, col)
            assert (cell.value, cell.low, cell.high) == pytest.approx(ci([k[pos] for k in kinds])), (row, col)
            assert cell.runs == [str(rdir)] and cell.paper is None
        assert cell_of(t, "n50", col).value is None
    assert [cell_of(t, r, "s8").value for r in ("n1", "n5", "n20")] == [0.25, 0.5, 0.75]
    md = t.render("markdown")
    assert "| N=50 | no run | no run |" in md
    assert "| N=1 | 25.0 [" in md


def test_scaling_table_ignores_variant_runs(tmp_path):
    canon = make_run(tmp_path, "nqueens", "gram", 8, {"test-n20-s8": scaling_records(S8)}, run_id="cpu-seed0-ffffffff")
    make_run(tmp_path, "nqueens", "gram", 8, {"test-n20-s8": scaling_records(S16)}, run_id="cpu-seed0-00000000",
             overrides={"model.guidance": "none"})
    t = build_table("scaling", load_runs(tmp_path), dataset="nqueens-8")
    cell = cell_of(t, "n20", "s8")
    assert (cell.value, cell.runs) == (0.75, [str(canon)])


def test_scaling_table_has_paper_numbers_for_sudoku(tmp_path):
    t = build_table("scaling", load_runs(tmp_path))
    md = t.render("markdown")
    assert "| N=1 | no run (paper 81) | no run (paper 87) | no run (paper 91) |" in md
    assert "| N=50 | no run (paper 96) | no run (paper 97) | no run (paper 98) |" in md


# ----------------------------------------------------------------------------- every table, every format


def _render_all(name, root):
    df = load_runs(root)
    t = build_table(name, df)
    out = {fmt: t.render(fmt) for fmt in FORMATS}
    assert out["markdown"].startswith(f"### {t.title}")
    assert out["latex"].startswith(r"\begin{table}") and out["latex"].rstrip().endswith(r"\end{table}")
    assert len(out["csv"].splitlines()) == 1 + len(t.rows) * len(t.cols)
    return t, out


@pytest.mark.parametrize("name", list(TABLES))
def test_every_table_renders_on_an_empty_runs_dir(name, tmp_path):
    t, out = _render_all(name, tmp_path)
    assert all(c.value is None for c in t.cells.values())
    assert len(re.findall(r"no run(?!s)", out["markdown"])) == len(t.rows) * len(t.cols)
    assert "no runs found for this table yet." in out["markdown"]


@pytest.mark.parametrize("name", list(TABLES))
def test_every_table_renders_on_synthetic_runs(name, synthetic):
    t, out = _render_all(name, synthetic["root"])
    if name in ("structured", "mnist", "sudoku-gen", "scaling"):  # their datasets have no runs here
        assert all(c.value is None for c in t.cells.values())
        assert "no run" in out["markdown"]
    else:
        assert any(c.value is not None for c in t.cells.values())


def test_sudoku_gen_csv_keeps_the_paper_text(tmp_path):
    frame = build_table("sudoku-gen", load_runs(tmp_path)).to_frame()
    paper = {(r, c): p for r, c, p in zip(frame["row"], frame["column"], frame["paper"]) if p is not None}
    assert paper == {("D3PM-uniform", "Validity"): "91.33 big / 29.24 small",
                     ("D3PM-absorbing", "Validity"): "79.18 big / 21.88 small", ("GRAM", "Validity"): 99.05}


def test_latex_escapes_percent_and_underscore(synthetic):
    df = load_runs(synthetic["root"])
    for name in ("multi-solution", "ablation", "scaling"):
        tex = build_table(name, df).render("latex")
        body = tex.replace(r"\%", "").replace(r"\_", "")
        assert "%" not in body and "_" not in body, name
    tex = build_table("ablation", df).render("latex")
    assert r"accuracy\_vote over the first 5 samples" in tex and r"95\% CI" in tex
    assert r"eps $\sim$ N(0, sigma\^{}2)" in tex and r"99.7 $\pm$ 0.3" in build_table("multi-solution", df).render(
        "latex")


def test_latex_rows_do_not_start_with_a_bracket(synthetic):
    tex = build_table("ablation", load_runs(synthetic["root"])).render("latex")
    lines = tex.splitlines()
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert not [x for x in body if x.startswith("[")]


def test_unknown_table_and_format(synthetic):
    from gram_bench.core.errors import UsageError

    df = load_runs(synthetic["root"])
    with pytest.raises(UsageError, match="multi-solution"):
        build_table("multi-soltion", df)
    with pytest.raises(UsageError, match="Unknown format 'html'"):
        build_table("multi-solution", df).render("html")


def test_table_cli(cli, synthetic, tmp_path):
    out = tmp_path / "t.tex"
    res = cli("table", "multi-solution", "--runs-dir", synthetic["root"], "--format", "latex", "-o", out)
    assert res.exit_code == 0, res.output
    assert out.read_text() == build_table("multi-solution", load_runs(synthetic["root"])).render("latex")
    res = cli("table", "ablation", "--runs-dir", synthetic["root"], "--dataset", "nqueens-8", "--format", "csv")
    assert res.exit_code == 0 and res.output.startswith("table,row,column"), res.output
    res = cli("table", "mnist", "--runs-dir", synthetic["root"], "--dataset", "nqueens-8")
    assert res.exit_code == 2 and res.text.startswith("error:"), res.output
    res = cli("table", "multi-solution", "--runs-dir", tmp_path / "nope")
    assert res.exit_code == 2 and "does not exist" in res.text and "Traceback" not in res.output


def test_cells_on_a_test_subset_are_named_in_the_notes():
    from gram_bench.leaderboards.tables import Cell, Col, Row, _notes

    rows = [Row("a", "A", "gram"), Row("b", "B", "mdlm")]
    cols = [Col("acc", "NQ8 Acc", "nqueens-8", "accuracy_vote")]
    cells = {("a", "acc"): Cell(0.5, 0.4, 0.6, 1, "cpu", ["r1"], n=773),
             ("b", "acc"): Cell(0.3, 0.2, 0.4, 1, "cpu", ["r2"], n=256)}
    notes = _notes(cells, rows, cols, [])
    assert any("NQ8 Acc: evaluated on a seeded subset" in n and "B (256)" in n and "on 773" in n for n in notes)
    cells[("b", "acc")].n = 773
    assert not any("seeded subset" in n for n in _notes(cells, rows, cols, []))
