"""What the head binds into its evidence for clients: the TLS key and the run-report key.

Why: a client talks to the head over TLS. The head's evidence (REPORT_DATA) commits, besides the
usual manifest digest, WireGuard and HPKE keys, to the SHA-256 of the TLS certificate's public key
(SubjectPublicKeyInfo DER) and to the Ed25519 key that signs run reports, for the client's own
nonce. A client that checks this and then pins that TLS key knows its prompts reach the attested
head and nothing else.
"""
from __future__ import annotations

import hashlib
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conclave.runtime.attestation import binding

PURPOSE_HEAD = "conclave/head/v1"
PURPOSE_NODE = binding.PURPOSE_NODE
EXTRA_TLS = "tls_spki_sha256"
EXTRA_REPORT_KEY = "report_key"
EXTRA_STATEMENT_KEY = "statement_key"   # the node's Ed25519 statement key (what its enrolment also covers)


def spki_sha256(cert: x509.Certificate | bytes) -> bytes:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (DER); accepts a certificate or its DER."""
    if isinstance(cert, (bytes, bytearray)):
        cert = x509.load_der_x509_certificate(bytes(cert))
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def head_extra(*, tls_spki_sha256: bytes, report_key: bytes, statement_key: bytes | None = None) -> dict[str, bytes]:
    """What the head's evidence binds besides its WireGuard/HPKE keys: the TLS key hash, the report
    key and, where the head has one, its statement key (so a client can match the head's owner
    enrolment, which covers that key too, against keys its fresh evidence binds)."""
    if len(tls_spki_sha256) != 32 or len(report_key) != 32:
        raise ValueError("tls_spki_sha256 and report_key are 32 bytes each")
    extra = {EXTRA_TLS: bytes(tls_spki_sha256), EXTRA_REPORT_KEY: bytes(report_key)}
    if statement_key:
        if len(statement_key) != 32:
            raise ValueError("statement_key is 32 bytes")
        extra[EXTRA_STATEMENT_KEY] = bytes(statement_key)
    return extra


def head_report_data(*, manifest_digest: bytes, wg_public_key: bytes, hpke_public_key: bytes,
                     nonce: bytes, tls_spki_sha256: bytes, report_key: bytes,
                     statement_key: bytes | None = None) -> bytes:
    """The head's 64-byte REPORT_DATA for a client's nonce."""
    return binding.report_data_for(
        purpose=PURPOSE_HEAD, manifest_digest=manifest_digest, wg_public_key=wg_public_key,
        hpke_public_key=hpke_public_key, nonce=nonce,
        extra=head_extra(tls_spki_sha256=tls_spki_sha256, report_key=report_key, statement_key=statement_key))


def node_report_data(*, manifest_digest: bytes, wg_public_key: bytes, hpke_public_key: bytes,
                     nonce: bytes, extra: Mapping[str, bytes] | None = None) -> bytes:
    """A stage node's REPORT_DATA (the admission binding, purpose conclave/node/v1; the overlay
    adds extra {node_id, role, overlay_address})."""
    return binding.report_data_for(purpose=PURPOSE_NODE, manifest_digest=manifest_digest,
                                   wg_public_key=wg_public_key, hpke_public_key=hpke_public_key,
                                   nonce=nonce, extra=extra)
