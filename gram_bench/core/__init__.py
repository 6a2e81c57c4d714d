"""What every room imports: registries, errors, atomic I/O, run identity, ablation variants.

Imports nothing from the rooms (harness, tasks, models, metrics, leaderboards), so any of
them may import it without an import cycle."""
