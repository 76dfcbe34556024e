"""The one error type every CLI command funnels through, and the fixed exit codes."""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USAGE = 1
    VERIFICATION_FAILED = 2
    RUNTIME = 3
    POLICY_VIOLATED = 4
    MALFORMED = 5
    INTERRUPTED = 130


class ConclaveError(Exception):
    """An error with a stable machine-readable reason (lowercase string) and an exit code.

    The message is for people; tests and scripts use `reason`. Never put secrets in either.
    """

    exit_code: ExitCode = ExitCode.RUNTIME

    def __init__(self, reason: str, message: str, *, exit_code: ExitCode | None = None):
        super().__init__(message)
        self.reason = str(reason)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"[{self.reason}] {self.message}"

    def to_json(self) -> dict:
        return {"ok": False, "reason": self.reason, "error": self.message}


class UsageError(ConclaveError):
    exit_code = ExitCode.USAGE

    def __init__(self, message: str, reason: str = "usage"):
        super().__init__(reason, message)
