"""gram-bench: GRAM and its baselines on one bench."""

__version__ = "0.1.0"
