"""The harness's one error type: a stable reason plus a message (mapped to ConclaveError by `conclave bench`)."""
from __future__ import annotations


class HarnessError(Exception):
    """A benchmark that cannot run as asked (bad arguments, unreachable endpoint, all requests failed)."""

    def __init__(self, reason: str, message: str, *, usage: bool = False):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.usage = usage  # True: the caller asked for something impossible (exit code 1)

    def __str__(self) -> str:
        return f"[{self.reason}] {self.message}"
