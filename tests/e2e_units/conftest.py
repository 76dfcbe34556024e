"""Fixtures for the confidential-serving units (helpers live in e2e_support.py)."""
from __future__ import annotations

from typing import Callable

import pytest

from conclave.runtime.endpoint.tls import generate_head_identity

from e2e_support import Deployment, HttpsHead


@pytest.fixture(scope="session")
def deployment() -> Deployment:
    return Deployment.create()


@pytest.fixture
def https_head(tmp_path, deployment) -> Callable[..., HttpsHead]:
    """Factory: https_head(bind_tls="a"|"b", serve_tls="a"|"b") -> started HttpsHead (stopped after
    the test). head.certs[name] = (cert PEM path, SPKI SHA-256) of TLS identities "a" and "b"."""
    ids = {n: generate_head_identity(["127.0.0.1"]) for n in ("a", "b")}
    certs = {}
    for n, ident in ids.items():
        (tmp_path / f"head-{n}.crt").write_bytes(ident.cert_pem)
        certs[n] = (tmp_path / f"head-{n}.crt", ident.spki_sha256)
    started: list[HttpsHead] = []

    def make(bind_tls: str = "a", serve_tls: str = "a", **builder_kw) -> HttpsHead:
        head = HttpsHead(ids[serve_tls], deployment.builder(ids[bind_tls].spki_sha256, **builder_kw),
                         deployment.receipt_issuer())
        head.certs = certs
        started.append(head.__enter__())
        return head

    yield make
    for h in started:
        h.__exit__(None, None, None)
