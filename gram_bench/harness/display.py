"""What a run shows on the terminal: progress bars, the progress line of a train.jsonl row
(`train_stats`), and the table of an evaluation summary (`print_summary`)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(console: Console, *fields: str) -> Progress:
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    cols += [TextColumn("{task.fields[%s]}" % f) for f in fields]
    cols += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    return Progress(*cols, console=console, transient=False)


def train_stats(row: dict) -> str:
    """The progress line of a train.jsonl row. A model with a posterior shows its training
    exact (`post`, sees the answer), the prior's exact on the same batch (`prior`, what
    inference does) and the KL in nats per example; others show their exact (`acc`)."""
    if "prior_exact" in row:
        parts = f"post {row.get('exact', 0):.2f} prior {row['prior_exact']:.2f} kl {row.get('kl', 0):.1f}"
    else:
        parts = f"acc {row.get('exact', 0):.2f}"
    return f"loss {row.get('loss', float('nan')):.3f} {parts} {row['examples_per_s']:.0f} ex/s"


def print_summary(console: Console, summary: dict, title: str = "") -> None:
    from rich.table import Table

    from gram_bench.metrics.summary import is_fraction

    t = Table(title=escape(title))
    for col in ("metric", "value", "95% CI", "n"):
        t.add_column(col)
    for k, m in summary["metrics"].items():
        if k.endswith("_multi") and not k.startswith(("accuracy_first", "accuracy_vote", "coverage")):
            continue
        f = (lambda x: f"{100 * x:.1f}") if is_fraction(k) else (lambda x: f"{x:.2f}")
        t.add_row(k, f(m["value"]), f"[{f(m['ci_low'])}, {f(m['ci_high'])}]", str(m["n"]))
    console.print(t)
    console.print(f"{summary['n_examples']} inputs x {summary['samples']} samples, {summary['steps']} steps, "
                  f"{summary['answers_per_second']} answers/s; CI: {summary['ci_method']}")

