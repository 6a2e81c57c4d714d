"""Frozen configs, profiles and validated `--set` overrides.

A run's config is resolved in this order: dataclass defaults, then the profile's YAML
(`train`, `model_train.<model>` (train settings of one model, e.g. its learning rate), `eval`,
`tasks.<task>`, `models.<model>`, then `per_task.<task>` which may hold the same sections
again), then task hints for model fields left as `null` (e.g. GRAM's
`beta` takes the paper's per-task value), then `--set key=value` overrides.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gram_bench.core.errors import UsageError
from gram_bench.core.identity import fingerprint
from gram_bench.core.registry import closest

PROFILES = ("smoke", "cpu", "paper")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and logging. `steps` counts optimizer updates (one per supervision step)."""

    steps: int = 2000
    batch_size: int = 64  # global batch (split across ranks under torchrun)
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 100
    # lr after warm-up: constant (TRM) | cosine (decays to 0 at `steps`, for runs whose length
    # is fixed in advance; with train.max_minutes the decay still spans `steps`)
    schedule: str = "constant"
    grad_clip: float = 1.0
    ema: float = 0.999  # 0 disables EMA
    precision: str = "auto"  # auto | fp32 | bf16
    log_every: int = 10
    eval_every: int = 500  # periodic eval on a test subset; 0 disables
    eval_examples: int = 128
    eval_samples: int = 4
    checkpoint_every: int = 500
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    max_minutes: float = 0.0  # stop training early after this wall time; 0 = no limit
    nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop (fail the run) | skip (drop the step)
    # torch.compile the model's core (`Model.compile_targets`, static shapes): true | false | auto
    # (compile when a C++ compiler is present and a timed probe shows the compiled step faster)
    compile: bool | str = "auto"


@dataclass(frozen=True)
class EvalConfig:
    samples: int = 20  # N trajectories per test input (width)
    steps: int = 0  # supervision steps at inference (depth); 0 = the model's trained n_sup
    batch_size: int = 2048  # rows (inputs x samples) per forward
    limit: int = 0  # evaluate the first `limit` test inputs (seeded order); 0 = all
    split: str = "test"


@dataclass(frozen=True)
class RunConfig:
    task_name: str
    model_name: str
    task: Any
    model: Any
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    profile: str = "cpu"
    # the `--set` overrides this config was resolved with (recorded, not hashed): tables use
    # them to tell a profile's own runs from variants
    overrides: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "task": {"name": self.task_name, **dataclasses.asdict(self.task)},
            "model": {"name": self.model_name, **dataclasses.asdict(self.model)},
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
            "seed": self.seed,
            "profile": self.profile,
            "overrides": dict(self.overrides),
        }

    def fingerprint(self) -> str:
        """Hash of everything that changes training (not eval or logging settings). Only
        fields that differ from their dataclass defaults enter the hash, so adding a new
        knob (with a default) never renames existing runs."""
        return fingerprint(self.task_name, self.task, self.model_name, self.model, self.train, self.seed, self.profile)


MAX_SEED = 2 ** 32 - 1
_INT64 = 2 ** 63


# ----------------------------------------------------------------------------- typing helpers


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[0] if errors else f"Bad value for '{key}'.")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if -_INT64 <= value < _INT64:
                return value
            raise UsageError(f"'{key}' is out of range (a 64-bit integer), got {value}.")
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                out = float(value)
            except OverflowError:
                out = math.inf
            if math.isfinite(out):
                return out
            raise UsageError(f"'{key}' must be a finite number, got {value!r}.")
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise UsageError(
        f"'{key}' must be of type {_type_name(tp)}, got {value!r}; fix the value in --set or the profile."
    )


def build_dataclass(cls: type, values: dict, prefix: str) -> Any:
    """Instantiate `cls` from `values`, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            hint = closest(k, names)
            did = f" Did you mean '{prefix}{hint}'?" if hint else ""
            raise UsageError(f"Unknown config key '{prefix}{k}'.{did} Valid keys: "
                             f"{', '.join(prefix + n for n in names)}.")
        kwargs[k] = coerce(v, hints[k], prefix + k)
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    return obj


def parse_set(items: list[str]) -> dict[str, Any]:
    """`["model.hidden=256", "train.lr=3e-4"]` -> {"model.hidden": 256, "train.lr": 0.0003}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got '{item}'; write e.g. --set train.lr=3e-4.")
        k, v = item.split("=", 1)
        k = k.strip()
        try:
            val = yaml.safe_load(v) if v.strip() != "" else ""
        except yaml.YAMLError:
            val = v
        # YAML reads 3e-4 as a string; accept float-looking strings.
        if isinstance(val, str):
            try:
                val = float(val) if any(c in val for c in ".eE") else int(val)
            except ValueError:
                pass
        out[k] = val
    return out


