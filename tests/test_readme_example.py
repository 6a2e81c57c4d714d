"""The README's "Adding a task or a model": its toy task runs against the real base classes,
and its hook tables name every hook the base classes define."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gram_bench.core.errors import UsageError
from gram_bench.core.runs import run_id
from gram_bench.harness.config import resolve
from gram_bench.models import Model, ModelConfig
from gram_bench.tasks import TASKS, Task, TaskConfig

SECTION = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text().split(
    "## Adding a task or a model", 1)[1].split("\n## ", 1)[0]

# methods of the base classes that are machinery, not hooks a subclass defines
TASK_MACHINERY = {"build", "read_manifest", "verify_files", "arrays", "data_dir", "build_command", "hashed_name"}


@pytest.fixture
def copy_task(monkeypatch, tmp_path):
    monkeypatch.setattr(TASKS, "_items", dict(TASKS._items))  # the example's registration ends with the test
    code = re.search(r"```python\n(.*?)```", SECTION, re.S).group(1)
    exec(compile(code, "README.md", "exec", dont_inherit=True), {"__name__": "readme_example"})
    cls = TASKS.get("copy")
    return cls(cls.Config(), tmp_path)


def test_the_toy_task_builds_and_verifies(copy_task):
    copy_task.build()
    assert copy_task.dir_name() == "copy-8" and copy_task.layout.out_len == 8
    es = copy_task.eval_set()
    preds = torch.stack([es.targets, 1 - es.targets], dim=1)  # [B, 2, L]: the copy, then every bit flipped
    valid = copy_task.verify(es.inputs, preds, es.ids)["valid"]
    assert valid[:, 0].all() and not valid[:, 1].any()
    batch = copy_task.train_set().batch(torch.arange(4))
    assert torch.equal(batch["inputs"], batch["targets"])
    assert copy_task.extra_metrics([]) == {} and copy_task.write_artifacts(Path("."), "test", []) == []
    assert copy_task.canonical(np.zeros((1, 8), dtype=np.int64)) == [bytes(8)]


def test_the_toy_task_resolves_and_its_config_is_checked(copy_task):
    cfg = resolve("copy", "gram", "smoke", {"task.length": 5})
    assert cfg.task.length == 5 and run_id(cfg).startswith("smoke-seed0-")
    with pytest.raises(UsageError, match="length must be at least 1"):
        resolve("copy", "gram", "smoke", {"task.length": 0})


def _hooks(cls: type, base: type) -> set[str]:
    return {k for k in vars(cls) if not k.startswith("_") and k not in vars(base)}


def test_the_section_names_every_hook():
    hooks = (_hooks(Task, object) - TASK_MACHINERY) | _hooks(Model, torch.nn.Module) | \
        _hooks(TaskConfig, object) | _hooks(ModelConfig, object)
    missing = sorted(h for h in hooks if f"`{h}" not in SECTION and f".{h}" not in SECTION)
    assert not missing, f"README's 'Adding a task or a model' does not name: {missing}"
