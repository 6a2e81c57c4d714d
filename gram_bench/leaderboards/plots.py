"""Seaborn plots from run records (PNG and SVG side by side).

- `scaling`: accuracy vs samples N (one line per depth) and vs depth (one line per N);
  widths below an eval's N are the first N samples of its records, votes recomputed.
- `solutions`: accuracy vs number of valid solutions per input (the paper's Figure 4 right).
- `coverage`: coverage vs samples N.
- `curves`: training loss and periodic eval accuracy from train.jsonl.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pandas as pd
import yaml

from gram_bench.core.errors import UsageError
from gram_bench.core.io import atomic_write_bytes
from gram_bench.metrics.records import truncate
from gram_bench.metrics.summary import summarize

PLOTS = ("scaling", "solutions", "coverage", "curves")
WIDTHS = (1, 2, 5, 10, 20, 50, 100)


def _label(rdir: Path) -> str:
    try:
        cfg = yaml.safe_load((rdir / "config.yaml").read_text())
        o = cfg.get("overrides") or {}
        extra = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in sorted(o.items()) if k.startswith("model."))
        return f"{cfg['model']['name']} seed {cfg['seed']}" + (f" ({extra})" if extra else "")
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return rdir.name


def _records(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _eval_files(rdir: Path) -> list[tuple[Path, dict]]:
    """(records path, summary) of every untagged, unlimited eval of a run."""
    out = []
    for p in sorted((rdir / "eval").glob("*.json")):
        if "+" in p.stem or "-l" in p.stem:
            continue
        rec = p.with_name(p.stem + ".examples.jsonl.gz")
        if rec.exists():
            out.append((rec, json.loads(p.read_text())))
    return out


def scaling_frame(run_dirs: list[Path], select: str = "vote") -> pd.DataFrame:
    """Accuracy per (run, samples N, steps) from every eval file, widths up to each file's N."""
    rows = []
    for rdir in run_dirs:
        best: dict[int, tuple[Path, dict]] = {}  # per depth: the eval with the most samples
        for rec, s in _eval_files(rdir):
            if s["steps"] not in best or s["samples"] > best[s["steps"]][1]["samples"]:
                best[s["steps"]] = (rec, s)
        for steps, (rec, s) in sorted(best.items()):
            records = _records(rec)
            for n in sorted({w for w in WIDTHS if w <= s["samples"]} | {s["samples"]}):
                try:
                    m = summarize([truncate(r, n) for r in records], slices=False)
                except ValueError:  # records without answer_ids: only the eval's own N
                    if n != s["samples"]:
                        continue
                    m = s["metrics"]
                for metric in (f"accuracy_{select}", "accuracy_oracle", "coverage"):
                    if metric in m:
                        rows.append({"run": _label(rdir), "samples": n, "steps": steps, "metric": metric,
                                     "value": 100 * m[metric]["value"], "ci_low": 100 * m[metric]["ci_low"],
                                     "ci_high": 100 * m[metric]["ci_high"]})
    return pd.DataFrame(rows, columns=["run", "samples", "steps", "metric", "value", "ci_low", "ci_high"])


def solution_bin(n: int) -> int:
    """Powers-of-two bins of the number of solutions: 0 = 1, 1 = 2, 2 = 3-4, 3 = 5-8, ..."""
    return max(0, (max(n, 1) - 1).bit_length())


def bin_label(b: int) -> str:
    lo, hi = (1 << (b - 1)) + 1 if b else 1, 1 << b
    return str(hi) if lo == hi else f"{lo}-{hi}"


def solutions_frame(run_dirs: list[Path], select: str = "vote") -> pd.DataFrame:
    rows = []
    for rdir in run_dirs:
        files = [f for f in _eval_files(rdir) if f[0].name.startswith("test.")] or _eval_files(rdir)
        if not files:
            continue
        for r in _records(files[0][0]):
            i = r["selected"].get(select, 0)
            rows.append({"run": _label(rdir), "n_solutions": r["n_solutions"],
                         "bin": solution_bin(r["n_solutions"]), "accuracy": 100 * r["valid"][i],
                         "coverage": 100 * r["distinct_valid"] / max(r["n_solutions"], 1)})
    return pd.DataFrame(rows)


def curves_frame(run_dirs: list[Path]) -> pd.DataFrame:
    rows = []
    for rdir in run_dirs:
        p = rdir / "train.jsonl"
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            for k in ("loss", "ce", "kl", "eval_accuracy_first", "eval_coverage"):
                if k in r:
                    rows.append({"run": _label(rdir), "step": r["step"], "quantity": k, "value": r[k]})
    return pd.DataFrame(rows)


