"""Per-example records -> metrics with 95% confidence intervals."""

from gram_bench.metrics.records import SELECTIONS, example_records  # noqa: F401
from gram_bench.metrics.stats import bootstrap_ci, seed_interval  # noqa: F401
from gram_bench.metrics.summary import summarize  # noqa: F401
