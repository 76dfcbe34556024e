"""The model sealing key: 32 random bytes, kept in memory or in a 0600 file the caller names.

Why a class: the key must never be printed, logged or put in an exception (repr is redacted), and
every derived key (per-file AEAD keys, the index MAC key, the public key id) is derived in one
place with HKDF-SHA256 and distinct labels. In production the model owner's key broker releases
these 32 bytes HPKE-sealed to admitted nodes: `from_bytes` / `to_bytes` are that seam.
"""
from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from conclave.runtime.errors import ConclaveError, ExitCode

KEY_LEN = 32
_LABEL = b"conclave/seal/v1/"


class SealingKey:
    __slots__ = ("_key",)

    def __init__(self, key: bytes):
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
            raise ValueError("a sealing key is exactly 32 bytes")
        self._key = bytes(key)

    def __repr__(self) -> str:
        return f"SealingKey(id={self.key_id.hex()}, key=<redacted>)"

    __str__ = __repr__

    def __reduce__(self):  # never pickled by accident (e.g. shipped to a Ray worker)
        raise TypeError("SealingKey is not picklable")

    @classmethod
    def generate(cls) -> "SealingKey":
        return cls(secrets.token_bytes(KEY_LEN))

    @classmethod
    def from_bytes(cls, data: bytes) -> "SealingKey":
        return cls(data)

    def to_bytes(self) -> bytes:
        """The raw key, for HPKE sealing by the key broker. Handle as a secret."""
        return self._key

    def _derive(self, label: bytes, salt: bytes | None = None) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                    info=_LABEL + label).derive(self._key)

    def file_key(self, file_id: bytes) -> bytes:
        return self._derive(b"file", salt=file_id)

    def index_key(self) -> bytes:
        return self._derive(b"index")

    @property
    def key_id(self) -> bytes:
        """16 public bytes that identify the key (one-way), so a wrong key is named as such."""
        return self._derive(b"key-id")[:16]

    def same_id(self, key_id_hex: str) -> bool:
        try:
            other = bytes.fromhex(key_id_hex)
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(self.key_id, other)


class KeyFileError(ConclaveError):
    exit_code = ExitCode.USAGE


def write_key_file(path: Path, key: SealingKey) -> None:
    """Write the raw key to a NEW file with mode 0600 (refuses to overwrite an existing file)."""
    try:
        fd = os.open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise KeyFileError("key_exists", f"{path} already exists; not overwriting a key") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.to_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_file(path: Path) -> SealingKey:
    """Read a raw 32-byte key file; refuse one that group/others can read (fail closed)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError("key_missing", f"key file {path} not found") from None
    except OSError as exc:
        raise KeyFileError("key_invalid", f"cannot open key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError("key_invalid", f"{path} is not a regular file")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise KeyFileError("key_permissions", f"key file {path} is readable by group/others; chmod 600")
        data = os.read(fd, KEY_LEN + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_LEN:
        raise KeyFileError("key_invalid", f"{path} must hold exactly 32 raw bytes")
    return SealingKey(data)