def plot(kind: str, run_dirs: list[Path], out: Path, select: str = "vote") -> list[Path]:
    """Draw `kind` for the given run directories; writes out.png and out.svg."""
    if kind not in PLOTS:
        raise UsageError(f"Unknown plot '{kind}'; choose one of {', '.join(PLOTS)}.")
    for rdir in run_dirs:
        if not (Path(rdir) / "config.yaml").exists():
            raise UsageError(f"{rdir} is not a run directory (no config.yaml).")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    run_dirs = [Path(r) for r in run_dirs]
    if kind == "scaling":
        df = scaling_frame(run_dirs, select)
        df = df[df["metric"] == f"accuracy_{select}"]
        if df.empty:
            raise UsageError("No eval records to plot; run `gram-bench eval RUN --samples 1,5,20 --steps 8,16`.")
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        sns.lineplot(df, x="samples", y="value", hue="steps", style="run", marker="o", ax=axes[0],
                     palette="viridis", seed=0)
        axes[0].set(xscale="log", xlabel="samples N (width)", ylabel=f"accuracy ({select}) %")
        sns.lineplot(df, x="steps", y="value", hue="samples", style="run", marker="o", ax=axes[1],
                     palette="magma", seed=0)
        axes[1].set(xscale="log", xlabel="supervision steps (depth)", ylabel=f"accuracy ({select}) %")
    elif kind == "coverage":
        df = scaling_frame(run_dirs, select)
        df = df[df["metric"] == "coverage"]
        if df.empty:
            raise UsageError("No coverage in these runs' records (the task has no multi-solution reference).")
        fig, ax = plt.subplots(figsize=(5.5, 4))
        sns.lineplot(df, x="samples", y="value", hue="run", style="steps", marker="o", seed=0, ax=ax)
        ax.set(xscale="log", xlabel="samples N", ylabel="coverage %")
    elif kind == "solutions":
        df = solutions_frame(run_dirs, select)
        if df.empty:
            raise UsageError("No eval records to plot.")
        fig, ax = plt.subplots(figsize=(6, 4))
        sns.lineplot(df, x="bin", y="accuracy", hue="run", marker="o", errorbar=("ci", 95), seed=0, ax=ax)
        bins = sorted(df["bin"].unique())
        ax.set_xticks(bins, [bin_label(b) for b in bins])
        ax.set(xlabel="valid solutions of the input (binned)", ylabel=f"accuracy ({select}) %")
    else:
        df = curves_frame(run_dirs)
        if df.empty:
            raise UsageError("No train.jsonl lines to plot.")
        qs = [q for q in ("loss", "kl", "eval_accuracy_first", "eval_coverage") if q in set(df["quantity"])]
        fig, axes = plt.subplots(1, len(qs), figsize=(4 * len(qs), 3.5), squeeze=False)
        for ax, q in zip(axes[0], qs):
            sns.lineplot(df[df["quantity"] == q], x="step", y="value", hue="run", ax=ax, legend=ax is axes[0][0], seed=0)
            ax.set(title=q, ylabel="")
    return _save(fig, out)


def plot_grid(cells: list[dict], rule: str, out: Path, title: str = "") -> list[Path]:
    """Accuracy vs supervision steps, one line per width N, with 95% CI bands, from the cells
    of a scaling grid (`gram_bench.harness.scaling`); writes out.png and out.svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    key = f"accuracy_{rule}"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    widths = sorted({c["samples"] for c in cells})
    colors = sns.color_palette("viridis", len(widths))
    for color, n in zip(colors, widths):
        pts = sorted((c["steps"], c["metrics"][key]) for c in cells if c["samples"] == n and key in c["metrics"])
        if not pts:
            continue
        x = [d for d, _ in pts]
        ax.plot(x, [100 * m["value"] for _, m in pts], marker="o", color=color, label=f"N={n}")
        ax.fill_between(x, [100 * m["ci_low"] for _, m in pts], [100 * m["ci_high"] for _, m in pts],
                        color=color, alpha=0.15)
    ax.set(xscale="log", xlabel="supervision steps (depth)", ylabel=f"accuracy ({rule}) %", title=title)
    ax.set_xticks(sorted({c["steps"] for c in cells}), [str(d) for d in sorted({c["steps"] for c in cells})])
    ax.legend(title="samples")
    return _save(fig, out)


def _save(fig, out: Path) -> list[Path]:
    """Write a figure as out.png and out.svg (creating the folder) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for p in paths:  # rendered in memory, then written atomically (a run directory holds plots too)
        buf = io.BytesIO()
        # byte-identical output for identical data: no creation date, fixed SVG element ids
        with plt.rc_context({"svg.hashsalt": "gram-bench"}):
            fig.savefig(buf, dpi=150, format=p.suffix[1:], metadata={"Date": None} if p.suffix == ".svg" else None)
        atomic_write_bytes(p, buf.getvalue())
    plt.close(fig)
    return paths
