"""Reliability and security: SIGKILL fault injection with bit-identical resume,
non-finite losses and gradients, checkpoints from elsewhere (another config, another model,
a malicious pickle), and locking of run directories.

The fault-injection test kills real `python -m gram_bench run` processes from outside with
SIGKILL at random moments (startup, training, checkpoint writes, the final evaluation),
resumes each, and checks that the run ends bit for bit where an uninterrupted run ends.
`GRAM_BENCH_FAULT_POINTS=N` (default 4) sets how many kills, `GRAM_BENCH_FAULT_SEED` the
random schedule (printed on failure)."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gram_bench
import gram_bench.harness.runner as runner
import gram_bench.harness.training as training
from gram_bench.harness.build import build
from gram_bench.harness.checkpoint import check_checkpoint, load_checkpoint
from gram_bench.harness.config import load_config, parse_set, resolve
from gram_bench.core.errors import RunFailed, UsageError
from gram_bench.core.io import LockHeld, file_lock, read_jsonl, read_jsonl_gz
from gram_bench.core.runs import LOCK_NAME, is_locked
from gram_bench.harness.rundir import read_status, run_path
from gram_bench.leaderboards import load_runs
from gram_bench.leaderboards.export import export
from gram_bench.leaderboards.tables import build_table

from conftest import assert_same, quiet

REPO = Path(gram_bench.__file__).resolve().parents[1]
TIMING = ("examples_per_s", "elapsed_s")  # wall-clock fields: the only ones allowed to differ
SMOKE = ("--profile", "smoke", "--device", "cpu")


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cmd(runs: Path, data_root: Path, sets: tuple[str, ...]) -> list[str]:
    cmd = [sys.executable, "-m", "gram_bench", "run", "--task", "nqueens", "--model", "gram", *SMOKE,
           "--runs-dir", str(runs), "--data-dir", str(data_root)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def assert_final_equal(rdir: Path, ref: Path) -> None:
    ck = load_checkpoint(rdir / "checkpoint.pt")
    want = load_checkpoint(ref / "checkpoint.pt")
    for part in ("step", "model", "ema", "optimizer", "sampler", "carry", "rng", "log_acc", "fingerprint", "config"):
        assert_same(ck[part], want[part], part)
    assert untimed(read_jsonl(rdir / "train.jsonl")) == untimed(read_jsonl(ref / "train.jsonl"))
    assert read_jsonl_gz(rdir / "eval/test.examples.jsonl.gz") == read_jsonl_gz(ref / "eval/test.examples.jsonl.gz")
    got, exp = (json.loads((d / "eval/test.json").read_text()) for d in (rdir, ref))
    assert got["metrics"] == exp["metrics"] and got["n_examples"] == exp["n_examples"]
    assert read_status(rdir) == "finished"


# ----------------------------------------------------------------------------- SIGKILL fault injection


def _logged_step(log: Path) -> int:
    try:
        rows = read_jsonl(log) if log.exists() else []
    except (ValueError, OSError):
        return 0
    return max([r["step"] for r in rows if "loss" in r] or [0])


def _check_readers(runs: Path) -> None:
    """What `table` and `leaderboard export` do, on a runs directory being written."""
    df = load_runs(runs)
    build_table("multi-solution", df).render("markdown")
    export(df, "markdown")
    for rdir in runs.glob("*/*/*"):
        if not df.empty:  # listed = finished: its evaluation is complete
            assert (rdir / "eval/test.examples.jsonl.gz").exists()


def _check_after_kill(rdir: Path, runs: Path, steps: int) -> dict:
    """The directory a SIGKILL left: every file whole (the log may end in a torn line),
    never `finished` without its evaluation, unfinished runs reported as such."""
    state = {"status": read_status(rdir), "ckpt": None, "tmp": 0}
    if not rdir.exists():
        return state
    assert not is_locked(rdir)  # the lock died with the process
    df = load_runs(runs)
    if state["status"] == "finished":
        assert not df.empty
        summary = json.loads((rdir / "eval/test.json").read_text())
        assert len(read_jsonl_gz(rdir / "eval/test.examples.jsonl.gz")) == summary["n_examples"]
    else:
        assert df.empty and [d for d, _ in df.attrs["incomplete"]] == [str(rdir)]
    if (rdir / "config.yaml").exists():
        load_config(rdir / "config.yaml")
    if (rdir / "env.json").exists():
        json.loads((rdir / "env.json").read_text())
    if (rdir / "checkpoint.pt").exists():
        state["ckpt"] = int(load_checkpoint(rdir / "checkpoint.pt")["step"])
        assert 1 <= state["ckpt"] <= steps
    if (rdir / "train.jsonl").exists():
        read_jsonl(rdir / "train.jsonl")
    for p in (rdir / "eval").glob("*.json"):
        json.loads(p.read_text())
    for p in (rdir / "eval").glob("*.jsonl.gz"):
        read_jsonl_gz(p)
    state["tmp"] = len(list(rdir.rglob(".*.tmp")))
    return state


def test_sigkill_at_random_points_resumes_bit_identical(tmp_path, data_root, reliability_counts):
    n_points = int(os.environ.get("GRAM_BENCH_FAULT_POINTS", "4"))
    steps = max(24, 4 * n_points)  # room for the kills to spread over training
    sets = (f"train.steps={steps}", "train.checkpoint_every=1", "train.eval_every=8", "train.threads=1")
    cfg = resolve("nqueens", "gram", "smoke", parse_set(list(sets)))
    threads = torch.get_num_threads()
    try:  # the uninterrupted reference, in-process
        ref = runner.run(cfg, tmp_path / "ref", data_root, "cpu", console=quiet())
    finally:
        torch.set_num_threads(threads)

    seed = int(os.environ.get("GRAM_BENCH_FAULT_SEED", str(random.SystemRandom().randrange(2 ** 31))))
    rng = random.Random(seed)
    runs = tmp_path / "runs"
    rdir = run_path(runs, cfg)
    log = rdir / "train.jsonl"
    cmd, env = run_cmd(runs, data_root, sets), child_env()
    errf = open(tmp_path / "stderr.txt", "wb")
    kills, reads = [], 0
    for k in range(n_points):
        # the kills walk through the run: startup (import, data check, checkpoint load), training
        # (steps, log appends, checkpoint writes), and, among the last ones, the final evaluation
        kind = rng.choice(["startup", "train", "train", "train"] + ["eval"] * (k >= n_points * 3 // 4))
        done_step = _logged_step(log)
        stride = max(1, 2 * (steps - done_step) // (n_points - k))
        target = steps if kind == "eval" else min(steps, done_step + rng.randint(1, stride))
        delay = rng.uniform(0.3, 4.0) if kind == "startup" else rng.uniform(0.0, 0.25 if kind == "train" else 0.8)
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd + (["--resume"] if rdir.exists() else []), stdout=subprocess.DEVNULL,
                                stderr=errf, env=env, cwd=tmp_path)
        last_read, size = 0.0, -1
        try:
            while proc.poll() is None and time.monotonic() - t0 < 120:
                now = time.monotonic()
                if kind == "startup" and now - t0 >= delay:
                    break
                new_size = log.stat().st_size if log.exists() else -1
                if kind != "startup" and new_size != size:
                    size = new_size
                    if _logged_step(log) >= target:
                        time.sleep(delay)
                        break
                if now - last_read > 0.4:  # reading while the run writes never crashes
                    _check_readers(runs)
                    reads, last_read = reads + 1, time.monotonic()
                time.sleep(0.002)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
        state = _check_after_kill(rdir, runs, steps)
        kills.append({"kind": kind, "target": target, "killed": proc.returncode == -signal.SIGKILL, **state})
    # and once more without a kill: it must finish where the uninterrupted run did
    res = subprocess.run(cmd + ["--resume"] if rdir.exists() else cmd, stdout=subprocess.DEVNULL, stderr=errf,
                         env=env, cwd=tmp_path, timeout=300)
    errf.close()
    info = f"seed {seed}, kills {kills}, stderr: {(tmp_path / 'stderr.txt').read_text()[-2000:]}"
    assert res.returncode == 0, info
    assert_final_equal(rdir, ref)
    assert not list(rdir.rglob(".*.tmp")), info  # stale temp files were cleaned on resume
    rows = read_jsonl(log)
    assert [r["step"] for r in rows if "loss" in r] == list(range(2, steps + 1, 2)), info  # nothing lost or repeated
    c = reliability_counts
    c["SIGKILL fault points"] = c.get("SIGKILL fault points", 0) + sum(x["killed"] for x in kills)
    c["SIGKILL: (phase, checkpoint step) at the kills"] = [(x["kind"], x["ckpt"]) for x in kills]
    c["SIGKILL: stale temp files left by a kill (cleaned on resume)"] = sum(x["tmp"] for x in kills)
    c["reads of the runs dir while a run wrote"] = c.get("reads of the runs dir while a run wrote", 0) + reads


def test_a_second_process_on_a_run_being_written_is_refused(cli, tmp_path, data_root):
    """While one process writes a run, the same run started again (with or without --force or
    --resume) or evaluated is refused, exit 2, and nothing of the first is touched."""
    runs = tmp_path / "runs"
    args = ("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", runs, "--data-dir", data_root)
    proc = subprocess.Popen(run_cmd(runs, data_root, ("train.threads=1",)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=child_env(), cwd=tmp_path)
    rdir = run_path(runs, resolve("nqueens", "gram", "smoke"))
    refused = []
    try:
        t0 = time.monotonic()
        while proc.poll() is None and not is_locked(rdir) and time.monotonic() - t0 < 120:
            time.sleep(0.005)
        for extra in ((), ("--force",), ("--resume",)):
            res = cli(*args, *extra)
            if res.exit_code == 0:  # only when the first process finished in the meantime
                assert proc.poll() is not None or not is_locked(rdir), res.output
                continue
            assert res.exit_code == 2 and "in use by another gram-bench process (pid " in res.text, res.output
            refused.append(extra)
    finally:
        err = proc.communicate(timeout=300)[1].decode()
    assert proc.returncode == 0, err
    assert refused, "the first process was never seen holding the lock"
    assert read_status(rdir) == "finished"  # the first process's record, whole
    assert [r["step"] for r in read_jsonl(rdir / "train.jsonl") if "loss" in r] == [2, 4, 6]
    assert len(read_jsonl_gz(rdir / "eval/test.examples.jsonl.gz")) == 16
    assert load_checkpoint(rdir / "checkpoint.pt")["step"] == 6


# ----------------------------------------------------------------------------- SIGTERM, torn log, stale temp files


def test_sigterm_records_and_resume_repairs_a_torn_log(cli, gram_run, data_root, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    args = ("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", runs, "--data-dir", data_root)
    with monkeypatch.context() as mp:
        mp.setattr(training, "periodic_eval", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
        res = cli(*args)
    assert res.exit_code == 143, res.output
    assert "terminated by SIGTERM" in res.text and "Traceback" not in res.output
    rdir = run_path(runs, resolve("nqueens", "gram", "smoke"))
    assert read_status(rdir) == "failed: terminated by SIGTERM (resume with --resume)"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is only installed during a run
    # what a kill mid-write leaves: a torn last log line and a temp file
    with open(rdir / "train.jsonl", "a") as f:
        f.write('{"step":5,"lo')
    (rdir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"partial")
    assert len(read_jsonl(rdir / "train.jsonl")) == 2  # readers skip the torn line
    res = cli(*args, "--resume")
    assert res.exit_code == 0, res.output
    assert not (rdir / ".checkpoint.pt.x1y2.tmp").exists()
    assert_final_equal(rdir, gram_run)


# ----------------------------------------------------------------------------- non-finite loss and gradients


def poison(monkeypatch, calls: set[int], part: str = "kl", grad: bool = False) -> None:
    """Make the model's `calls`-th loss calls (counted from 1 in each run() call) return a NaN
    loss part, or (grad=True) a NaN gradient on its first parameter."""
    orig = build

    def poisoned(*args, **kwargs):
        task, model = orig(*args, **kwargs)
        real = model.loss
        st = {"n": 0, "on": False}
        if grad:
            next(model.parameters()).register_hook(lambda g: g * float("nan") if st["on"] else g)

        def loss(batch, carry):
            st["n"] += 1
            st["on"] = st["n"] in calls
            out, logs, new = real(batch, carry)
            if st["on"] and not grad:
                logs = {**logs, part: logs[part] * float("nan")}
                out = out + logs[part]
            return out, logs, new

        model.loss = loss
        return task, model

    monkeypatch.setattr(runner, "build", poisoned)  # what `run` calls


def test_nan_loss_part_stops_then_resume_with_skip(cli, data_root, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    args = ("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", runs, "--data-dir", data_root)
    rdir = run_path(runs, resolve("nqueens", "gram", "smoke"))
    with monkeypatch.context() as mp:
        poison(mp, {5})
        res = cli(*args)
    assert res.exit_code == 1, res.output
    assert len(res.output.strip().splitlines()) >= 1 and "Traceback" not in res.output
    msg = "non-finite loss part kl (loss=nan, kl=nan) at step 5; the update was not applied and the last good " \
          "checkpoint (step 3) is kept"
    assert msg in res.text
    assert read_status(rdir) == f"failed: {msg}. Lower train.lr, or resume with --set train.nonfinite=skip to drop " \
                                "such steps."
    ck = load_checkpoint(rdir / "checkpoint.pt")
    assert ck["step"] == 3 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (rdir / "eval").exists()
    assert load_runs(runs).empty
    # the policy is not part of the run's identity: the same run continues, dropping the bad step
    with monkeypatch.context() as mp:
        poison(mp, {2})  # the 2nd step after resuming from 3 = step 5 again
        res = cli(*args, "--resume", "--set", "train.nonfinite=skip")
    assert res.exit_code == 0, res.output
    assert "skipped step 5" in res.text
    rows = [r for r in read_jsonl(rdir / "train.jsonl") if "loss" in r]
    assert [(r["step"], r.get("nonfinite_skipped", 0)) for r in rows] == [(2, 0), (4, 0), (6, 1)]
    assert all(isinstance(r["loss"], float) and r["loss"] == r["loss"] for r in rows)
    ck = load_checkpoint(rdir / "checkpoint.pt")
    assert ck["step"] == 6 and ck["nonfinite_skipped"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert read_status(rdir) == "finished"


def test_nan_gradient_names_the_parameter(data_root, tmp_path, monkeypatch):
    poison(monkeypatch, {2}, grad=True)
    cfg = resolve("nqueens", "gram", "smoke")
    with pytest.raises(RunFailed) as e:
        runner.run(cfg, tmp_path / "runs", data_root, "cpu", console=quiet())
    msg = str(e.value)
    assert msg.startswith("non-finite gradient of ") and "(grad_norm=nan) at step 2" in msg, msg
    first = next(n for n, _ in build(cfg, data_root, torch.device("cpu"))[1].named_parameters())
    assert f"gradient of {first} " in msg
    assert "no checkpoint had been written yet" in msg
    assert not (run_path(tmp_path / "runs", cfg) / "checkpoint.pt").exists()


def test_skip_policy_gives_up_on_a_diverged_run(data_root, tmp_path, monkeypatch):
    poison(monkeypatch, set(range(1, 100)))
    monkeypatch.setattr(training, "MAX_CONSECUTIVE_SKIPS", 2)
    cfg = resolve("nqueens", "gram", "smoke", {"train.nonfinite": "skip"})
    with pytest.raises(RunFailed, match="the 3th such step in a row"):
        runner.run(cfg, tmp_path / "runs", data_root, "cpu", console=quiet())


# ----------------------------------------------------------------------------- checkpoints from elsewhere


class Payload:
    """A pickle that, if unpickled by a trusting loader, creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_files(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """{kind: (checkpoint file, marker it would create)} for a torch.save zip and a raw pickle."""
    out = {}
    for kind in ("torch-zip", "raw-pickle", "nested"):
        marker = tmp_path / f"pwned-{kind}"
        path = tmp_path / f"{kind}.pt"
        obj = Payload(marker)
        if kind == "raw-pickle":
            path.write_bytes(pickle.dumps(obj, protocol=2))  # the protocol torch.load reads
        else:
            torch.save({"model": {"w": torch.zeros(1)}, "step": obj} if kind == "nested" else obj, path)
        assert not marker.exists()
        out[kind] = (path, marker)
    # the payload is live: a plain pickle.load would run it (which is what weights_only=True prevents)
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe))).close()
    assert probe.exists()
    return out


