"""Errors a user can cause: one clear line that says what to do, exit code 2."""

from __future__ import annotations

__all__ = ["ShoestringError", "NotBuiltError"]


class ShoestringError(Exception):
    """A problem the user can fix (bad recipe, missing file, unknown model, ...).

    The CLI prints ``error: <message>`` on one line and exits with code 2, never a
    traceback. The message must say what went wrong *and* what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Collapse to one line: the promise is a single readable line on stderr.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


class NotBuiltError(ShoestringError):
    """A verb or option that is declared but not implemented yet (it must not pretend)."""