# ----------------------------------------------------------------------------- profiles


def load_profile(name: str) -> dict:
    if name not in PROFILES:
        hint = closest(name, list(PROFILES))
        did = f" Did you mean '{hint}'?" if hint else ""
        raise UsageError(f"Unknown profile '{name}'.{did} Valid profiles: {', '.join(PROFILES)}.")
    text = resources.files("gram_bench.harness").joinpath("profiles", f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in (b or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(task_name: str, model_name: str, profile: str = "cpu", sets: dict | None = None,
            seed: int | None = None) -> RunConfig:
    """Resolve a RunConfig from registries, a profile and overrides (see module docstring)."""
    from gram_bench.models import MODELS
    from gram_bench.tasks import TASKS

    task_cls = TASKS.get(task_name)
    model_cls = MODELS.get(model_name)
    prof = load_profile(profile)
    prof = _merge(prof, (prof.get("per_task") or {}).get(task_name, {}))
    sets = dict(sets or {})

    groups: dict[str, dict] = {
        "task": dict((prof.get("tasks") or {}).get(task_name, {})),
        "model": dict((prof.get("models") or {}).get(model_name, {})),
        "train": {**(prof.get("train") or {}), **((prof.get("model_train") or {}).get(model_name) or {})},
        "eval": dict(prof.get("eval") or {}),
    }
    top = {"seed": prof.get("seed", 0)}
    for key, val in sets.items():
        head, _, rest = key.partition(".")
        if head in groups and rest:
            groups[head][rest] = val
        elif key == "seed":
            top["seed"] = val
        else:
            valid = ["task.", "model.", "train.", "eval.", "seed"]
            hint = closest(head, ["task", "model", "train", "eval", "seed"])
            did = f" Did you mean '{hint}.{rest}'?" if hint and rest else (f" Did you mean '{hint}'?" if hint else "")
            raise UsageError(f"Unknown config key '{key}'.{did} Keys start with one of: {', '.join(valid)}.")

    task_cfg = build_dataclass(task_cls.Config, groups["task"], "task.")
    hints = task_cls.model_hints(task_cfg)
    model_fields = {f.name for f in dataclasses.fields(model_cls.Config)}
    for k, v in hints.items():
        if k in model_fields and groups["model"].get(k) is None:
            groups["model"][k] = v
    model_cfg = build_dataclass(model_cls.Config, groups["model"], "model.")
    train_cfg = build_dataclass(TrainConfig, groups["train"], "train.")
    eval_cfg = build_dataclass(EvalConfig, groups["eval"], "eval.")
    if seed is not None:
        top["seed"] = seed
    seed_v = coerce(top["seed"], int, "seed")
    overrides = {k: v for k, v in sets.items() if k != "seed"}
    cfg = RunConfig(task_name, model_name, task_cfg, model_cfg, train_cfg, eval_cfg, seed_v, profile, overrides)
    validate(cfg)
    if overrides:
        # record only the overrides that change the config: one that repeats the profile's
        # value leaves the run the profile's own (same run id), and tables must see it so
        try:
            base = resolve(task_name, model_name, profile)
        except UsageError:  # the profile alone does not resolve here: keep every override
            return cfg

        def value(c: RunConfig, key: str):
            group, _, name = key.partition(".")
            return getattr(getattr(c, group), name)

        cfg = dataclasses.replace(cfg, overrides={k: v for k, v in overrides.items()
                                                  if value(cfg, k) != value(base, k)})
    return cfg


def validate(cfg: RunConfig) -> None:
    t, e = cfg.train, cfg.eval
    checks = [
        (t.steps >= 1, "train.steps must be at least 1"),
        (t.batch_size >= 1, "train.batch_size must be at least 1"),
        (t.lr > 0, "train.lr must be positive"),
        (0 <= t.ema < 1, "train.ema must be in [0, 1)"),
        (t.precision in ("auto", "fp32", "bf16"), "train.precision must be one of auto, fp32, bf16"),
        (t.log_every >= 1, "train.log_every must be at least 1"),
        (t.eval_every >= 0, "train.eval_every must be 0 (off) or positive"),
        (t.eval_samples >= 1, "train.eval_samples must be at least 1"),
        (t.checkpoint_every >= 1, "train.checkpoint_every must be at least 1"),
        (t.max_minutes >= 0, "train.max_minutes must be 0 (no limit) or positive"),
        (t.weight_decay >= 0, "train.weight_decay must be non-negative"),
        (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1)"),
        (t.warmup_steps >= 0, "train.warmup_steps must be non-negative"),
        (t.schedule in ("constant", "cosine"), "train.schedule must be constant or cosine"),
        (t.compile in (True, False, "auto"), "train.compile must be true, false or auto"),
        (t.grad_clip > 0, "train.grad_clip must be positive"),
        (t.eval_examples >= 0, "train.eval_examples must be 0 (all) or positive"),
        (t.threads >= 0, "train.threads must be 0 (torch's default) or positive"),
        (t.nonfinite in ("stop", "skip"), "train.nonfinite must be stop or skip"),
        (e.samples >= 1, "eval.samples must be at least 1"),
        (e.steps >= 0, "eval.steps must be 0 (trained depth) or positive"),
        (e.batch_size >= 1, "eval.batch_size must be at least 1"),
        (e.limit >= 0, "eval.limit must be 0 (all) or positive"),
        (e.split in ("test", "train"), "eval.split must be test or train"),
        (cfg.seed >= 0, "seed must be non-negative"),
        (cfg.seed <= MAX_SEED, f"seed must be at most {MAX_SEED}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg + ".")
    for obj, prefix in ((cfg.task, "task."), (cfg.model, "model.")):
        try:
            obj.check()
        except ValueError as err:
            raise UsageError(f"{err}".rstrip(".") + f" (a {prefix[:-1]} setting).") from None
        except (ArithmeticError, TypeError) as err:  # a check that trips over a value it did not expect
            zeros = [prefix + f.name for f in dataclasses.fields(obj) if getattr(obj, f.name) == 0
                     and not isinstance(getattr(obj, f.name), bool)]
            hint = f"; these are 0: {', '.join(zeros)}" if zeros else ""
            raise UsageError(f"The {prefix[:-1]} settings are invalid ({type(err).__name__}: {err}){hint}.") \
                from None


def config_from_dict(d: dict) -> RunConfig:
    """Rebuild a RunConfig from a saved config.yaml; a malformed one raises UsageError."""
    from gram_bench.models import MODELS
    from gram_bench.tasks import TASKS

    try:
        d = json.loads(json.dumps(d))
    except (TypeError, ValueError):
        raise UsageError("the config holds values that are not plain data.") from None
    if not isinstance(d, dict):
        raise UsageError(f"a run config is a mapping, got {type(d).__name__}.")
    for group in ("task", "model", "train", "eval"):
        if not isinstance(d.get(group), dict):
            raise UsageError(f"the config has no '{group}' section.")
    tname = d["task"].pop("name", None)
    mname = d["model"].pop("name", None)
    if not isinstance(tname, str) or not isinstance(mname, str):
        raise UsageError("the config does not name its task and model (task.name, model.name).")
    if d.get("profile") not in PROFILES:
        raise UsageError(f"the config's profile must be one of {', '.join(PROFILES)}, got {d.get('profile')!r}.")
    overrides = d.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise UsageError("the config's overrides must be a mapping.")
    cfg = RunConfig(tname, mname,
                    build_dataclass(TASKS.get(tname).Config, d["task"], "task."),
                    build_dataclass(MODELS.get(mname).Config, d["model"], "model."),
                    build_dataclass(TrainConfig, d["train"], "train."),
                    build_dataclass(EvalConfig, d["eval"], "eval."),
                    coerce(d.get("seed"), int, "seed"), d["profile"], dict(overrides))
    validate(cfg)
    return cfg


def save_config(cfg: RunConfig, path: Path) -> None:
    from gram_bench.core.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: Path) -> RunConfig:
    """A run's config.yaml (parsed with yaml.safe_load: no Python objects); anything wrong with
    it is a UsageError naming the file (and the line, for a YAML syntax error)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"{path} cannot be read ({e.strerror or e}).") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; it is not a gram-bench config.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or type(e).__name__
        raise UsageError(f"{where}: not valid YAML ({problem}).") from None
    try:
        return config_from_dict(data)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """`key: A -> B` for every leaf where two nested config dicts differ (names first, then by key)."""
    out = []
    for k in sorted(set(a) | set(b), key=lambda k: (k != "name", str(k))):
        va, vb = a.get(k, "<unset>"), b.get(k, "<unset>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out
