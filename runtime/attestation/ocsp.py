"""OCSP (RFC 6960) for NVIDIA's certificate chains: build requests, judge signed responses.

Why: NVIDIA publishes no CRLs for its device-identity and RIM-signing hierarchies; revocation is
answered only by its OCSP responder. This module is the pure part: it builds the DER request for
(certificate, issuer) and decides, from responses fetched elsewhere (ocsp_fetch) and the
verification time, whether each certificate of a verified path is good, revoked or unchecked.
No I/O; the caller passes the responses and the clock.

A response counts for a certificate only when all of this holds (otherwise the certificate is
"unchecked", with the reason named, never "good"):
- responseStatus successful, and a SingleResponse whose CertID matches the certificate's serial
  and its issuer's name and key hashes (under the hash algorithm the response used);
- it is signed by the issuer itself, or by a responder certificate carried in the response that
  has the OCSPSigning extended key usage, is valid at `at`, and was issued by a certificate of
  the verified path at or above the issuer (NVIDIA's responder certificate chains to the
  hierarchy's root, as nvtrust checks it, rather than to the direct issuer);
- thisUpdate <= at (plus a small clock skew) and at <= nextUpdate; a response without
  nextUpdate gives no freshness bound and is not used.
`revoked` (any revocation reason, certificateHold included: fail closed) wins over everything.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

REQUEST_HASH = hashes.SHA384  # NVIDIA's responder is queried with SHA-384 CertIDs (as nvtrust does)
CLOCK_SKEW = timedelta(minutes=5)
MAX_RESPONSE_LEN = 64 * 1024

GOOD = "good"
REVOKED = "revoked"
UNCHECKED = "unchecked"


def request_der(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """The DER OCSPRequest for `cert` issued by `issuer` (no nonce: responses are cached and shared)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, REQUEST_HASH())
    return builder.build().public_bytes(serialization.Encoding.DER)


def cert_key(cert: x509.Certificate, issuer: x509.Certificate) -> str:
    """A stable name for (issuer key, serial): the cache key of a certificate's response."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(issuer.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return f"{digest.finalize().hex()[:32]}-{cert.serial_number:x}"


@dataclass(frozen=True)
class OcspResponses:
    """DER OCSP responses offered for one verification (untrusted until judged here)."""

    responses: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, ders: Iterable[bytes]) -> "OcspResponses":
        return cls(tuple(bytes(d) for d in ders if d and len(d) <= MAX_RESPONSE_LEN))


@dataclass(frozen=True)
class CertStatus:
    """The revocation status of one certificate: GOOD, REVOKED or UNCHECKED (with why)."""

    subject: str
    status: str
    why: str = ""
    this_update: datetime | None = None


@dataclass(frozen=True)
class RevocationResult:
    """Every certificate that had to be checked, by status; `checked` only when all are good."""

    statuses: tuple[CertStatus, ...]

    @property
    def checked(self) -> bool:
        return all(s.status == GOOD for s in self.statuses)

    @property
    def revoked(self) -> tuple[CertStatus, ...]:
        return tuple(s for s in self.statuses if s.status == REVOKED)

    @property
    def unchecked(self) -> tuple[CertStatus, ...]:
        return tuple(s for s in self.statuses if s.status == UNCHECKED)

    @property
    def oldest_this_update(self) -> datetime | None:
        dates = [s.this_update for s in self.statuses if s.this_update is not None]
        return min(dates) if dates else None

    def __add__(self, other: "RevocationResult") -> "RevocationResult":
        return RevocationResult(self.statuses + other.statuses)


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _hash_of(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _matches(single, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """The SingleResponse's CertID names `cert` under `issuer` (RFC 6960 4.1.1: the key hash is
    over the issuer's subjectPublicKey BIT STRING, the name hash over its DER subject)."""
    try:
        algorithm = single.hash_algorithm
        key_der = issuer.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        return (single.serial_number == cert.serial_number
                and single.issuer_key_hash == _hash_of(algorithm, _spki_bit_string(key_der))
                and single.issuer_name_hash == _hash_of(algorithm, issuer.subject.public_bytes()))
    except (ValueError, UnsupportedAlgorithm):
        return False


def _spki_bit_string(spki_der: bytes) -> bytes:
    """The subjectPublicKey BIT STRING contents (without the unused-bits byte) of a DER SPKI."""
    from conclave.runtime.attestation.nvgpu_chain import _der_items
    (tag, body), = _der_items(spki_der)
    if tag != 0x30:
        raise ValueError("SPKI is not a SEQUENCE")
    items = _der_items(body)
    if len(items) != 2 or items[1][0] != 0x03 or not items[1][1]:
        raise ValueError("SPKI has no BIT STRING")
    return items[1][1][1:]


