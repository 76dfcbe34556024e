"""Fixtures for the confidential-serving units (helpers live in e2e_support.py)."""
from __future__ import annotations

import secrets
from typing import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.endpoint.binding import node_report_data
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.manifest import verify_bytes
from conclave.runtime.report import ReportSigner

from conclave.runtime.endpoint.tls import generate_head_identity

from e2e_support import GOOD_MEASUREMENT, Deployment, HttpsHead, make_manifest_bytes


@pytest.fixture(scope="session")
def deployment() -> Deployment:
    root = SimulatedRoot.generate("e2e-units-sim")
    owner = ed25519.Ed25519PrivateKey.generate()
    data = make_manifest_bytes(owner)
    manifest = verify_bytes(data, trusted_owner=keys.fingerprint(owner.public_key()))
    d = Deployment(root, owner, data, manifest,
                   root.issue_attester("node-0", measurement=GOOD_MEASUREMENT),
                   root.issue_attester("node-1", measurement=GOOD_MEASUREMENT),
                   ReportSigner.generate())
    for n in ("node-0", "node-1"):
        d.wg[n], d.hpke[n] = secrets.token_bytes(32), secrets.token_bytes(32)
        d.statement_keys[n] = ed25519.Ed25519PrivateKey.generate()
    d.worker_nonce = secrets.token_bytes(32)
    d.worker_evidence = d.worker_attester.evidence(node_report_data(
        manifest_digest=manifest.digest, wg_public_key=d.wg["node-1"],
        hpke_public_key=d.hpke["node-1"], nonce=d.worker_nonce, extra=d.worker_extra()))
    return d


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
