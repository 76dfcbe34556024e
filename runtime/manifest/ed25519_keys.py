"""Ed25519 signing keys on disk and in memory (deployment owner, run-report signer).

Why one module: the owner key file rules (PEM, 0600, created atomically, refused when others can
read it) and the public-key forms (raw 32 bytes, base64, PEM, SHA-256 fingerprint) are shared by
the manifest and the run report. Private key bytes never reach argv, logs, repr or exceptions.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.runtime.errors import ConclaveError, ExitCode

PUBLIC_KEY_LEN = 32


class KeyFileError(ConclaveError):
    exit_code = ExitCode.USAGE


def public_key_bytes(key: ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key: bytes | ed25519.Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, lowercase hex: what people compare and pin."""
    raw = public_key if isinstance(public_key, (bytes, bytearray)) else public_key_bytes(public_key)
    return hashlib.sha256(bytes(raw)).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, what: str, *, length: int | None = None) -> bytes:
    """Strict base64 (raises ValueError naming only `what`)."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        out = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if length is not None and len(out) != length:
        raise ValueError(f"{what} must be {length} bytes")
    return out


def load_public_key_raw(raw: bytes) -> ed25519.Ed25519PublicKey:
    if len(raw) != PUBLIC_KEY_LEN:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def generate_key_file(path: Path) -> ed25519.Ed25519PrivateKey:
    """Create a new PEM (PKCS#8) private key file with mode 0600; refuses to overwrite."""
    path = Path(path)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError("key_exists", f"{path} already exists; not overwriting a key") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Read a PEM private key; refuse files that group or others can read (fail closed)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError("key_missing", f"key file {path} not found") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError("key_permissions",
                           f"key file {path} is readable by group/others; chmod 600 it")
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError("key_invalid", f"{path} is not an unencrypted PEM private key") from None
    finally:
        del data
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError("key_invalid", f"{path} is not an Ed25519 key")
    return key


def load_public_key_file(path: Path) -> bytes:
    """Raw public key from a PEM public key, a PEM private key (0600), or a base64 text file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError("key_missing", f"public key file {path} not found") from None
    if b"PRIVATE KEY" in data:
        return public_key_bytes(load_private_key(path))
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            raise KeyFileError("key_invalid", f"{path} is not a PEM public key") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise KeyFileError("key_invalid", f"{path} is not an Ed25519 public key")
        return public_key_bytes(key)
    try:
        return unb64(data.decode("ascii").strip(), "public key", length=PUBLIC_KEY_LEN)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError("key_invalid", f"{path} holds no Ed25519 public key") from None


def public_key_pem(raw: bytes) -> bytes:
    return load_public_key_raw(raw).public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def same_key(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(bytes(a), bytes(b))
