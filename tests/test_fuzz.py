"""Property-based fuzzing (hypothesis) of the CLI and the data loaders.

Every case is a malformed input: a bad argument or `--set` value for each command, a Sudoku
CSV with one broken row, a mutated ARC JSON file, a mutated dataset manifest or truncated
.npy, a run directory with a mutated config or checkpoint. Each must end with exit code 2
and one `error:` line (no traceback) naming the file and line where there is one, and must
leave no file behind. The number of cases run is printed in the terminal summary;
`GRAM_BENCH_FUZZ_SCALE=10` runs ten times as many."""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gram_bench.harness.config import PROFILES, parse_set
from gram_bench.core.errors import UsageError
from gram_bench.core.io import sha256_file
from gram_bench.leaderboards import load_runs
from gram_bench.leaderboards.export import export
from gram_bench.leaderboards.tables import TABLES, build_table
from gram_bench.tasks.arc_grids import read_arc_json
from gram_bench.tasks.nqueens import NQueens

SCALE = float(os.environ.get("GRAM_BENCH_FUZZ_SCALE", "1"))  # e.g. 10 for a long fuzzing session
FUZZ = settings(deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home(tmp_path_factory):
    """Hypothesis keeps caches in ./.hypothesis; keep them under pytest's temp dirs instead."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


def count(counts: dict, what: str) -> None:
    key = f"fuzz cases: {what}"
    counts[key] = counts.get(key, 0) + 1


def assert_one_line_error(res, *phrases: str) -> str:
    """Exit 2, and stderr is one `error:` line (stdout may hold progress output)."""
    out = res.output
    assert res.exit_code == 2, out
    assert "Traceback" not in out, out
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    for p in phrases:
        assert p in res.text, (p, out)
    return lines[0]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ----------------------------------------------------------------------------- the CLI

ANY_TEXT = st.text(max_size=12)  # any code points: control characters, surrogates, ...
WORD = st.text(alphabet=string.ascii_letters + string.digits + "_-.", min_size=1, max_size=10)
# has a letter no number spelling uses: never parses as an int or a float
NOT_A_NUMBER = st.builds(lambda a, b, c: a + b + c, st.text(max_size=4), st.sampled_from("ghjkmpqrstuvwxyzGHJKMQRSWXYZ"),
                         st.text(max_size=4))

INT_KEYS = {"train.steps": 1, "train.batch_size": 1, "train.log_every": 1, "train.checkpoint_every": 1,
            "train.eval_samples": 1, "eval.samples": 1, "eval.batch_size": 1, "model.hidden": 1, "model.n_sup": 1,
            "model.heads": 1, "eval.limit": 0, "train.warmup_steps": 0, "seed": 0}
FLOAT_KEYS = {"train.lr": (0.0, False), "train.grad_clip": (0.0, False), "train.weight_decay": (0.0, True),
              "train.max_minutes": (0.0, True)}
CHOICE_KEYS = {"train.precision": ("auto", "fp32", "bf16"), "train.nonfinite": ("stop", "skip"),
               "eval.split": ("test", "train"), "model.mixer": ("attention", "mlp"), "model.decode": ("argmax", "sample"),
               "model.init": ("fixed", "random"), "model.halting": ("bce", "q_learning"),
               "model.ce_reduce": ("mean", "sum")}
BOOL_KEYS = ("model.act", "model.detach_heads", "task.train_on_eval_demos")
VALID_KEYS = set(INT_KEYS) | set(FLOAT_KEYS) | set(CHOICE_KEYS) | set(BOOL_KEYS)


def parsed(value: str):
    return parse_set([f"k={value}"])["k"]


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@st.composite
def bad_set(draw) -> str:
    """One `--set` item that must be refused."""
    kind = draw(st.sampled_from(["int-type", "int-range", "float-type", "float-range", "choice", "bool",
                                 "unknown-key", "no-equals", "task-range"]))
    if kind == "int-type":
        key, v = draw(st.sampled_from(sorted(INT_KEYS))), draw(st.one_of(NOT_A_NUMBER, st.floats().map(repr),
                                                                       st.just("[1]"), st.just("{a: 1}"), st.just("")))
        assume(not is_int(parsed(v)))
    elif kind == "int-range":
        key = draw(st.sampled_from(sorted(INT_KEYS)))
        v = str(draw(st.one_of(st.integers(max_value=INT_KEYS[key] - 1), st.integers(min_value=2 ** 63))))
    elif kind == "float-type":
        key = draw(st.sampled_from(sorted(FLOAT_KEYS)))
        v = draw(st.one_of(NOT_A_NUMBER, st.sampled_from(["nan", "inf", "-inf", "1e999", ".nan", "[1.0]", "true"])))
    elif kind == "float-range":
        key = draw(st.sampled_from(sorted(FLOAT_KEYS)))
        low, zero_ok = FLOAT_KEYS[key]
        v = repr(draw(st.floats(max_value=low, allow_nan=False, allow_infinity=False)
                      .filter(lambda x: x < low if zero_ok else x <= low)))
    elif kind == "choice":
        key = draw(st.sampled_from(sorted(CHOICE_KEYS)))
        v = draw(ANY_TEXT)
        p = parsed(v)
        assume(not (isinstance(p, (str, int, float)) and not isinstance(p, bool) and str(p) in CHOICE_KEYS[key]))
    elif kind == "bool":
        key, v = draw(st.sampled_from(BOOL_KEYS)), draw(st.one_of(NOT_A_NUMBER, st.integers().map(str)))
        assume(not isinstance(parsed(v), bool))
    elif kind == "unknown-key":
        key = draw(st.one_of(WORD, st.builds(lambda g, w: f"{g}.{w}", st.sampled_from(["train", "eval", "model", "task",
                                                                                         "tarin", "x"]), WORD)))
        assume(key not in VALID_KEYS and key != "seed")
        from gram_bench.harness.config import resolve
        try:  # keys that happen to exist (e.g. model.K) are not unknown
            resolve("nqueens", "gram", "smoke", {key: "?"})
        except UsageError as e:
            assume("Unknown config key" in str(e))
        v = draw(ANY_TEXT)
    elif kind == "no-equals":
        return draw(ANY_TEXT.filter(lambda t: "=" not in t))
    else:
        key, v = "task.n", str(draw(st.one_of(st.integers(max_value=3), st.integers(min_value=13, max_value=2 ** 62))))
    return f"{key}={v}"


@st.composite
def bad_argv(draw, rdir: str, evaldir: str) -> tuple[str, list[str]]:
    """(what, argv) of one malformed command line; `{R}`/`{D}` stand for fresh directories."""
    run = ["run", "--task", "nqueens", "--model", "gram", "--profile", "smoke", "--device", "cpu",
           "--runs-dir", "{R}", "--data-dir", "{D}"]
    kind = draw(st.sampled_from(["run-set", "run-set", "run-set", "run-option", "eval", "data", "table",
                                 "leaderboard", "list", "plot", "scale", "ablation", "unknown"]))
    if kind == "run-set":
        bad = draw(st.lists(bad_set(), min_size=1, max_size=2))
        used = {b.split("=", 1)[0].strip() for b in bad}
        good = draw(st.lists(st.sampled_from([g for g in ("train.steps=2", "model.hidden=16", "eval.samples=2",
                                                          "seed=3") if g.split("=")[0] not in used]), max_size=2))
        items = draw(st.permutations(good + bad))
        return kind, run + [x for s in items for x in ("--set", s)]
    if kind == "run-option":
        opt = draw(st.sampled_from(["--samples", "--seeds", "--profile", "--device", "--task", "--model", "--unknown",
                                    "--resume-force", "--missing"]))
        if opt == "--samples":
            return kind, run + ["--samples", draw(st.one_of(NOT_A_NUMBER, st.integers(max_value=0).map(str)))]
        if opt == "--seeds":
            v = draw(st.one_of(NOT_A_NUMBER, st.just(""), st.just(","), st.integers(max_value=-1).map(str),
                               st.integers(min_value=2 ** 32).map(str)))
            return kind, run + ["--seeds", v]
        if opt == "--profile":
            return kind, run + ["--profile", draw(ANY_TEXT.filter(lambda t: t not in PROFILES))]
        if opt == "--device":
            return kind, run + ["--device", draw(ANY_TEXT.filter(lambda t: t not in ("auto", "cpu")
                                                                 and not t.startswith("cuda")))]
        if opt in ("--task", "--model"):
            from gram_bench.models import MODELS
            from gram_bench.tasks import TASKS
            names = TASKS if opt == "--task" else MODELS
            return kind, run + [opt, draw(ANY_TEXT.filter(lambda t: t not in names))]
        if opt == "--unknown":
            return kind, run + ["--" + draw(WORD.filter(lambda w: not w.startswith(("h", "r", "f", "s", "d", "p", "t",
                                                                                      "m"))))]
        if opt == "--resume-force":
            return kind, run + ["--resume", "--force"]
        return kind, ["run", "--task", "nqueens", "--runs-dir", "{R}"]
    if kind == "eval":
        which = draw(st.sampled_from(["dir", "samples", "steps", "select", "limit", "set"]))
        if which == "dir":
            return kind, ["eval", "{R}/" + draw(WORD)]
        extra = {"samples": ["--samples", draw(st.one_of(NOT_A_NUMBER, st.just("0"), st.just("1,-2")))],
                 "steps": ["--steps", draw(st.one_of(NOT_A_NUMBER, st.just("0,4")))],
                 "select": ["--select", draw(ANY_TEXT.filter(lambda t: t not in ("first", "vote", "lprm", "halt")))],
                 "limit": ["--limit", str(draw(st.integers(max_value=-1)))],
                 "set": ["--set", draw(st.one_of(st.just("train.lr=1"), st.just("model.hidden=8"),
                                                 st.builds(lambda v: f"model.decode={v}",
                                                           ANY_TEXT.filter(lambda t: t not in ("argmax", "sample")))))]
                 }[which]
        return kind, ["eval", evaldir, "--device", "cpu", "--data-dir", "{D}", *extra]
    if kind == "data":
        cmd = draw(st.sampled_from(["build", "verify"]))
        which = draw(st.sampled_from(["task", "set-key", "set-value"]))
        if which == "task":
            from gram_bench.tasks import TASKS
            return kind, ["data", cmd, "--task", draw(ANY_TEXT.filter(lambda t: t not in TASKS)), "--data-dir", "{D}"]
        if which == "set-key":
            return kind, ["data", cmd, "--task", "nqueens", "--set", draw(st.sampled_from(["model.hidden=8",
                                                                                          "train.lr=1", "seed=1"])),
                          "--data-dir", "{D}"]
        v = draw(st.one_of(NOT_A_NUMBER, st.integers(max_value=3).map(str), st.integers(min_value=13).map(str)))
        return kind, ["data", cmd, "--task", "nqueens", "--set", f"task.n={v}", "--data-dir", "{D}"]
    if kind == "table":
        which = draw(st.sampled_from(["name", "format", "select", "dataset", "runs-dir"]))
        base = ["table", "multi-solution", "--runs-dir", "{E}"]
        if which == "name":
            return kind, ["table", draw(ANY_TEXT.filter(lambda t: t not in TABLES)), "--runs-dir", "{E}"]
        if which == "format":
            return kind, base + ["--format", draw(ANY_TEXT.filter(lambda t: t not in ("markdown", "latex", "csv")))]
        if which == "select":
            return kind, base + ["--select", draw(ANY_TEXT.filter(lambda t: t not in ("first", "vote", "lprm", "halt")))]
        if which == "dataset":
            return kind, base + ["--dataset", draw(WORD)]
        return kind, ["table", "multi-solution", "--runs-dir", "{R}/" + draw(WORD)]
    if kind == "leaderboard":
        if draw(st.booleans()):
            return kind, ["leaderboard", "export", "--runs-dir", "{E}",
                          "--format", draw(ANY_TEXT.filter(lambda t: t not in ("markdown", "csv")))]
        return kind, ["leaderboard", draw(WORD.filter(lambda w: w != "export"))]
    if kind == "list":
        return kind, ["list", draw(ANY_TEXT.filter(lambda t: t not in ("tasks", "models", "profiles", "tables", "all")))]
    if kind == "plot":
        if draw(st.booleans()):
            return kind, ["plot", draw(ANY_TEXT.filter(lambda t: t not in ("scaling", "solutions", "coverage",
                                                                           "curves"))), evaldir, "-o", "{R}/p.png"]
        if draw(st.booleans()):
            return kind, ["plot", "curves", evaldir, "-o", "{R}/p.png", "--select",
                          draw(ANY_TEXT.filter(lambda t: t not in ("first", "vote", "lprm", "halt")))]
        return kind, ["plot", "curves", "{R}/" + draw(WORD), "-o", "{R}/p.png"]
    if kind == "scale":
        which = draw(st.sampled_from(["samples", "steps", "limit"]))
        extra = {"samples": ["--samples", draw(st.one_of(NOT_A_NUMBER, st.just("0"))), "--steps", "2"],
                 "steps": ["--steps", draw(st.one_of(NOT_A_NUMBER, st.just("-1")))],
                 "limit": ["--steps", "2", "--limit", str(draw(st.integers(max_value=-1)))]}[which]
        return kind, ["scale", evaldir, "--device", "cpu", "--data-dir", "{D}", *extra]
    if kind == "ablation":
        from gram_bench.core.variants import VARIANTS
        keys = {v.key for v in VARIANTS}
        return kind, ["ablation", "--task", "nqueens", "--profile", "smoke", "--runs-dir", "{R}", "--data-dir", "{D}",
                      "--only", draw(WORD.filter(lambda w: w not in keys))]
    from typer.main import get_command

    from gram_bench.harness.cli import app
    names = set(get_command(app).commands)
    return kind, [draw(ANY_TEXT.filter(lambda t: t not in names and not t.startswith("-") and t.strip()))]


@pytest.fixture(scope="module")
def fuzz_dirs(tmp_path_factory, gram_run):
    """A copy of the smoke GRAM run (commands that read a run get it) and an empty runs dir."""
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "runs" / "nqueens" / "gram" / gram_run.name
    shutil.copytree(gram_run, run)
    (root / "empty").mkdir()
    return root, run


def test_fuzz_cli_arguments(cli, fuzz_dirs, reliability_counts):
    root, run = fuzz_dirs
    before = listing(root)

    @settings(FUZZ, max_examples=int(300 * SCALE))
    @given(case=bad_argv(rdir="{R}", evaldir=str(run)))
    def check(case):
        kind, argv = case
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            fresh = Path(tmp)
            args = [a.replace("{R}", str(fresh / "runs")).replace("{D}", str(fresh / "data"))
                    .replace("{E}", str(root / "empty")) for a in argv]
            res = cli(*args)
            assert_one_line_error(res)
            assert listing(fresh) == [], (args, listing(fresh))  # nothing written
        count(reliability_counts, f"CLI ({kind})")

    check()
    assert listing(root) == before  # the run that commands read is untouched


# ----------------------------------------------------------------------------- Sudoku CSV

SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
HEADER = "source,question,answer,rating"


def sudoku_row(k: int) -> tuple[str, str, str, str]:
    """A valid row: the solution under a digit permutation, every third cell blanked."""
    perm = np.random.default_rng(k).permutation(9) + 1
    a = "".join(str(perm[int(c) - 1]) for c in SOLUTION)
    q = "".join("." if i % 3 == k % 3 else c for i, c in enumerate(a))
    return (f"src{k}", q, a, str(k))


@st.composite
def broken_row(draw, k: int) -> tuple[bytes, str]:
    """(the bytes of one malformed CSV row, what is wrong) on a single line."""
    src, q, a, r = sudoku_row(k)
    kind = draw(st.sampled_from(["fields", "question", "answer", "rule", "given", "rating", "bytes", "huge"]))
    if kind == "fields":
        fields = [src, q, a, r]
        n = draw(st.sampled_from([1, 2, 3, 5, 6]))
        fields = (fields + ["x", "y"])[:n]
        return ",".join(fields).encode(), kind
    if kind == "question":
        q2 = draw(st.one_of(st.text(alphabet="0123456789.", max_size=90).filter(lambda t: len(t) != 81),
                            st.builds(lambda i, c: q[:i] + c + q[i + 1:], st.integers(0, 80),
                                      st.sampled_from("x -_/é\t"))))
        return ",".join([src, q2, a, r]).encode(), kind
    if kind == "answer":
        i = draw(st.integers(0, 80))
        a2 = draw(st.one_of(st.just(a[:i] + "." + a[i + 1:]), st.just(a[:i] + "0" + a[i + 1:]), st.just(a[:80]),
                            st.just(a + "1")))
        return ",".join([src, q, a2, r]).encode(), kind
    if kind == "rule":  # swap two different digits of one row: the columns break
        row = draw(st.integers(0, 8))
        i, j = 9 * row, 9 * row + draw(st.integers(1, 8))
        a2 = list(a)
        a2[i], a2[j] = a2[j], a2[i]
        q2 = "".join("." for _ in q)  # no givens, so the rule is what fails
        return ",".join([src, q2, "".join(a2), r]).encode(), kind
    if kind == "given":
        i = next(i for i, c in enumerate(q) if c != ".")
        q2 = q[:i] + str(int(q[i]) % 9 + 1) + q[i + 1:]
        return ",".join([src, q2, a, r]).encode(), kind
    if kind == "rating":
        r2 = draw(st.one_of(NOT_A_NUMBER.filter(lambda t: not any(c in t for c in ',"\r\n')),
                            st.integers(min_value=2 ** 63).map(str), st.just("1.5"), st.just("")))
        return ",".join([src, q, a, r2]).encode("utf-8", "surrogatepass"), kind
    if kind == "bytes":
        field = draw(st.sampled_from([1, 2, 3]))
        parts = [src.encode(), q.encode(), a.encode(), r.encode()]
        at = draw(st.integers(0, len(parts[field])))
        junk = draw(st.sampled_from([b"\xff", b"\x80\x80", b"\xc3", b"\x00", b"\xed\xa0\x80"]))
        parts[field] = parts[field][:at] + junk + parts[field][at:]
        return b",".join(parts), kind
    return b",".join([src.encode() + b"x" * 140_000, q.encode(), a.encode(), r.encode()]), kind


@st.composite
def broken_csv(draw) -> tuple[bytes, int, str]:
    """(train.csv bytes, the line that is wrong, what is wrong): valid rows and one broken one,
    or a broken header (line 1)."""
    n = draw(st.integers(1, 6))
    rows = [",".join(sudoku_row(k)).encode() for k in range(n)]
    if draw(st.integers(0, 9)) == 0:
        header = draw(st.one_of(st.just(b"source,question,answer"), st.just(b"question,source,answer,rating"),
                                st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b
                                                              and b.strip() != HEADER.encode())))
        return header + b"\n" + b"\n".join(rows) + b"\n", 1, "header"
    at = draw(st.integers(0, n))
    bad, kind = draw(broken_row(k=100 + at))
    rows.insert(at, bad)
    end = draw(st.sampled_from([b"\n", b""]))
    return HEADER.encode() + b"\n" + b"\n".join(rows) + end, at + 2, kind


def test_fuzz_sudoku_csv(cli, reliability_counts, tmp_path_factory):
    root = tmp_path_factory.mktemp("sudoku-fuzz")
    test_csv = (HEADER + "\n" + "\n".join(",".join(sudoku_row(k)) for k in range(50, 53)) + "\n").encode()

    @settings(FUZZ, max_examples=int(150 * SCALE))
    @given(case=broken_csv())
    def check(case):
        data, line, kind = case
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            src, out = Path(tmp) / "csv", Path(tmp) / "data"
            src.mkdir()
            (src / "train.csv").write_bytes(data)
            (src / "test.csv").write_bytes(test_csv)
            res = cli("data", "build", "--task", "sudoku-extreme", "--data-dir", out, "--set", f"task.data_dir={src}",
                      "--set", "task.bad_rows=error", "--set", "task.train_puzzles=1000000", "--set",
                      "task.augmentations=1")
            assert_one_line_error(res, f"{src / 'train.csv'}:{line}:")
            assert [p for p in listing(out) if not Path(p).name.startswith(".") or not p.endswith(".lock")] == [], \
                listing(out)  # no dataset (complete or partial) was written
        count(reliability_counts, f"Sudoku CSV ({kind})")

    check()


# ----------------------------------------------------------------------------- ARC JSON

SMALL_ARC = {"train": {"t1": {"train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}],
                              "test": [{"input": [[0]], "output": [[9]]}]},
                       "t2": {"train": [{"input": [[5, 5, 5]], "output": [[5], [5], [5]]}], "test": []}},
             "eval": {"e1": {"train": [{"input": [[7]], "output": [[7, 7]]}],
                             "test": [{"input": [[1, 1], [1, 1]], "output": [[2]]}]}}}
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False)
                           | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=8)


def valid_arc(d) -> bool:
    """An independent statement of what read_arc_json accepts."""
    def grid(g):
        return (isinstance(g, list) and 1 <= len(g) <= 30 and all(isinstance(r, list) for r in g)
                and len({len(r) for r in g}) == 1 and 1 <= len(g[0]) <= 30
                and all(type(c) is int and 0 <= c <= 9 for r in g for c in r))
    if not (isinstance(d, dict) and isinstance(d.get("train"), dict) and isinstance(d.get("eval"), dict)):
        return False
    for split in ("train", "eval"):
        for t in d[split].values():
            if not isinstance(t, dict):
                return False
            for key in ("train", "test"):
                ps = t.get(key, [])
                if not isinstance(ps, list):
                    return False
                for p in ps:
                    if not (isinstance(p, dict) and "input" in p and "output" in p and grid(p["input"])
                            and grid(p["output"])):
                        return False
    return True


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_arc(draw) -> tuple[bytes, str]:
    doc = json.loads(json.dumps(SMALL_ARC))
    kind = draw(st.sampled_from(["replace", "replace", "delete", "text", "bytes"]))
    if kind in ("replace", "delete"):
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if kind == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(st.one_of(JSON_VALUES, st.integers(-3, 12), st.just([[1, 2], [3]]),
                                              st.just([[1] * 31]), st.just([]), st.just(True)))
        text = json.dumps(doc, indent=draw(st.sampled_from([None, 1, 2])))
        return text.encode(), kind
    text = json.dumps(doc, indent=1)
    if kind == "text":  # a syntax error: cut or splice
        i = draw(st.integers(0, len(text) - 1))
        text = draw(st.sampled_from([text[:i], text[:i] + draw(st.sampled_from(["}", ",", "]]", "x", "\"", "{"]))
                                     + text[i:]]))
        return text.encode(), kind
    data = text.encode()
    i = draw(st.integers(0, len(data)))
    return data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i:], kind


def test_fuzz_arc_json(reliability_counts, tmp_path_factory):
    root = tmp_path_factory.mktemp("arc-fuzz")

    @settings(FUZZ, max_examples=int(200 * SCALE))
    @given(case=mutated_arc())
    def check(case):
        data, kind = case
        path = root / "arc.json"
        path.write_bytes(data)
        try:
            doc = read_arc_json(path)
        except UsageError as e:
            msg = str(e)
            assert "\n" not in msg and msg.startswith(str(path)), msg
            if kind == "text" and "JSON" in msg:
                assert re.match(re.escape(str(path)) + r":\d+:\d+: not valid JSON", msg), msg
            outcome = "refused"
        else:
            assert valid_arc(doc), doc  # accepted only when it really is an ARC file
            outcome = "accepted (still valid)"
        count(reliability_counts, f"ARC JSON ({kind}, {outcome})")

    check()


# ----------------------------------------------------------------------------- dataset manifests and .npy


@st.composite
def dataset_damage(draw) -> tuple[str, object]:
    kind = draw(st.sampled_from(["manifest-json", "manifest-value", "manifest-text", "file-name", "digest",
                                 "npy-truncated", "npy-truncated-rehashed", "npy-garbage-rehashed", "npy-missing"]))
    if kind == "manifest-json":
        return kind, draw(JSON_VALUES)
    if kind == "manifest-value":
        return kind, (draw(st.sampled_from(["files", "counts", "task", "config"])), draw(JSON_VALUES))
    if kind == "manifest-text":
        return kind, draw(st.binary(max_size=40))
    if kind == "file-name":
        return kind, draw(st.one_of(st.sampled_from(["../escape.npy", "/etc/passwd", "x.txt", ".hidden.npy",
                                                     "sub/dir.npy", "nothere.npy"]), ANY_TEXT))
    if kind == "digest":
        return kind, draw(st.one_of(st.text(alphabet="0123456789abcdef", max_size=64), JSON_VALUES))
    return kind, draw(st.integers(0, 10_000))


def damage(ddir: Path, kind: str, arg) -> None:
    mpath = ddir / "manifest.json"
    m = json.loads(mpath.read_text())
    names = sorted(m["files"])
    target = ddir / names[(arg if isinstance(arg, int) else 0) % len(names)]
    if kind == "manifest-json":
        mpath.write_text(json.dumps(arg))
    elif kind == "manifest-value":
        key, value = arg
        assume(m.get(key) != value and not (key == "counts" and isinstance(value, dict)))
        m[key] = value
        mpath.write_text(json.dumps(m))
    elif kind == "manifest-text":
        mpath.write_bytes(arg)
    elif kind == "file-name":
        assume(arg not in m["files"])
        m["files"][arg] = m["files"].pop(names[0])
        mpath.write_text(json.dumps(m))
    elif kind == "digest":
        assume(arg != m["files"][names[0]])
        m["files"][names[0]] = arg
        mpath.write_text(json.dumps(m))
    elif kind == "npy-missing":
        target.unlink()
    else:
        data = target.read_bytes()
        if kind == "npy-garbage-rehashed":
            target.write_bytes(np.random.default_rng(arg).bytes(arg % 300))
        else:
            target.write_bytes(data[:arg % len(data)])
        if kind != "npy-truncated":
            m["files"][target.name] = sha256_file(target)
            mpath.write_text(json.dumps(m))


def test_fuzz_dataset_manifest_and_npy(cli, data_root, reliability_counts, tmp_path_factory):
    root = tmp_path_factory.mktemp("data-fuzz")

    @settings(FUZZ, max_examples=int(120 * SCALE))
    @given(case=dataset_damage())
    def check(case):
        kind, arg = case
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            shutil.copytree(data_root / "nqueens-8", Path(tmp) / "nqueens-8")
            damage(Path(tmp) / "nqueens-8", kind, arg)
            before = listing(Path(tmp))
            res = cli("data", "verify", "--task", "nqueens", "--data-dir", tmp)
            line = assert_one_line_error(res)
            assert "nqueens-8" in line
            assert listing(Path(tmp)) == before
            with pytest.raises(UsageError):  # and the loader a run uses refuses it too
                NQueens(NQueens.Config(n=8), tmp).arrays()
        count(reliability_counts, f"dataset dir ({kind})")

    check()


# ----------------------------------------------------------------------------- run directories (eval)

CONFIG_DAMAGE = st.one_of(
    st.tuples(st.just("yaml-text"), st.binary(max_size=60)),
    st.tuples(st.just("yaml-value"), JSON_VALUES),
    st.tuples(st.just("python-tag"), st.just("!!python/object/apply:os.system ['touch pwned']\n")),
    st.tuples(st.just("drop-section"), st.sampled_from(["task", "model", "train", "eval", "profile", "seed"])),
    st.tuples(st.just("bad-field"), st.tuples(st.sampled_from(["train.lr", "train.steps", "model.hidden", "seed",
                                                                "task.n", "eval.split", "model.name", "task.name",
                                                                "profile", "train.nope"]), JSON_VALUES)),
)
CKPT_DAMAGE = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=200)),
    st.tuples(st.just("truncated"), st.integers(0, 10 ** 6)),
    st.tuples(st.just("structure"), JSON_VALUES),
    st.tuples(st.just("drop-key"), st.sampled_from(["model", "step", "optimizer", "sampler", "rng", "config",
                                                    "fingerprint"])),
    st.tuples(st.just("shape"), st.integers(0, 10 ** 6)),
    st.tuples(st.just("other-config"), st.sampled_from(["model.hidden", "seed", "task.n", "model.name"])),
)


def damage_run(rdir: Path, kind: str, arg) -> bool:
    """Damage a copy of a finished run; returns False when the damage is a no-op."""
    import yaml

    cpath, kpath = rdir / "config.yaml", rdir / "checkpoint.pt"
    cfg = yaml.safe_load(cpath.read_text())
    if kind == "yaml-text":
        cpath.write_bytes(arg)
    elif kind == "yaml-value":
        cpath.write_text(yaml.safe_dump(arg))
    elif kind == "python-tag":
        cpath.write_text(arg)
    elif kind == "drop-section":
        del cfg[arg]
        cpath.write_text(yaml.safe_dump(cfg))
    elif kind == "bad-field":
        key, value = arg
        group, _, name = key.partition(".")
        if key == "eval.split" and value in ("test", "train"):
            return False
        if name:
            if cfg[group].get(name) == value:
                return False
            cfg[group][name] = value
        else:
            if cfg.get(group) == value:
                return False
            cfg[group] = value
        cpath.write_text(yaml.safe_dump(cfg))
    else:
        ck = torch.load(kpath, weights_only=True)
        if kind == "bytes":
            kpath.write_bytes(arg)
        elif kind == "truncated":
            data = kpath.read_bytes()
            kpath.write_bytes(data[:arg % len(data)])
        elif kind == "structure":
            torch.save(arg, kpath)
        elif kind == "drop-key":
            del ck[arg]
            torch.save(ck, kpath)
        elif kind == "shape":
            names = sorted(k for k, v in ck["model"].items() if v.ndim)
            k = names[arg % len(names)]
            ck["model"][k] = ck["model"][k].flatten()[:-1].clone()
            torch.save(ck, kpath)
        elif kind == "other-config":
            group, _, name = arg.partition(".")
            if group == "seed":
                ck["config"]["seed"] = 99
            else:
                ck["config"][group][name] = {"model.hidden": 64, "task.n": 10, "model.name": "trm"}[arg]
            torch.save(ck, kpath)
    return True


def test_fuzz_run_directory(cli, gram_run, data_root, reliability_counts, tmp_path_factory):
    root = tmp_path_factory.mktemp("rundir-fuzz")

    @settings(FUZZ, max_examples=int(60 * SCALE))
    @given(case=st.one_of(CONFIG_DAMAGE, CKPT_DAMAGE))
    def check(case):
        kind, arg = case
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            rdir = Path(tmp) / "nqueens" / "gram" / gram_run.name
            shutil.copytree(gram_run, rdir)
            assume(damage_run(rdir, kind, arg))
            before = listing(Path(tmp))
            res = cli("eval", rdir, "--device", "cpu", "--data-dir", data_root, "--samples", "2")
            line = assert_one_line_error(res)
            assert str(rdir) in line or "config" in line, line
            assert listing(Path(tmp)) == before, "an eval of a damaged run wrote files"
            assert not (Path.cwd() / "pwned").exists()
        count(reliability_counts, f"run dir for eval ({kind})")

    check()


# ----------------------------------------------------------------------------- readers never crash


@st.composite
def garbage_runs(draw) -> list[tuple[str, bytes]]:
    files = []
    for i in range(draw(st.integers(1, 3))):
        base = f"nqueens/gram/r{i}"
        for name in draw(st.lists(st.sampled_from(["config.yaml", "env.json", "status", "train.jsonl",
                                                   "eval/test.json", "eval/test.examples.jsonl.gz"]), unique=True)):
            content = draw(st.one_of(st.binary(max_size=60), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                                     st.sampled_from([b"finished\n", b"running\n",
                                                      b"task: {name: nqueens, n: 8}\nmodel: {name: gram}\n",
                                                      b'{"metrics": {"accuracy_first": {"value": "x"}}}',
                                                      b'{"metrics": {"a": {"value": 1, "ci_low": 0, "ci_high": 1, '
                                                      b'"n": 3}}, "samples": "many"}'])))
            files.append((f"{base}/{name}", content))
        files.append((f"{base}/config.yaml", draw(st.sampled_from([
            b"task: {name: nqueens, n: 8}\nmodel: {name: gram}\nprofile: smoke\nseed: 0\n", b"[1, 2]", b"\xff"]))))
        files.append((f"{base}/status", b"finished\n"))
    return files


def test_fuzz_readers_never_crash(cli, reliability_counts, tmp_path_factory):
    root = tmp_path_factory.mktemp("reader-fuzz")

    @settings(FUZZ, max_examples=int(40 * SCALE))
    @given(files=garbage_runs())
    def check(files):
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            for rel, content in files:
                p = Path(tmp) / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(content)
            df = load_runs(tmp)
            build_table("structured", df).render("latex")
            export(df, "csv")
            res = cli("table", "multi-solution", "--runs-dir", tmp)
            assert res.exit_code == 0 and "Traceback" not in res.output, res.output
        count(reliability_counts, "garbage run records read by table/leaderboard")

    check()
