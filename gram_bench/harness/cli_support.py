"""What the `gram-bench` commands share: one-line errors and exit codes (argument parsing
errors included), the consoles, parsing of `--set` and integer lists, building a task from
`--set task.*`, the torchrun launch, and loading a runs directory with notes on what was
left out."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from gram_bench.core.errors import GramBenchError, UsageError

try:  # typer >= 0.16 vendors click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on click
    from click import exceptions as click_exceptions

console = Console()
err_console = Console(stderr=True)
STATE = {"debug": False}


def one_line(text: str) -> str:
    """A message as one printable line: line breaks and tabs become spaces, other control
    characters (e.g. terminal escapes in a crafted file name) are shown escaped."""
    out = []
    for ch in str(text):
        if ch in "\n\r\t\v\f":
            out.append(" ")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out).strip()


def print_error(message: str, style: str = "red", label: str = "error") -> None:
    err_console.print(f"[{style}]{label}:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)


class OneLineErrors(TyperGroup):
    """The top-level command group: click's argument errors (a bad type, a missing option, an
    unknown command) print as one `error:` line, like every other error, exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # the help was printed: exit as click does
                sys.exit(e.exit_code)
            if STATE["debug"]:
                raise
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None and isinstance(e, click_exceptions.UsageError) \
                else ""
            print_error(e.format_message() + hint)
            sys.exit(e.exit_code)
        except typer.Abort:
            print_error("aborted", "yellow")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from gram_bench.harness.lifecycle import Terminated

        try:
            return fn(*args, **kwargs)
        except GramBenchError as e:
            if STATE["debug"]:
                raise
            print_error(str(e))
            raise typer.Exit(e.exit_code)
        except Terminated:
            print_error("terminated by SIGTERM", "yellow", "stopped")
            raise typer.Exit(143)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130)
        except OSError as e:  # a path given on the command line cannot be read or written
            if STATE["debug"]:
                raise
            where = f" {e.filename}" if e.filename else ""
            print_error(f"cannot access{where}: {e.strerror or e}.")
            raise typer.Exit(2)
        except (typer.Exit, typer.Abort, click_exceptions.ClickException):
            raise
        except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback with --debug
            if STATE["debug"]:
                raise
            print_error(f"internal error: {type(e).__name__}: {e} (run `gram-bench --debug ...` for the traceback; "
                        f"please report it).")
            raise typer.Exit(1)
    return wrapper

def default_data_dir(data_dir: Optional[Path]) -> Path:
    return data_dir or Path(os.environ.get("GRAM_BENCH_DATA", "data"))


def parse_sets(values: Optional[List[str]]) -> dict:
    from gram_bench.harness.config import parse_set

    return parse_set(values or [])

def build_task(task: str, sets: Optional[List[str]], data_dir: Optional[Path]):
    from gram_bench.harness.config import build_dataclass
    from gram_bench.tasks import TASKS

    cls = TASKS.get(task)
    values = {}
    for k, v in parse_sets(sets).items():
        if not k.startswith("task."):
            raise UsageError(f"'data' commands take only task.* settings, got '{k}'.")
        values[k[5:]] = v
    cfg = build_dataclass(cls.Config, values, "task.")
    try:
        cfg.check()
    except ValueError as e:
        raise UsageError(f"{e} (a task setting).") from None
    return cls(cfg, default_data_dir(data_dir))

def parse_ints(value: Optional[str], flag: str, minimum: int = 1, example: str = "1,5,20") -> list[int]:
    """`"1,5,20"` -> [1, 5, 20]; None -> []; every value must be at least `minimum`."""
    if value is None:
        return []
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} expects comma-separated integers like {example} (one value or a comma-separated "
                         f"list), got '{value}'.") from None
    if not out or any(v < minimum for v in out):
        if minimum == 0:
            raise UsageError(f"{flag} expects non-negative integers like {example}, got '{value}'.")
        raise UsageError(f"{flag} must be at least {minimum}, got '{value}'.")
    return out


def parse_seeds(seeds: Optional[str]) -> list[Optional[int]]:
    return parse_ints(seeds, "--seeds", minimum=0, example="0,1,2") if seeds is not None else [None]

def launch_torchrun(nproc: int, args: list[str]) -> int:
    """Run `gram-bench ARGS` under `torchrun --standalone --nproc-per-node N` (an argument list,
    never a shell string); returns its exit code."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "gram_bench"] + (["--debug"] if STATE["debug"] else []) + args
    console.print(f"launching {nproc} processes: torchrun --standalone --nproc-per-node={nproc} -m gram_bench "
                  + escape(" ".join(args)))
    return subprocess.run(cmd).returncode

def write_or_print(text: str, out: Optional[Path]) -> None:
    from gram_bench.core.io import atomic_write_text

    if out is None:
        print(text, end="")
    else:
        atomic_write_text(out, text)
        console.print(f"wrote {escape(str(out))}")


def load_runs_noting_skips(runs_dir: Path):
    from gram_bench.leaderboards import load_runs

    if not runs_dir.is_dir():
        raise UsageError(f"Runs directory {runs_dir} does not exist; pass --runs-dir or run something first.")
    df = load_runs(runs_dir)
    incomplete = df.attrs.get("incomplete", [])
    if incomplete:
        shown = "; ".join(f"{d} ({s})" for d, s in incomplete[:5]) + (f"; and {len(incomplete) - 5} more"
                                                                       if len(incomplete) > 5 else "")
        print_error(f"{len(incomplete)} run(s) not finished, left out: {shown}", "yellow", "note")
    unreadable = df.attrs.get("unreadable", [])
    if unreadable:
        shown = "; ".join(f"{p} ({why})" for p, why in unreadable[:3]) + (f"; and {len(unreadable) - 3} more"
                                                                          if len(unreadable) > 3 else "")
        print_error(f"{len(unreadable)} unreadable file(s) skipped: {shown}", "yellow", "note")
    return df
