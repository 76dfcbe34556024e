"""A named secret value that cannot be printed by accident."""
from __future__ import annotations

import hashlib
import hmac


class SecretValue:
    """Secret bytes (Ray token, model key). repr redacted; equality constant-time; not picklable."""

    __slots__ = ("_raw",)
    MAX_LEN = 16 * 1024

    def __init__(self, raw: bytes):
        if not isinstance(raw, (bytes, bytearray)):
            raise TypeError("secret must be bytes")
        if not 1 <= len(raw) <= self.MAX_LEN:
            raise ValueError("secret length out of range")
        self._raw = bytes(raw)

    def reveal(self) -> bytes:
        """The secret itself: only for sealing and for the consumer (e.g. Ray's environment)."""
        return self._raw

    def fingerprint(self) -> str:
        """A non-secret identifier (domain-separated SHA-256 prefix) for status and tests."""
        return hashlib.sha256(b"conclave/secret-fp/v1" + self._raw).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SecretValue(<redacted>, fp={self.fingerprint()})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("SecretValue cannot be pickled")