def test_malicious_pickle_checkpoint_is_refused(cli, gram_run, copy_run, data_root, tmp_path):
    for kind, (path, marker) in malicious_files(tmp_path).items():
        with pytest.raises(UsageError, match="Cannot load checkpoint .* refused by the weights-only loader: "
                                             "Unsupported global"):
            load_checkpoint(path)
        assert not marker.exists(), kind
    # through the CLI: `eval` and `run --resume` refuse it, exit 2, and nothing runs
    rdir = copy_run(gram_run)
    (tmp_path / "again").mkdir()
    path, marker = malicious_files(tmp_path / "again")["torch-zip"]
    shutil.copy(path, rdir / "checkpoint.pt")
    before = sorted(p.name for p in (rdir / "eval").iterdir())
    res = cli("eval", rdir, "--device", "cpu", "--data-dir", data_root)
    assert res.exit_code == 2 and res.text.startswith("error: Cannot load checkpoint"), res.output
    assert len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in (rdir / "eval").iterdir()) == before
    (rdir / "status").write_text("failed: interrupted\n")
    res = cli("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", rdir.parents[2],
              "--data-dir", data_root, "--resume")
    assert res.exit_code == 2 and "Cannot load checkpoint" in res.text, res.output
    assert not marker.exists()
    assert read_status(rdir).startswith("failed: Cannot load checkpoint")


