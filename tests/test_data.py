"""Manifest integrity: a dataset directory that does not match its manifest is refused."""

from __future__ import annotations

import json

import pytest

from gram_bench.core.errors import UsageError
from gram_bench.tasks.nqueens import NQueens


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fname", ["test_inputs.npy", "solutions.npy", "train_completions.npy"])
def test_edited_npy_is_refused_with_file_and_build_command(data_copy, fname):
    t = NQueens(NQueens.Config(n=8), data_copy)
    t.verify_files()
    flip_last_byte(t.data_dir / fname)
    with pytest.raises(UsageError) as e:
        t.verify_files()
    msg = str(e.value)
    assert fname in msg and str(t.data_dir) in msg
    assert "sha256" in msg
    assert "gram-bench data build --task nqueens" in msg
    with pytest.raises(UsageError):
        NQueens(NQueens.Config(n=8), data_copy).arrays()  # loading goes through the same check


def test_missing_npy_is_refused(data_copy):
    t = NQueens(NQueens.Config(n=8), data_copy)
    (t.data_dir / "test_offsets.npy").unlink()
    with pytest.raises(UsageError, match="test_offsets.npy is missing.*gram-bench data build"):
        t.verify_files()


def test_missing_directory_names_the_build_command(tmp_path):
    t = NQueens(NQueens.Config(n=10), tmp_path)
    with pytest.raises(UsageError) as e:
        t.verify_files()
    msg = str(e.value)
    assert str(tmp_path / "nqueens-10") in msg
    assert "gram-bench data build --task nqueens --set task.n=10" in msg
    assert t.build_command() in msg


def test_manifest_for_another_config_is_refused(data_copy):
    t = NQueens(NQueens.Config(n=8), data_copy)
    mpath = t.data_dir / "manifest.json"
    m = json.loads(mpath.read_text())
    m["config"]["split_seed"] = 7
    mpath.write_text(json.dumps(m))
    with pytest.raises(UsageError, match="another config"):
        t.verify_files()
    mpath.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        t.verify_files()


def test_cli_data_verify_and_build(cli, data_copy, tmp_path):
    ok = cli("data", "verify", "--task", "nqueens", "--data-dir", data_copy)
    assert ok.exit_code == 0, ok.output
    n_files = len(json.loads((data_copy / "nqueens-8" / "manifest.json").read_text())["files"])
    assert f"{n_files} files match" in ok.text

    again = cli("data", "build", "--task", "nqueens", "--data-dir", data_copy)
    assert again.exit_code == 0 and "exists and verifies" in again.text

    flip_last_byte(data_copy / "nqueens-8" / "test_inputs.npy")
    bad = cli("data", "verify", "--task", "nqueens", "--data-dir", data_copy)
    assert bad.exit_code == 2
    assert "test_inputs.npy" in bad.text and "gram-bench data build" in bad.text
    assert "Traceback" not in bad.output

    rebuilt = cli("data", "build", "--task", "nqueens", "--data-dir", data_copy, "--force")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert cli("data", "verify", "--task", "nqueens", "--data-dir", data_copy).exit_code == 0

    missing = cli("data", "verify", "--task", "nqueens", "--set", "task.n=9", "--data-dir", tmp_path / "none")
    assert missing.exit_code == 2 and "gram-bench data build --task nqueens --set task.n=9" in missing.text

    wrong = cli("data", "build", "--task", "nqueens", "--set", "model.hidden=8", "--data-dir", tmp_path)
    assert wrong.exit_code == 2 and "task.*" in wrong.text
