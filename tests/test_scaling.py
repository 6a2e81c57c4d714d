"""`gram-bench scale`: one evaluation per depth at the largest width, every (N, depth) cell
with CIs in eval/scaling.json, and the accuracy-vs-depth plots."""

from __future__ import annotations

import json

from gram_bench.metrics.records import truncate
from gram_bench.metrics.summary import summarize
from gram_bench.harness.scaling import grid_cells

from conftest import SMOKE


def test_scale_writes_every_cell_and_plots(cli, gram_run, copy_run, data_root):
    rdir = copy_run(gram_run)
    own = json.loads((rdir / "eval" / "test.json").read_text())
    res = cli("scale", rdir, "--samples", "1,2,3", "--steps", f"1,{own['steps']}", "--data-dir", data_root,
              "--device", "cpu")
    assert res.exit_code == 0, res.output
    grid = json.loads((rdir / "eval" / "scaling.json").read_text())
    assert grid["widths"] == [1, 2, 3] and grid["n_max"] == 3
    cells = {(c["samples"], c["steps"]): c for c in grid["cells"]}
    assert set(cells) == {(n, d) for n in (1, 2, 3) for d in (1, own["steps"])}
    for c in grid["cells"]:
        for rule in ("vote", "lprm", "first"):
            m = c["metrics"][f"accuracy_{rule}"]
            assert m["ci_low"] <= m["value"] <= m["ci_high"]
    # the run's own eval serves its depth (not sampled again); the other depth got its own file
    assert cells[(3, own["steps"])]["eval"] == "test"
    assert cells[(3, own["steps"])]["metrics"]["accuracy_vote"] == own["metrics"]["accuracy_vote"]
    assert (rdir / "eval" / "test-n3-s1.json").is_file()
    assert not (rdir / "eval" / f"test-n3-s{own['steps']}.json").exists()
    for rule in ("vote", "lprm"):
        assert (rdir / "plots" / f"scaling-{rule}.png").stat().st_size > 1000


def test_smaller_widths_are_the_first_samples(gram_run, copy_run):
    rdir = copy_run(gram_run)
    path = rdir / "eval" / "test.json"
    cells = grid_cells([path], [1, 2])
    import gzip

    with gzip.open(rdir / "eval" / "test.examples.jsonl.gz", "rt") as f:
        recs = [json.loads(line) for line in f]
    want = summarize([truncate(r, 1) for r in recs], slices=False)["accuracy_first"]
    assert cells[0]["samples"] == 1 and cells[0]["metrics"]["accuracy_first"] == want


def test_scale_rejects_bad_lists_and_too_wide_widths(cli, gram_run, copy_run, data_root):
    rdir = copy_run(gram_run)
    res = cli("scale", rdir, "--samples", "1,x", "--steps", "2", "--data-dir", data_root)
    assert res.exit_code == 2 and "--samples expects comma-separated integers" in res.text
    res = cli("scale", rdir, "--steps", "0", "--data-dir", data_root)
    assert res.exit_code == 2 and "--steps must be at least 1" in res.text
    res = cli("scale", rdir.parent, "--steps", "2", "--data-dir", data_root, *SMOKE[2:])
    assert res.exit_code == 2 and "not a run directory" in res.text
