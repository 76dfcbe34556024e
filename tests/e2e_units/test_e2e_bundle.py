"""verify_bundle (pure): accept a good bundle; each defect rejected with its reason."""
from __future__ import annotations

import base64
import json
import secrets
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.endpoint import verify_bundle
from conclave.runtime.endpoint.binding import node_report_data
from conclave.runtime.endpoint.bundle import BundleBuilder, respond
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.manifest import Stage, verify_bytes

from e2e_support import BAD_MEASUREMENT, STAGES, make_manifest_bytes

TLS = secrets.token_bytes(32)


@pytest.fixture
def nonce() -> bytes:
    return secrets.token_bytes(32)


def _verify(deployment, bundle, nonce, *, tls=TLS, manifest=None, roots=None, **kw):
    return verify_bundle(json.dumps(bundle).encode(), manifest=manifest or deployment.manifest,
                         tls_spki_sha256=tls, nonce=nonce, at=datetime.now(timezone.utc),
                         trusted_roots=roots or [deployment.root.certificate], **kw)


def test_good_bundle_accepted(deployment, nonce):
    bundle = deployment.builder(TLS).build(nonce)
    r = _verify(deployment, bundle, nonce)
    assert r.ok, r.to_json()
    out = r.to_json()
    assert out["tee"] == "sim" and out["reason"] is None and out["violations"] == []
    assert [n["name"] for n in out["nodes"]] == ["node-0", "node-1"]
    assert {n["freshness"] for n in out["nodes"]} == {"fresh", "cached"}
    assert out["claims"]["measurement"] == "11" * 48
    assert all(s["ok"] for s in out["steps"])
    assert out["head"]["report_pubkey"] == keys.b64(deployment.report_signer.public_key)


def test_wrong_manifest(deployment, nonce):
    other = verify_bytes(make_manifest_bytes(deployment.owner_key, model_digest="99" * 32),
                         trusted_owner=deployment.manifest.owner_fingerprint)
    r = _verify(deployment, deployment.builder(TLS).build(nonce), nonce, manifest=other)
    assert (r.ok, r.reason) == (False, "manifest_mismatch")


def test_served_manifest_swapped(deployment, nonce):
    bundle = deployment.builder(TLS).build(nonce)
    mallory = ed25519.Ed25519PrivateKey.generate()
    bundle["manifest"] = json.loads(make_manifest_bytes(mallory))
    assert _verify(deployment, bundle, nonce).reason == "manifest_mismatch"


def test_wrong_nonce(deployment, nonce):
    bundle = deployment.builder(TLS).build(secrets.token_bytes(32))   # replayed answer
    assert _verify(deployment, bundle, nonce).reason == "nonce_mismatch"


def test_nonce_field_rewritten_is_caught_by_head_inputs(deployment, nonce):
    bundle = deployment.builder(TLS).build(secrets.token_bytes(32))
    bundle["nonce"] = nonce.hex()
    assert _verify(deployment, bundle, nonce).reason == "nonce_mismatch"
    bundle["nodes"][0]["report_data_inputs"]["nonce"] = nonce.hex()   # lie about the inputs too
    assert _verify(deployment, bundle, nonce).reason == "report_data_mismatch"


def test_tls_key_swapped(deployment, nonce):
    bundle = deployment.builder(TLS).build(nonce)
    r = _verify(deployment, bundle, nonce, tls=secrets.token_bytes(32))
    assert (r.reason, r.exit_code) == ("tls_key_mismatch", 2)
    # an attacker advertising its own key everywhere still fails the binding
    mitm = secrets.token_bytes(32)
    bundle["head"]["tls_spki_sha256"] = mitm.hex()
    bundle["nodes"][0]["report_data_inputs"]["extra"]["tls_spki_sha256"] = keys.b64(mitm)
    assert _verify(deployment, bundle, nonce, tls=mitm).reason == "report_data_mismatch"


@pytest.mark.parametrize("tamper", [
    lambda b: b["head"].update(report_pubkey=keys.b64(secrets.token_bytes(32))),
    lambda b: b["nodes"][1]["report_data_inputs"].update(wg_public_key=keys.b64(secrets.token_bytes(32))),
    lambda b: b["nodes"][0]["report_data_inputs"].update(hpke_public_key=keys.b64(secrets.token_bytes(32))),
])
def test_tampered_binding_inputs(deployment, nonce, tamper):
    bundle = deployment.builder(TLS).build(nonce)
    tamper(bundle)
    r = _verify(deployment, bundle, nonce)
    assert (r.ok, r.reason) == (False, "report_data_mismatch")


def test_tampered_evidence_signature(deployment, nonce):
    bundle = deployment.builder(TLS).build(nonce)
    ev = json.loads(base64.b64decode(bundle["nodes"][1]["evidence"]))
    sig = bytearray(base64.b64decode(ev["signature"]))
    sig[0] ^= 1
    ev["signature"] = base64.b64encode(bytes(sig)).decode()
    bundle["nodes"][1]["evidence"] = base64.b64encode(
        json.dumps(ev, sort_keys=True, separators=(",", ":")).encode()).decode()
    r = _verify(deployment, bundle, nonce)
    assert r.reason == "signature_invalid"
    assert [n.ok for n in r.nodes] == [True, False]


