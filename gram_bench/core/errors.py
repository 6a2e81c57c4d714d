"""Errors the CLI turns into exit codes: UsageError -> 2, RunFailed -> 1."""


class GramBenchError(Exception):
    """Base class: a one-sentence message meant for the user."""

    exit_code = 1


class UsageError(GramBenchError):
    """Bad usage or bad input (unknown name, bad value, corrupt data). Exit code 2."""

    exit_code = 2


class RunFailed(GramBenchError):
    """A run failed while it was running (NaN loss, crash). Exit code 1."""

    exit_code = 1
