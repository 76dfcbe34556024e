"""Sender authentication of sealed releases: the releasing party signs what it sealed.

HPKE base mode (runtime/keys/hpke.py) proves nothing about the sender: anyone who knows a node's
public HPKE key can seal a value of their choice to it. Auth mode cannot help here either, since
the ML-KEM hybrid KEM has no authenticated encapsulation (and cryptography's hpke offers base
mode only). So every sealed release (a WireGuard PSK, a named secret, a stage shard key) travels
with an Ed25519 signature over its context `info` (purpose, name, both ends) and the sealed bytes,
by a key the receiver already trusts: a node's per-boot statement key bound into the evidence the
receiver admitted, or the broker key the signed deployment manifest names. The receiver checks the
signature BEFORE opening, and refuses the value otherwise.

Signed bytes: DOMAIN || len(info) || info || len(sealed) || sealed (4-byte big-endian lengths).
Pure: no I/O.
"""
from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

DOMAIN = b"conclave/sealed-release/v1\x00"
PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64


class ReleaseNotAuthenticated(ValueError):
    """The signature over a sealed release is missing, malformed, or not the expected sender's.
    Callers map it to their stable reason (psk_not_authenticated, secret_not_authenticated)."""


def signed_bytes(info: bytes, sealed: bytes) -> bytes:
    info, sealed = bytes(info), bytes(sealed)
    return b"".join((DOMAIN, len(info).to_bytes(4, "big"), info, len(sealed).to_bytes(4, "big"), sealed))


def sign_release(private: ed25519.Ed25519PrivateKey, *, info: bytes, sealed: bytes) -> bytes:
    """The sender's signature over a sealed blob and the context it was sealed under."""
    return private.sign(signed_bytes(info, sealed))


def verify_release(sender_key: bytes, *, info: bytes, sealed: bytes, signature: bytes) -> None:
    """Return only if `signature` is sender_key's over (info, sealed); raise ReleaseNotAuthenticated.

    sender_key: the raw Ed25519 key the receiver trusts for this sender (empty: none is bound,
    which fails closed like a bad signature)."""
    if not sender_key or len(sender_key) != PUBLIC_KEY_LEN:
        raise ReleaseNotAuthenticated("no signing key is bound for the sender")
    if len(signature) != SIGNATURE_LEN:
        raise ReleaseNotAuthenticated("the release carries no valid signature")
    try:
        public = ed25519.Ed25519PublicKey.from_public_bytes(bytes(sender_key))
        public.verify(bytes(signature), signed_bytes(info, sealed))
    except (InvalidSignature, ValueError):
        raise ReleaseNotAuthenticated("the release is not signed by the attested sender") from None
