"""Binding of keys and a verifier nonce into the TEE's REPORT_DATA (and the GPU nonce).

Why: evidence proves what runs, not who we are talking to. A node signs (through its TEE) a
64-byte REPORT_DATA that commits to the deployment manifest, the exact WireGuard and HPKE public
keys it presents, and the nonce the verifier issued. The verifier recomputes the value from what
the peer presented and compares it in constant time.

Encoding (version 1), every item length-prefixed so no two inputs share an encoding:
    item(x)   = u32_be(len(x)) || x
    encoding  = item(DOMAIN) || item(purpose) ||
                item("manifest_digest") || item(manifest_digest) ||
                item("wg_public_key")   || item(wg_public_key) ||
                item("hpke_public_key") || item(hpke_public_key) ||
                item("nonce")           || item(nonce) ||
                u32_be(len(extra)) || for key in sorted(extra): item("extra:" + key) || item(value)
    REPORT_DATA = SHA-512(encoding)                      (64 bytes)
    GPU nonce   = SHA-256(item(GPU_DOMAIN) || item(REPORT_DATA))   (32 bytes)
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Mapping

from conclave.runtime.attestation.core import Reason, VerificationFailed, VerifiedEvidence

PURPOSE_NODE = "conclave/node/v1"
DOMAIN = b"conclave/report-data/v1"
GPU_DOMAIN = b"conclave/gpu-nonce/v1"
REPORT_DATA_LEN = 64
GPU_NONCE_LEN = 32
WG_KEY_LEN = 32
MIN_NONCE_LEN = 16
MAX_ITEM_LEN = 2**20


def _item(data: bytes) -> bytes:
    if len(data) > MAX_ITEM_LEN:
        raise ValueError("binding item too large")
    return struct.pack(">I", len(data)) + data


def _need_bytes(name: str, value: object, *, exact: int | None = None, minimum: int = 1) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes")
    value = bytes(value)
    if exact is not None and len(value) != exact:
        raise ValueError(f"{name} must be {exact} bytes, got {len(value)}")
    if len(value) < minimum:
        raise ValueError(f"{name} must be at least {minimum} bytes")
    return value


def encode(*, purpose: str, manifest_digest: bytes, wg_public_key: bytes, hpke_public_key: bytes,
           nonce: bytes, extra: Mapping[str, bytes] | None = None) -> bytes:
    """The canonical pre-image of REPORT_DATA (exposed for test vectors and audits)."""
    if not isinstance(purpose, str) or not purpose:
        raise ValueError("purpose must be a non-empty string")
    parts = [
        _item(DOMAIN), _item(purpose.encode("utf-8")),
        _item(b"manifest_digest"), _item(_need_bytes("manifest_digest", manifest_digest, minimum=32)),
        _item(b"wg_public_key"), _item(_need_bytes("wg_public_key", wg_public_key, exact=WG_KEY_LEN)),
        _item(b"hpke_public_key"), _item(_need_bytes("hpke_public_key", hpke_public_key)),
        _item(b"nonce"), _item(_need_bytes("nonce", nonce, minimum=MIN_NONCE_LEN)),
    ]
    extra = dict(extra or {})
    parts.append(struct.pack(">I", len(extra)))
    for key in sorted(extra):
        if not isinstance(key, str) or not key:
            raise ValueError("extra keys must be non-empty strings")
        parts.append(_item(("extra:" + key).encode("utf-8")))
        parts.append(_item(_need_bytes(f"extra[{key}]", extra[key], minimum=0)))
    return b"".join(parts)


def report_data_for(*, purpose: str, manifest_digest: bytes, wg_public_key: bytes,
                    hpke_public_key: bytes, nonce: bytes,
                    extra: Mapping[str, bytes] | None = None) -> bytes:
    """64-byte REPORT_DATA committing to purpose, manifest, both public keys, nonce and extras."""
    return hashlib.sha512(encode(purpose=purpose, manifest_digest=manifest_digest,
                                 wg_public_key=wg_public_key, hpke_public_key=hpke_public_key,
                                 nonce=nonce, extra=extra)).digest()


def gpu_nonce_for(report_data: bytes) -> bytes:
    """32-byte GPU attestation nonce derived from the CPU REPORT_DATA (ties GPU to CPU evidence)."""
    rd = _need_bytes("report_data", report_data, exact=REPORT_DATA_LEN)
    return hashlib.sha256(_item(GPU_DOMAIN) + _item(rd)).digest()


def check_binding(verified: VerifiedEvidence, expected_report_data: bytes) -> None:
    """Constant-time comparison of the evidence's REPORT_DATA (nvgpu: nonce) with the expected value.

    Raises VerificationFailed(report_data_mismatch); returns None on a match.
    """
    if not isinstance(verified, VerifiedEvidence):
        raise TypeError("check_binding accepts only VerifiedEvidence")
    expected = _need_bytes("expected_report_data", expected_report_data)
    actual = bytes(verified.report_data)
    # compare_digest is constant-time in the contents; lengths are public (64 or 32).
    if not hmac.compare_digest(actual, expected):
        raise VerificationFailed(Reason.REPORT_DATA_MISMATCH,
                                 "evidence REPORT_DATA does not bind the presented keys and nonce",
                                 steps=list(verified.steps))
