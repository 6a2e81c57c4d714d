"""Run records -> pandas. Reads run directories only (never models)."""

from gram_bench.leaderboards.load import load_runs  # noqa: F401
