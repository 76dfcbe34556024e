"""Cached OCSP client for NVIDIA's responder (configurable URL; the emulator in tests).

Why separate from ocsp.py: verification does no I/O (DESIGN.md convention 6). This is the I/O
edge: for (certificate, issuer) pairs it POSTs RFC 6960 requests to the responder and returns
the DER responses as ocsp.OcspResponses for verification to judge. Responses are cached in
memory and, with a cache folder, on disk (public data), keyed by issuer key and serial; a cached
response is reused until `refresh_before` ahead of its nextUpdate, and kept as the fallback
while the responder is unreachable (verification then decides whether it is still valid).
A pair that yields nothing is simply absent: verification names it "unchecked".
"""
from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable

from cryptography import x509
from cryptography.x509 import ocsp as x509_ocsp

from conclave.runtime.attestation import ocsp
from conclave.runtime.attestation.collateral_fetch import _write_atomic

log = logging.getLogger("conclave.attestation.ocsp")

NVIDIA_OCSP_URL = "https://ocsp.ndis.nvidia.com/"
USER_AGENT = "conclave-ocsp/1"
DEFAULT_TIMEOUT = 5.0
DEFAULT_REFRESH_BEFORE = timedelta(hours=1)


def _next_update(der: bytes) -> datetime | None:
    try:
        response = x509_ocsp.load_der_ocsp_response(der)
        if response.response_status != x509_ocsp.OCSPResponseStatus.SUCCESSFUL:
            return None
        dates = [s.next_update_utc for s in response.responses]
    except ValueError:
        return None
    return None if not dates or None in dates else min(dates)


class OcspFetcher:
    """Fetches and caches OCSP responses (thread-safe). `last_errors` names what failed last."""

    def __init__(self, url: str = NVIDIA_OCSP_URL, *, cache_dir: Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT, refresh_before: timedelta = DEFAULT_REFRESH_BEFORE,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
            raise ValueError(f"unsupported OCSP responder URL {url!r}")
        self.url = url
        self.cache_dir = Path(cache_dir) / "ocsp" if cache_dir is not None else None
        self.timeout = timeout
        self.refresh_before = refresh_before
        self.clock = clock
        self._memory: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.last_errors: list[str] = []

    def __repr__(self) -> str:
        return f"OcspFetcher({self.url}, cache={self.cache_dir})"

    def responses_for(self, pairs: Iterable[tuple[x509.Certificate, x509.Certificate]]) -> ocsp.OcspResponses:
        """Responses for every (certificate, issuer) pair that one could be had for."""
        out: list[bytes] = []
        errors: list[str] = []
        with self._lock:
            for cert, issuer in pairs:
                der = self._response(cert, issuer, errors)
                if der is not None:
                    out.append(der)
            self.last_errors = errors
        return ocsp.OcspResponses.of(out)

    def _cached(self, key: str) -> bytes | None:
        if key in self._memory:
            return self._memory[key]
        if self.cache_dir is not None:
            try:
                der = (self.cache_dir / f"{key}.der").read_bytes()
            except OSError:
                return None
            self._memory[key] = der
            return der
        return None

    def _response(self, cert: x509.Certificate, issuer: x509.Certificate, errors: list[str]) -> bytes | None:
        key = ocsp.cert_key(cert, issuer)
        cached = self._cached(key)
        if cached is not None:
            until = _next_update(cached)
            if until is not None and self.clock() < until - self.refresh_before:
                return cached
        try:
            der = self._post(ocsp.request_der(cert, issuer))
        except OSError as exc:
            errors.append(f"{cert.subject.rfc4514_string()}: {exc}")
            log.warning("OCSP fetch failed for %s: %s", cert.subject.rfc4514_string(), exc)
            return cached
        if _next_update(der) is None:   # an error answer (or garbage): keep what we had
            errors.append(f"{cert.subject.rfc4514_string()}: the responder gave no usable answer")
            return cached if cached is not None else der
        self._memory[key] = der
        if self.cache_dir is not None:
            _write_atomic(self.cache_dir / f"{key}.der", der)
        return der

    def _post(self, request: bytes) -> bytes:
        req = urllib.request.Request(self.url, data=request, method="POST",
                                     headers={"Content-Type": "application/ocsp-request",
                                              "Accept": "application/ocsp-response", "User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (scheme checked)
                body = resp.read(ocsp.MAX_RESPONSE_LEN + 1)
        except urllib.error.HTTPError as exc:
            raise OSError(f"{self.url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise OSError(f"{self.url}: {getattr(exc, 'reason', exc)}") from None
        if len(body) > ocsp.MAX_RESPONSE_LEN:
            raise OSError(f"{self.url}: response larger than {ocsp.MAX_RESPONSE_LEN} bytes")
        return body


__all__ = ["OcspFetcher", "NVIDIA_OCSP_URL"]
