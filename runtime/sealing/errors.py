"""Reasons a sealed model is refused (stable strings for tests, logs and --json)."""
from __future__ import annotations

from conclave.runtime.errors import ConclaveError
from conclave.runtime.reasons import exit_code_for
from conclave.runtime.reasons import SealReason  # noqa: F401 (re-export; the one registry)


class SealError(ConclaveError):
    def __init__(self, reason: str, message: str):
        super().__init__(reason, message, exit_code=exit_code_for(reason))
