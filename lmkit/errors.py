"""User-facing errors: a mistake the user can fix becomes one clear line and exit code 1.

Bugs are not wrapped: they keep their tracebacks.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad input, bad flag, missing file).

    The message is shown as is, on one line per problem, prefixed with ``error:``.
    It should name the file, line or flag to change.
    """

    exit_code = 1


class ConfigError(UserError):
    """One or more invalid configuration values, reported together."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ArtifactError(UserError):
    """An artifact is missing, of the wrong kind or version, or fails verification."""


class Interrupted(Exception):
    """The run was stopped by a signal; ``exit_code`` is 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
