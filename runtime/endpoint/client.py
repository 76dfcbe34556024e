"""Fetch a head's attestation bundle over TLS and verify it against the connection's own key.

Why the same connection: the TLS key we check is the one presented on the connection that
served the bundle, so a proxy in the middle cannot show us one key and the bundle another. The
certificate is not trusted for what it says (it is usually self-signed inside the CVM): trust
comes from the evidence binding its SubjectPublicKeyInfo hash. --ca adds ordinary PKI checking on
top when the deployment also has a CA-issued certificate.
"""
from __future__ import annotations

import hashlib
import http.client
import secrets
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from cryptography import x509

from conclave.runtime.endpoint.binding import spki_sha256
from conclave.runtime.endpoint.bundle import MAX_BUNDLE_LEN
from conclave.runtime.endpoint.verify import (BundleResult, EndpointReason, require_pinned_owner,
                                              verify_bundle)
from conclave.runtime.errors import ConclaveError, ExitCode, UsageError
from conclave.runtime.manifest.document import VerifiedManifest

ATTESTATION_PATH = "/v1/attestation"
NONCE_LEN = 32


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int
    prefix: str   # path prefix without trailing slash

    @classmethod
    def parse(cls, url: str) -> "Upstream":
        parts = urlsplit(url)
        if parts.scheme != "https":
            raise UsageError("the endpoint must be https:// (the TLS key is what the evidence binds)")
        if not parts.hostname:
            raise UsageError(f"no host in {url!r}")
        if parts.query or parts.fragment:
            raise UsageError("the endpoint URL takes no query or fragment")
        return cls("https", parts.hostname, parts.port or 443, parts.path.rstrip("/"))

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{self.prefix}"


def tls_context(ca: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:  # trust comes from the attested key binding, checked after the handshake
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(frozen=True)
class Fetched:
    bundle: bytes
    cert_der: bytes
    tls_spki_sha256: bytes

    @property
    def cert_sha256(self) -> bytes:
        return hashlib.sha256(self.cert_der).digest()


class EndpointUnreachable(ConclaveError):
    def __init__(self, message: str):
        super().__init__(EndpointReason.UNREACHABLE, message, exit_code=ExitCode.RUNTIME)


def fetch_bundle(upstream: Upstream, nonce: bytes, *, ca: Path | None = None,
                 timeout: float = 30.0) -> Fetched:
    """One TLS connection: handshake, read the peer certificate, GET the bundle on it."""
    conn = http.client.HTTPSConnection(upstream.host, upstream.port, context=tls_context(ca),
                                       timeout=timeout)
    try:
        try:
            conn.connect()
            sock = conn.sock
            cert_der = sock.getpeercert(binary_form=True)
            if not cert_der:
                raise EndpointUnreachable("the endpoint presented no certificate")
            conn.request("GET", f"{upstream.prefix}{ATTESTATION_PATH}?nonce={nonce.hex()}",
                         headers={"Accept": "application/json"})
            if conn.sock is not sock:  # never let a silent reconnect change the peer
                raise EndpointUnreachable("connection changed while fetching the bundle")
            resp = conn.getresponse()
            body = resp.read(MAX_BUNDLE_LEN + 1)
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            raise EndpointUnreachable(f"cannot fetch attestation from {upstream.base}: "
                                      f"{type(exc).__name__}: {exc}") from None
        if resp.status != 200:
            raise EndpointUnreachable(f"attestation endpoint answered HTTP {resp.status}")
        return Fetched(body, cert_der, spki_sha256(cert_der))
    finally:
        conn.close()


@dataclass(frozen=True)
class EndpointVerification:
    result: BundleResult
    fetched: Fetched | None
    nonce: bytes

    @property
    def ok(self) -> bool:
        return self.result.ok

    def to_json(self) -> dict:
        out = self.result.to_json()
        if self.fetched is not None:
            out["tls"] = {"spki_sha256": self.fetched.tls_spki_sha256.hex(),
                          "cert_sha256": self.fetched.cert_sha256.hex()}
        out["nonce"] = self.nonce.hex()
        return out


def verify_endpoint(url: str, *, manifest: VerifiedManifest,
                    trusted_roots: Sequence[x509.Certificate] | None = None,
                    ca: Path | None = None, timeout: float = 30.0, at: datetime | None = None,
                    max_cached_age: timedelta | None = None,
                    unsafe_unpinned: bool = False, collateral_for=None) -> EndpointVerification:
    """Fresh nonce -> fetch on one TLS connection -> verify_bundle. Unreachable is a failure too.

    An unpinned manifest raises ManifestError `owner_not_pinned` before any connection unless
    `unsafe_unpinned` is set."""
    require_pinned_owner(manifest, unsafe_unpinned=unsafe_unpinned)
    upstream = Upstream.parse(url)
    nonce = secrets.token_bytes(NONCE_LEN)
    try:
        fetched = fetch_bundle(upstream, nonce, ca=ca, timeout=timeout)
    except EndpointUnreachable as exc:
        result = BundleResult(False, exc.reason, exc.message, int(exc.exit_code),
                              [{"step": "endpoint.00.fetch", "ok": False}], [], manifest.digest.hex())
        return EndpointVerification(result, None, nonce)
    result = verify_bundle(fetched.bundle, manifest=manifest, tls_spki_sha256=fetched.tls_spki_sha256,
                           nonce=nonce, at=at or datetime.now(timezone.utc),
                           trusted_roots=trusted_roots, max_cached_age=max_cached_age,
                           collateral_for=collateral_for)   # the client's own TDX/SNP collateral
    result.steps.insert(0, {"step": "endpoint.00.fetch", "ok": True})
    return EndpointVerification(result, fetched, nonce)


def load_certificates(path: Path) -> list[x509.Certificate]:
    data = Path(path).read_bytes()
    try:
        if b"-----BEGIN" in data:
            return list(x509.load_pem_x509_certificates(data))
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise UsageError(f"{path} holds no certificate") from None
