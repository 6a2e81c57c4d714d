"""CLI, configuration, registries, runner, run records."""