def test_checkpoint_from_another_model_or_config_is_refused(cli, gram_run, trm_run, copy_run, data_root):
    rdir = copy_run(gram_run)
    shutil.copy(trm_run / "checkpoint.pt", rdir / "checkpoint.pt")
    res = cli("eval", rdir, "--device", "cpu", "--data-dir", data_root)
    assert res.exit_code == 2, res.output
    assert "was written by another config (checkpoint -> this run: model.name: 'trm' -> 'gram'" in res.text
    (rdir / "status").write_text("failed: interrupted\n")
    res = cli("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", rdir.parents[2],
              "--data-dir", data_root, "--resume")
    assert res.exit_code == 2 and "model.name: 'trm' -> 'gram'" in res.text, res.output

    # the same config but weights of another shape: the mismatched tensors are named
    ck = torch.load(gram_run / "checkpoint.pt", weights_only=True)
    ck["model"]["lm_head.weight"] = ck["model"]["lm_head.weight"][:, :8].clone()
    ck["model"]["extra.bias"] = torch.zeros(2)
    torch.save(ck, rdir / "checkpoint.pt")
    res = cli("eval", rdir, "--device", "cpu", "--data-dir", data_root)
    assert res.exit_code == 2, res.output
    assert "does not fit this model (unexpected: extra.bias; shape (checkpoint vs model): lm_head.weight" in res.text

    # an inference-only override is not a difference
    shutil.copy(gram_run / "checkpoint.pt", rdir / "checkpoint.pt")
    cfg = load_config(rdir / "config.yaml")
    check_checkpoint(torch.load(rdir / "checkpoint.pt", weights_only=True), cfg, rdir, strict=False,
                     ignore=("model.decode",))


