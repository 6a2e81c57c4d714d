"""Tasks: data build/load, token layout, verifiers. Registered by name in TASKS."""

from gram_bench.core.registry import Registry

TASKS: Registry = Registry("task")

from gram_bench.tasks import arc, graph_coloring, mnist, nqueens, sudoku  # noqa: E402,F401  (registers)
from gram_bench.tasks.base import EvalSet, Layout, Task, TaskConfig, TrainSet  # noqa: E402,F401