def test_untrusted_sim_root(deployment, nonce):
    bundle = deployment.builder(TLS).build(nonce)
    r = _verify(deployment, bundle, nonce, roots=[SimulatedRoot.generate("other").certificate])
    assert r.reason == "chain_untrusted"


def test_policy_violation_collects_and_exits_4(deployment, nonce):
    bad = deployment.root.issue_attester("node-0", measurement=BAD_MEASUREMENT)
    bundle = deployment.builder(TLS, head_attester=bad).build(nonce)
    r = _verify(deployment, bundle, nonce)
    assert (r.reason, r.exit_code) == ("measurement_mismatch", 4)
    assert r.to_json()["violations"][0]["node"] == "node-0"


def test_missing_worker(deployment, nonce):
    bundle = deployment.builder(TLS, include_worker=False).build(nonce)
    assert _verify(deployment, bundle, nonce).reason == "node_missing"


def test_worker_role_or_owner_rewritten(deployment, nonce):
    bundle = deployment.builder(TLS).build(nonce)
    bundle["nodes"][1]["owner"] = "mallory"
    assert _verify(deployment, bundle, nonce).reason == "manifest_mismatch"


def test_worker_evidence_for_another_manifest(deployment, nonce):
    """Evidence bound to a different manifest digest cannot be passed off for this deployment."""
    b = deployment.builder(TLS)
    wg, hpke, n = secrets.token_bytes(32), secrets.token_bytes(32), secrets.token_bytes(32)
    ev = deployment.worker_attester.evidence(node_report_data(
        manifest_digest=b"\x07" * 32, wg_public_key=wg, hpke_public_key=hpke, nonce=n))
    b.set_peer("node-1", tee="sim", evidence=ev, wg_public_key=wg, hpke_public_key=hpke, nonce=n)
    assert _verify(deployment, b.build(nonce), nonce).reason == "report_data_mismatch"


def test_cached_age_limit(deployment, nonce):
    bundle = deployment.builder(TLS).build(nonce)
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    r = verify_bundle(json.dumps(bundle).encode(), manifest=deployment.manifest, tls_spki_sha256=TLS,
                      nonce=nonce, at=later, trusted_roots=[deployment.root.certificate],
                      max_cached_age=timedelta(hours=1))
    assert r.reason == "evidence_expired"


def test_malformed_bundle(deployment, nonce):
    r = verify_bundle(b"{not json", manifest=deployment.manifest, tls_spki_sha256=TLS, nonce=nonce,
                      at=datetime.now(timezone.utc), trusted_roots=[deployment.root.certificate])
    assert (r.reason, r.exit_code) == ("malformed", 5)
    bundle = deployment.builder(TLS).build(nonce)
    bundle["nodes"][0]["freshness"] = "stale"
    assert _verify(deployment, bundle, nonce).reason == "malformed"


def test_one_node_presented_for_two_stages(deployment, nonce):
    """A head cannot pass one worker's evidence off for a second stage."""
    stages = (STAGES[0], Stage("node-1", "bob", "worker", 15, 20), Stage("node-2", "carol", "worker", 20, 30))
    data = make_manifest_bytes(deployment.owner_key, stages=stages)
    manifest = verify_bytes(data, trusted_owner=deployment.manifest.owner_fingerprint)
    b = BundleBuilder(manifest=manifest, head_node="node-0", tee="sim",
                      attest=deployment.head_attester.evidence, wg_public_key=deployment.wg["node-0"],
                      hpke_public_key=deployment.hpke["node-0"], tls_spki_sha256=TLS,
                      report_key=deployment.report_signer.public_key)
    wg, hpke, n = deployment.wg["node-1"], deployment.hpke["node-1"], deployment.worker_nonce
    ev = deployment.worker_attester.evidence(node_report_data(
        manifest_digest=manifest.digest, wg_public_key=wg, hpke_public_key=hpke, nonce=n))
    for name in ("node-1", "node-2"):
        b.set_peer(name, tee="sim", evidence=ev, wg_public_key=wg, hpke_public_key=hpke, nonce=n)
    r = _verify(deployment, b.build(nonce), nonce, manifest=manifest)
    assert r.reason == "manifest_mismatch"
    assert r.steps[-1] == {"step": "endpoint.05.stages", "ok": False}


def test_respond_rejects_bad_nonces(deployment):
    b = deployment.builder(TLS)
    assert respond(b, None)[0] == 400
    assert respond(b, "zz")[0] == 400
    assert respond(b, "00" * 8)[0] == 400           # too short to be a real challenge
    status, body = respond(b, "00" * 32)
    assert status == 200 and body["nonce"] == "00" * 32
