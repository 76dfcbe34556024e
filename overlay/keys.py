"""WireGuard key types: 32-byte X25519 keys whose misuse the type system makes hard.

Why classes instead of bytes/str: a private key must never reach a log line, argv, an exception
or a repr by accident, and a public key must never be compared with `==` in variable time or
confused with a private one. Both are exactly 32 bytes; the wg text form is standard base64.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

KEY_LEN = 32


def _exact32(data: object, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes")
    data = bytes(data)
    if len(data) != KEY_LEN:
        raise ValueError(f"{what} must be exactly {KEY_LEN} bytes, got {len(data)}")
    return data


def _from_b64(text: str, what: str) -> bytes:
    if not isinstance(text, str) or len(text) != 44:
        raise ValueError(f"{what} must be 44 characters of base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


class WgPublicKey:
    """A WireGuard (X25519) public key. Hashable, constant-time equality, base64 text form."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes):
        self._raw = _exact32(raw, "WireGuard public key")

    @classmethod
    def from_base64(cls, text: str) -> "WgPublicKey":
        return cls(_from_b64(text, "WireGuard public key"))

    @property
    def raw(self) -> bytes:
        return self._raw

    def to_base64(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WgPublicKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((WgPublicKey, self._raw))

    def __lt__(self, other: "WgPublicKey") -> bool:  # deterministic ordering (PSK leader election)
        return self._raw < other._raw

    def __repr__(self) -> str:
        return f"WgPublicKey({self.to_base64()})"

    __str__ = to_base64


class WgPrivateKey:
    """A WireGuard private key. repr/str are redacted; the secret leaves only via `wg_text()`,
    which exists to feed `wg set ... private-key /dev/fd/N` through a pipe."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes):
        self._raw = _exact32(raw, "WireGuard private key")

    @classmethod
    def generate(cls) -> "WgPrivateKey":
        key = x25519.X25519PrivateKey.generate()
        return cls(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption()))

    def public_key(self) -> WgPublicKey:
        pub = x25519.X25519PrivateKey.from_private_bytes(self._raw).public_key()
        return WgPublicKey(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def wg_text(self) -> bytes:
        """The base64 line `wg` reads from a key file. Only for a pipe to `wg`; never log it."""
        return base64.b64encode(self._raw) + b"\n"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WgPrivateKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    __hash__ = None  # type: ignore[assignment]  # secrets are not dictionary keys

    def __repr__(self) -> str:
        return "WgPrivateKey(<redacted>)"

    __str__ = __repr__

    def __reduce__(self):  # refuse pickling: a secret must not be serialized by accident
        raise TypeError("WgPrivateKey cannot be pickled")


class PresharedKey:
    """A WireGuard pre-shared key (32 random bytes): redacted repr, constant-time equality."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes):
        self._raw = _exact32(raw, "pre-shared key")

    @classmethod
    def generate(cls) -> "PresharedKey":
        return cls(secrets.token_bytes(KEY_LEN))

    def secret_bytes(self) -> bytes:
        """Raw bytes, for sealing and key confirmation only."""
        return self._raw

    def wg_text(self) -> bytes:
        return base64.b64encode(self._raw) + b"\n"

    def fingerprint(self) -> str:
        """A non-secret identifier to compare desired and observed state (SHA-256, 16 hex chars)."""
        return hashlib.sha256(b"conclave/psk-fp/v1" + self._raw).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PresharedKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "PresharedKey(<redacted>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("PresharedKey cannot be pickled")


def psk_fingerprint_of_b64(text: str) -> str | None:
    """Fingerprint of a psk as `wg show` prints it; None when unset ('(none)')."""
    if not text or text == "(none)":
        return None
    return PresharedKey(_from_b64(text, "pre-shared key")).fingerprint()
