"""HPKE (RFC 9180) sealing to an attested node key.

Suite: the post-quantum hybrid KEM ML-KEM-768 + X25519 (draft-ietf-hpke-pq "MLKEM768-X25519"),
HKDF-SHA256, ChaCha20-Poly1305, as provided by cryptography 50's `hpke` module. The hybrid is
there, so no fallback to DHKEM(X25519) is used. Single-shot base mode: the sealed blob is
enc || ciphertext. `info` binds every sealed value to its context (purpose, sender, recipient,
name) so a blob sealed for one use cannot be replayed into another.

Public key wire form: ML-KEM-768 encapsulation key (1184 bytes) || X25519 public key (32 bytes).
"""
from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from conclave.runtime.errors import ConclaveError, ExitCode

SUITE_NAME = "MLKEM768-X25519/HKDF-SHA256/ChaCha20Poly1305"
_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
MLKEM_PUB_LEN = 1184
X25519_LEN = 32
PUBLIC_KEY_LEN = MLKEM_PUB_LEN + X25519_LEN
ENC_LEN = hpke.KEM.MLKEM768_X25519.enc_length()
TAG_LEN = 16
MAX_PLAINTEXT = 64 * 1024
MAX_SEALED = ENC_LEN + MAX_PLAINTEXT + TAG_LEN


class SealError(ConclaveError):
    """Opening failed: wrong key, tampered blob or wrong context. Reason `unseal_failed`."""

    exit_code = ExitCode.VERIFICATION_FAILED

    def __init__(self, message: str = "sealed data could not be opened (wrong key, context or tampered)"):
        super().__init__("unseal_failed", message)


class HpkePublicKey:
    """An attested HPKE public key (hybrid), 1216 bytes; constant-time equality."""

    __slots__ = ("_raw", "_key")

    def __init__(self, raw: bytes):
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise TypeError("HPKE public key must be bytes")
        raw = bytes(raw)
        if len(raw) != PUBLIC_KEY_LEN:
            raise ValueError(f"HPKE public key must be {PUBLIC_KEY_LEN} bytes, got {len(raw)}")
        try:
            mk = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM_PUB_LEN])
            xk = x25519.X25519PublicKey.from_public_bytes(raw[MLKEM_PUB_LEN:])
        except ValueError:
            raise ValueError("HPKE public key is not a valid ML-KEM-768 + X25519 key") from None
        self._raw = raw
        self._key = hpke.MLKEM768X25519PublicKey(mk, xk)

    @property
    def raw(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HpkePublicKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((HpkePublicKey, self._raw))

    def __repr__(self) -> str:

        return f"HpkePublicKey(sha256:{hashlib.sha256(self._raw).hexdigest()[:16]})"


class HpkePrivateKey:
    """A node's HPKE private key, generated in memory per boot; never serialized, repr redacted."""

    __slots__ = ("_key", "_public")

    def __init__(self, mlkem_key: mlkem.MLKEM768PrivateKey, x_key: x25519.X25519PrivateKey):
        self._key = hpke.MLKEM768X25519PrivateKey(mlkem_key, x_key)
        raw = (mlkem_key.public_key().public_bytes_raw()
               + x_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        self._public = HpkePublicKey(raw)

    @classmethod
    def generate(cls) -> "HpkePrivateKey":
        return cls(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    def public_key(self) -> HpkePublicKey:
        return self._public

    def open(self, sealed: bytes, *, info: bytes) -> bytes:
        """Open a blob sealed to this key under `info`; raises SealError on any failure."""
        if not isinstance(sealed, (bytes, bytearray)) or not (ENC_LEN + TAG_LEN <= len(sealed) <= MAX_SEALED):
            raise SealError("sealed data has an impossible length")
        try:
            return _SUITE.decrypt(bytes(sealed), self._key, info=bytes(info))
        except (InvalidTag, ValueError):
            raise SealError() from None

    def __repr__(self) -> str:
        return "HpkePrivateKey(<redacted>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("HpkePrivateKey cannot be pickled")


def seal(recipient: HpkePublicKey, plaintext: bytes, *, info: bytes) -> bytes:
    """Seal `plaintext` to `recipient` (an attested key) under context `info`: enc || ct."""
    if not isinstance(recipient, HpkePublicKey):
        raise TypeError("seal needs an HpkePublicKey")
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError("plaintext too large to seal")
    return _SUITE.encrypt(bytes(plaintext), recipient._key, info=bytes(info))


def context_info(purpose: str, *parts: bytes) -> bytes:
    """Length-prefixed, domain-separated `info` so contexts never collide."""
    out = [len(purpose).to_bytes(4, "big"), purpose.encode("utf-8")]
    for part in parts:
        out += [len(part).to_bytes(4, "big"), bytes(part)]
    return b"".join(out)
