"""Signed stage statements: what a node says about its own stage (shard verified, Ray joined).

A node signs its statement with the per-boot Ed25519 statement key whose public half its
evidence binds (Announcement.statement_key is part of REPORT_DATA's extras), and hands it out
in every Ping reply. The head accepts a worker's statement only when the signature verifies
under the key bound into that worker's admitted evidence, so "stage k verified its shard" is
proven by stage k's CVM, not claimed by anyone on the path. Pure: no I/O.

Signed bytes: DOMAIN || canonical_json(statement).
"""
from __future__ import annotations

import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.runtime.canonical import canonical_json

DOMAIN = b"conclave/stage-statement/v1\x00"
MAX_STATEMENT_LEN = 16 * 1024
FORMAT = "conclave-stage-statement/v1"


class StatementInvalid(ValueError):
    """A statement failed its signature or structure check (reason stage_statement_invalid)."""


def sign(private: ed25519.Ed25519PrivateKey, statement: dict) -> tuple[bytes, bytes]:
    """(canonical bytes, signature) of `statement` (a JSON object without floats)."""
    body = canonical_json({**statement, "format": FORMAT})
    if len(body) > MAX_STATEMENT_LEN:
        raise ValueError("stage statement too large")
    return body, private.sign(DOMAIN + body)


def verify(statement_key: bytes, body: bytes, signature: bytes) -> dict:
    """The statement, if `signature` is statement_key's over it; raises StatementInvalid."""
    if not statement_key or len(statement_key) != 32:
        raise StatementInvalid("the peer's evidence binds no statement key")
    if not body or len(body) > MAX_STATEMENT_LEN or len(signature) != 64:
        raise StatementInvalid("statement or signature has the wrong size")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(statement_key).verify(signature, DOMAIN + body)
    except (InvalidSignature, ValueError):
        raise StatementInvalid("statement signature does not verify under the bound key") from None
    try:
        value = json.loads(body)
    except ValueError:
        raise StatementInvalid("statement is not JSON") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise StatementInvalid("statement has the wrong format")
    return value
