"""A table as data (columns, rows, computed cells, notes) and its renderings: markdown,
LaTeX (booktabs) and CSV."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pandas as pd

from gram_bench.core.errors import UsageError

FORMATS = ("markdown", "latex", "csv")


@dataclass(frozen=True)
class Col:
    key: str
    label: str
    dataset: str
    metric: str
    pct: bool = True  # show x100


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    model: str
    match: dict = field(default_factory=dict)  # the run's model.* overrides, exactly (ANY = any value)
    tag: str = ""  # inference-only eval overrides (eval file suffix)
    steps: int | None = None  # evaluation depth (None = the run's own eval)
    truncate_to: int | None = None  # recompute metrics from the first N samples of each record


@dataclass
class Cell:
    value: float | None = None
    low: float | None = None
    high: float | None = None
    seeds: int = 0
    profile: str | None = None
    runs: list = field(default_factory=list)
    paper: object = None
    n: int | None = None  # test inputs behind the value (the smallest over seeds)
    datasets: tuple = ()  # the runs' dataset names (a column's name plus a config hash, e.g. a profile's sizes)


@dataclass
class Table:
    name: str
    title: str
    rows: list[Row]
    cols: list[Col]
    cells: dict  # (row key, col key) -> Cell
    notes: list[str]

    # ---- rendering
    def _fmt(self, col: Col, x: float, like: float | None = None) -> str:
        """Percent with one decimal; counts and scores with 2 decimals below 100, none above
        (decided by `like`, the cell's value, so a value and its CI share one format)."""
        ref = x if like is None else like
        return f"{100 * x:.1f}" if col.pct else (f"{x:.0f}" if abs(ref) >= 100 else f"{x:.2f}")

    def _paper(self, p) -> str:
        if p is None:
            return ""
        if isinstance(p, tuple):
            return f"{p[0]:g} ± {p[1]:g}"
        return p if isinstance(p, str) else f"{p:g}"

    def cell_text(self, r: Row, c: Col) -> str:
        cell = self.cells[(r.key, c.key)]
        ours = "no run" if cell.value is None else \
            f"{self._fmt(c, cell.value)} [{self._fmt(c, cell.low, cell.value)}, {self._fmt(c, cell.high, cell.value)}]"
        p = self._paper(cell.paper)
        return f"{ours} (paper {p})" if p else ours

    def to_frame(self) -> pd.DataFrame:
        out = []
        for r in self.rows:
            for c in self.cols:
                cell = self.cells[(r.key, c.key)]
                p = cell.paper[0] if isinstance(cell.paper, tuple) else cell.paper
                scale = 100 if c.pct else 1
                out.append({"table": self.name, "row": r.label, "column": c.label, "dataset": c.dataset,
                            "metric": c.metric,
                            "value": None if cell.value is None else scale * cell.value,
                            "ci_low": None if cell.low is None else scale * cell.low,
                            "ci_high": None if cell.high is None else scale * cell.high,
                            "seeds": cell.seeds, "profile": cell.profile, "paper": p,
                            "runs": ";".join(cell.runs)})
        return pd.DataFrame(out)

    def render(self, fmt: str = "markdown") -> str:
        if fmt not in FORMATS:
            raise UsageError(f"Unknown format '{fmt}'; choose one of {', '.join(FORMATS)}.")
        if fmt == "csv":
            buf = io.StringIO()
            self.to_frame().to_csv(buf, index=False)
            return buf.getvalue()
        header = ["model"] + [c.label for c in self.cols]
        body = [[r.label] + [self.cell_text(r, c) for c in self.cols] for r in self.rows]
        if fmt == "markdown":
            lines = [f"### {self.title}", "", "| " + " | ".join(header) + " |",
                     "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in body]
            lines += [""] + [f"- {n}" for n in self.notes]
            return "\n".join(lines) + "\n"
        esc = _latex_escape
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 r"\begin{tabular}{l" + "c" * len(self.cols) + "}", r"\toprule",
                 " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(x) for x in row) + r" \\" for row in body]
        lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(self.title)}. " +
                  esc(" ".join(self.notes)) + "}", r"\end{table}"]
        return "\n".join(lines) + "\n"


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("~", r"$\sim$"), ("^", r"\^{}"), ("[", "{[}"), ("]", "{]}")):
        s = s.replace(a, b)
    return s
