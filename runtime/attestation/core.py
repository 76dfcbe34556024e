"""Types shared by every evidence format: reasons, errors, steps, VerifiedEvidence, Violation.

The pipeline is parse -> verify -> validate (DESIGN.md convention 1):
- parse(bytes) -> a format-specific parsed object; raises MalformedEvidence (reason `malformed`).
- verify(parsed, at=..., ...) -> VerifiedEvidence; stops at the first failed cryptographic
  step and raises VerificationFailed(reason, ...). Only verification constructs
  VerifiedEvidence (it requires the module-private _ISSUER token).
- validate(VerifiedEvidence, policy) -> collects every Violation; raises PolicyViolated.
Reasons are stable lowercase strings: tests, logs, metrics and --json use them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Mapping

from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.reasons import Reason  # noqa: F401 (re-export; the one registry)


class TeeType(StrEnum):
    TDX = "tdx"
    SNP = "snp"
    NVGPU = "nvgpu"
    SIM = "sim"


class AttestationError(ConclaveError):
    def __init__(self, reason: Reason | str, message: str, *, steps: list["Step"] | None = None):
        super().__init__(str(reason), message)
        self.steps = list(steps or [])


class MalformedEvidence(AttestationError):
    exit_code = ExitCode.MALFORMED

    def __init__(self, message: str, *, steps: list["Step"] | None = None):
        super().__init__(Reason.MALFORMED, message, steps=steps)


class VerificationFailed(AttestationError):
    exit_code = ExitCode.VERIFICATION_FAILED


class PolicyError(AttestationError):
    """The policy itself is unusable (empty, invalid schema, unsafe in production)."""
    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Violation:
    reason: Reason
    field: str
    message: str
    expected: Any = None
    actual: Any = None

    def to_json(self) -> dict:
        return {"reason": str(self.reason), "field": self.field, "message": self.message,
                "expected": self.expected, "actual": self.actual}


class PolicyViolated(AttestationError):
    exit_code = ExitCode.POLICY_VIOLATED

    def __init__(self, violations: list[Violation]):
        assert violations, "PolicyViolated needs at least one violation"
        first = violations[0]
        super().__init__(first.reason, "; ".join(v.message for v in violations))
        self.violations = list(violations)


@dataclass(frozen=True)
class Step:
    step: str
    ok: bool

    def to_json(self) -> dict:
        return {"step": self.step, "ok": self.ok}


class StepLog:
    """Records numbered verification steps; `fail` raises at the first cryptographic failure."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def ok(self, name: str) -> None:
        self.steps.append(Step(name, True))

    def fail(self, name: str, reason: Reason, message: str) -> "VerificationFailed":
        self.steps.append(Step(name, False))
        return VerificationFailed(reason, message, steps=self.steps)


_ISSUER = object()  # only verification modules pass this; see VerifiedEvidence


@dataclass(frozen=True)
class VerifiedEvidence:
    """Evidence whose signatures and chains checked out at `verified_at`. Not yet policy-validated.

    claims: normalized names (see the CLI contract): bytes values stay bytes here and are
    hex-encoded only for JSON. `report_data` is always the 64-byte user data the TEE signed
    (for nvgpu: the 32-byte nonce).
    """

    tee: TeeType
    report_data: bytes
    claims: Mapping[str, Any]
    verified_at: datetime
    simulated: bool
    steps: tuple[Step, ...]
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    revocation_checked: bool = True
    notes: tuple[str, ...] = ()
    # Seconds between `verified_at` and the oldest vendor-dated piece of collateral used (TCB
    # info / QE identity issue dates, CRL thisUpdate); None when no dated collateral was used.
    collateral_age_s: float | None = None
    _issuer: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._issuer is not _ISSUER:
            raise TypeError("VerifiedEvidence is constructed only by verification")


def claims_to_json(claims: Mapping[str, Any]) -> dict:
    """Byte fields become lowercase hex; datetimes RFC 3339; nested mappings recursively."""
    def conv(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray, memoryview)):
            return bytes(v).hex()
        if isinstance(v, datetime):
            return v.isoformat().replace("+00:00", "Z")
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, StrEnum):
            return str(v)
        return v
    return conv(dict(claims))