def test_eval_of_a_run_being_written_is_refused(cli, gram_run, copy_run, data_root):
    rdir = copy_run(gram_run)
    fd = os.open(rdir / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another process writing into the run would
        os.write(fd, b"pid 4242 on elsewhere")
        assert is_locked(rdir)
        res = cli("eval", rdir, "--device", "cpu", "--data-dir", data_root)
        assert res.exit_code == 2, res.output
        assert "is in use by another gram-bench process (pid 4242 on elsewhere)" in res.text
        res = cli("run", "--task", "nqueens", "--model", "gram", *SMOKE, "--runs-dir", rdir.parents[2],
                  "--data-dir", data_root, "--force")
        assert res.exit_code == 2 and "in use by another gram-bench process" in res.text, res.output
        assert (rdir / "checkpoint.pt").exists()  # --force deleted nothing
        with pytest.raises(LockHeld):
            with file_lock(rdir / LOCK_NAME, wait=0.05):
                pass
    finally:
        os.close(fd)
    assert not is_locked(rdir)


def test_run_paths_cannot_leave_the_runs_directory():
    from gram_bench.core.runs import safe_name

    for bad in ("..", ".", "../x", "a/b", "/etc", "", ".hidden", "a\x00b", "a\nb", "x" * 201):
        with pytest.raises(UsageError, match="cannot be a file name"):
            safe_name(bad)
    for ok in ("smoke-seed0-1234abcd", "test-n5-s8+decode=sample", "nqueens"):
        assert safe_name(ok) == ok


def test_no_shell_and_no_unsafe_loads_in_the_code():
    """Grep-level guarantees: torch.load only with weights_only=True, np.load never with
    pickles, yaml only safe loaders, no shell."""
    src = {p: p.read_text() for p in (REPO / "gram_bench").rglob("*.py")}
    for p, text in src.items():
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, (p, line)
            if "np.load(" in line:
                assert "allow_pickle=False" in line, (p, line)
            assert "shell=True" not in line and "os.system(" not in line and "os.popen(" not in line, (p, line)
            assert "yaml.load(" not in line or "Loader=_Loader" in line, (p, line)
            assert "pickle.load" not in line and "eval(" not in line.replace("_eval(", "").replace(".eval(", ""), \
                (p, line)