def _signed_by(response: ocsp.OCSPResponse, key) -> bool:
    algorithm = response.signature_hash_algorithm
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm)
        else:
            return False
        return True
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def _ocsp_signer(cert: x509.Certificate, at: datetime) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in eku and cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _signature_ok(response: ocsp.OCSPResponse, above: Sequence[x509.Certificate], at: datetime) -> str | None:
    """None when the issuer (above[0]) or an authorized responder signed the response, else why not."""
    issuer = above[0]
    if _signed_by(response, issuer.public_key()):
        return None
    for responder in response.certificates:
        if not _signed_by(response, responder.public_key()):
            continue
        if not _ocsp_signer(responder, at):
            return "the responder certificate is not an OCSP signer valid now"
        if not any(_issued_by(responder, ca) for ca in above):
            return "the responder certificate was not issued by the checked certificate's hierarchy"
        return None
    return "the response is not signed by the issuer or an authorized responder"


def status_of(cert: x509.Certificate, issuer_path: Sequence[x509.Certificate], der: bytes,
              at: datetime) -> CertStatus:
    """Judge one DER response for `cert`; issuer_path = its issuer first, then up to the root."""
    name = _name(cert)
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError:
        return CertStatus(name, UNCHECKED, "the OCSP response does not parse")
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return CertStatus(name, UNCHECKED, f"the OCSP responder answered {response.response_status.name.lower()}")
    try:
        single = next((s for s in response.responses if _matches(s, cert, issuer_path[0])), None)
    except ValueError:
        return CertStatus(name, UNCHECKED, "the OCSP response does not parse")
    if single is None:
        return CertStatus(name, UNCHECKED, "the OCSP response is not about this certificate")
    problem = _signature_ok(response, issuer_path, at)
    if problem:
        return CertStatus(name, UNCHECKED, problem)
    this_update, next_update = single.this_update_utc, single.next_update_utc
    if next_update is None:
        return CertStatus(name, UNCHECKED, "the OCSP response has no nextUpdate (no freshness bound)")
    if this_update > at + CLOCK_SKEW:
        return CertStatus(name, UNCHECKED, "the OCSP response is dated after the verification time")
    if at > next_update:
        return CertStatus(name, UNCHECKED, f"the OCSP response expired at {next_update.isoformat()}")
    if single.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason.value if single.revocation_reason is not None else "unspecified"
        return CertStatus(name, REVOKED, f"revoked at {single.revocation_time_utc.isoformat()} ({reason})",
                          this_update)
    if single.certificate_status != ocsp.OCSPCertStatus.GOOD:
        return CertStatus(name, UNCHECKED, "the OCSP responder does not know this certificate")
    return CertStatus(name, GOOD, "", this_update)


def check_path(path: Sequence[x509.Certificate], responses: OcspResponses, at: datetime, *,
               skip_leaf: bool) -> RevocationResult:
    """Status of every certificate of a verified path (leaf first, root last) except the root,
    and except the leaf when `skip_leaf` (the GPU's per-boot attestation leaf is made by its
    firmware and never registered with NVIDIA's responder). Of several responses for one
    certificate, a revoked one wins, then a good one; otherwise the first reason it is unchecked."""
    out: list[CertStatus] = []
    for i in range(1 if skip_leaf else 0, len(path) - 1):
        cert, above = path[i], path[i + 1:]
        found = [status_of(cert, above, der, at) for der in responses.responses]
        found = [s for s in found if s.why != "the OCSP response is not about this certificate"] or found
        pick = (next((s for s in found if s.status == REVOKED), None)
                or next((s for s in found if s.status == GOOD), None)
                or (found[0] if found else CertStatus(_name(cert), UNCHECKED, "no OCSP response was available")))
        out.append(pick)
    return RevocationResult(tuple(out))


def pairs_to_check(path: Sequence[x509.Certificate], *, skip_leaf: bool) -> list[tuple[x509.Certificate,
                                                                                       x509.Certificate]]:
    """(certificate, issuer) pairs check_path will look for: what a fetcher asks the responder."""
    return [(path[i], path[i + 1]) for i in range(1 if skip_leaf else 0, len(path) - 1)]


__all__ = ["OcspResponses", "CertStatus", "RevocationResult", "request_der", "cert_key", "status_of",
           "check_path", "pairs_to_check", "GOOD", "REVOKED", "UNCHECKED"]
