"""Emulated OCSP responder for test hierarchies (NVIDIA-shaped device and RIM chains).

Why: verifiers in tests and in local mode must run the same OCSP path as against NVIDIA's
responder (ocsp_fetch -> ocsp.check_path), with answers signed by keys the test holds. The
responder answers RFC 6960 requests over HTTP POST (application/ocsp-request) and GET
(base64 path), for the issuers it was given; each answer is signed by the issuer itself or by a
delegated responder certificate (OCSPSigning EKU) that the caller made with
`responder_certificate`. `revoke()` shows on the next request; `set_down()` drops requests
(an unreachable responder); an issuer it does not know gets `unauthorized`.

Test keys only: nothing here is used by production verification.
"""
from __future__ import annotations

import base64
import binascii
import threading
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conclave.runtime.attestation.emulated.http_service import ThreadedHttpService
from conclave.runtime.attestation.ocsp import MAX_RESPONSE_LEN, _hash_of, _spki_bit_string

DEFAULT_VALIDITY = timedelta(hours=24)


def responder_certificate(issuer: x509.Certificate, issuer_key, *, cn: str = "Conclave Test OCSP Responder",
                          not_before: datetime | None = None, days: int = 365,
                          eku: bool = True) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A delegated responder (P-384, OCSPSigning EKU unless eku=False) issued by `issuer`."""
    key = ec.generate_private_key(ec.SECP384R1())
    start = not_before or datetime.now(timezone.utc) - timedelta(days=1)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(issuer.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    return builder.sign(issuer_key, hashes.SHA384()), key


@dataclass
class _Issuer:
    cert: x509.Certificate
    signer_cert: x509.Certificate
    signer_key: object
    delegated: bool
    revoked: dict[int, tuple[datetime, x509.ReasonFlags]] = field(default_factory=dict)


class EmulatedOcspResponder(ThreadedHttpService):
    """start(), stop(), url, add_issuer(), revoke(), set_down(); `requests` counts answered queries."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 validity: timedelta = DEFAULT_VALIDITY):
        super().__init__(host, port)
        self.clock = clock
        self.validity = validity
        self._issuers: list[_Issuer] = []
        self._lock = threading.Lock()
        self.requests = 0

    def __repr__(self) -> str:
        return f"EmulatedOcspResponder({len(self._issuers)} issuers)"

    # -- the hierarchy -----------------------------------------------------------------------
    def add_issuer(self, issuer: x509.Certificate, key=None, *,
                   responder: tuple[x509.Certificate, object] | None = None) -> None:
        """Answer for certificates `issuer` issued: signed with its own `key`, or by `responder`."""
        if (key is None) == (responder is None):
            raise ValueError("give the issuer's key or a delegated responder (certificate, key)")
        signer_cert, signer_key = responder if responder is not None else (issuer, key)
        with self._lock:
            self._issuers.append(_Issuer(issuer, signer_cert, signer_key, responder is not None))

    def revoke(self, cert: x509.Certificate, *, reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise,
               at: datetime | None = None) -> None:
        with self._lock:
            for issuer in self._issuers:
                if issuer.cert.subject == cert.issuer:
                    issuer.revoked[cert.serial_number] = (at or self.clock() - timedelta(minutes=1), reason)
                    return
        raise ValueError("the certificate's issuer is not served by this responder")

    # -- answering ---------------------------------------------------------------------------
    def _find(self, req: ocsp.OCSPRequest) -> _Issuer | None:
        for issuer in self._issuers:
            key_der = issuer.cert.public_key().public_bytes(serialization.Encoding.DER,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)
            if (req.issuer_name_hash == _hash_of(req.hash_algorithm, issuer.cert.subject.public_bytes())
                    and req.issuer_key_hash == _hash_of(req.hash_algorithm, _spki_bit_string(key_der))):
                return issuer
        return None

    def respond(self, request: bytes) -> bytes:
        """The DER OCSPResponse for a DER OCSPRequest."""
        try:
            req = ocsp.load_der_ocsp_request(request)
        except ValueError:
            return ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST).public_bytes(
                serialization.Encoding.DER)
        with self._lock:
            issuer = self._find(req)
            self.requests += 1
            if issuer is None:
                return ocsp.OCSPResponseBuilder.build_unsuccessful(
                    ocsp.OCSPResponseStatus.UNAUTHORIZED).public_bytes(serialization.Encoding.DER)
            now = self.clock()
            revoked = issuer.revoked.get(req.serial_number)
        status = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=req.issuer_name_hash, issuer_key_hash=req.issuer_key_hash,
            serial_number=req.serial_number, algorithm=req.hash_algorithm, cert_status=status,
            this_update=now - timedelta(minutes=1), next_update=now + self.validity,
            revocation_time=revoked[0] if revoked else None, revocation_reason=revoked[1] if revoked else None)
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.signer_cert)
        if issuer.delegated:
            builder = builder.certificates([issuer.signer_cert])
        return builder.sign(issuer.signer_key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)

    # -- HTTP --------------------------------------------------------------------------------
    name = "ocsp"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bytes | None) -> None:
                if service.down:
                    self.close_connection = True   # no answer: an unreachable responder
                    return
                out = service.respond(body) if body is not None else b""
                self.send_response(200 if body is not None else 400)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_POST(self):  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                self._answer(self.rfile.read(length) if 0 < length <= MAX_RESPONSE_LEN else None)

            def do_GET(self):  # noqa: N802
                tail = urllib.parse.unquote(self.path.rsplit("/", 1)[-1])
                try:
                    self._answer(base64.b64decode(tail, validate=True))
                except (binascii.Error, ValueError):
                    self._answer(None)

            def log_message(self, *args):
                pass

        return Handler

    @property
    def url(self) -> str:
        return self.origin + "/"


__all__ = ["EmulatedOcspResponder", "responder_certificate"]
