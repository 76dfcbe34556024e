#!/usr/bin/env python3
"""Generates the TDX quotes for production-default checks that no public vector exercises:
each is a valid quote from make_vectors.py with one field changed and the header+body signed
again by the same (deterministic) attestation key, so every signature still verifies.

  quotes/policy_mr_servicetd_bound.bin  v5 body type 3, MRSERVICETD = SHA-384("service td")
  quotes/policy_qe_vendor_other.bin     v4, header QE vendor ID = 16 x 0x11 (not Intel's)

Run from the repository root after make_vectors.py:  .venv/bin/python tests/data/tdx/make_policy_vectors.py
The output is deterministic (RFC 6979 signatures, keys derived from fixed labels).
"""
from __future__ import annotations

import hashlib
import importlib.util
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = 48
BODY10, BODY15 = 584, 648
V5_BODY_PREFIX = 6                      # u16 body type, u32 body size
QE_VENDOR_OFFSET = 12                   # header: version, key type, TEE type, reserved, QE vendor ID
SERVICE_TD = hashlib.sha384(b"service td").digest()


def _generator():
    spec = importlib.util.spec_from_file_location("conclave_tdx_make_vectors", HERE / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def resign(mv, quote: bytes, signed_len: int, patch_at: int, value: bytes) -> bytes:
    """Replace bytes at `patch_at` inside the signed part and sign header+body again."""
    out = bytearray(quote)
    out[patch_at:patch_at + len(value)] = value
    (sig_len,) = struct.unpack_from("<I", out, signed_len)
    assert sig_len > 64
    out[signed_len + 4:signed_len + 4 + 64] = mv.sign_raw(mv.K_ATT, bytes(out[:signed_len]))
    return bytes(out)


def main() -> None:
    mv = _generator()
    quotes = HERE / "quotes"
    v5 = (quotes / "v5_valid.bin").read_bytes()
    v5_signed = HEADER + V5_BODY_PREFIX + BODY15
    servicetd_at = HEADER + V5_BODY_PREFIX + BODY10 + 16   # after TEE_TCB_SVN2
    (quotes / "policy_mr_servicetd_bound.bin").write_bytes(resign(mv, v5, v5_signed, servicetd_at, SERVICE_TD))
    v4 = (quotes / "v4_valid.bin").read_bytes()
    (quotes / "policy_qe_vendor_other.bin").write_bytes(
        resign(mv, v4, HEADER + BODY10, QE_VENDOR_OFFSET, bytes([0x11]) * 16))
    print(f"wrote TDX policy vectors under {quotes}")


if __name__ == "__main__":
    main()
