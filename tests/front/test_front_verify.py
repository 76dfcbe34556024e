"""`conclave verify` (the real CLI, in a subprocess) against the head's front server."""
from __future__ import annotations

import base64
import ipaddress
import secrets
from types import SimpleNamespace

from conclave.overlay.prover import answer_challenge
from conclave.overlay.evidence import SimEvidenceSource
from conclave.overlay.identity import Announcement, NodeIdentity
from conclave.runtime.endpoint.bundle import BundleBuilder
from conclave.runtime.endpoint.client import verify_endpoint
from conclave.runtime.endpoint.tls import generate_head_identity
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.manifest.enrolment import NodeKeys, sign_enrolment
from conclave.runtime.serving.front import head_front_for_agent

from front_support import (MEASUREMENT, NODE_OWNER_KEYS, OTHER_MEASUREMENT, make_manifest_bytes,
                           model_manifest, run_cli)


def _verify(url, man, root, *extra, owner_fingerprint: str | None = None):
    """The real `conclave verify --json`; pass the owner pin (or another pin flag in `extra`)."""
    pin = ("--owner-fingerprint", owner_fingerprint) if owner_fingerprint else ()
    return run_cli("verify", url, "--manifest", str(man), "--sim-root", str(root), "--timeout", "10",
                   "--json", *pin, *extra)


def test_verify_cli_accepts_the_front(make_front, files, deployment):
    front = make_front()
    man, root = files
    rc, out, err = _verify(front.url, man, root, "--owner-fingerprint", deployment.manifest.owner_fingerprint)
    assert rc == 0, (out, err)
    assert out["ok"] is True and out["reason"] is None and out["tee"] == "sim"
    assert out["tls"]["spki_sha256"] == front.identity.spki_sha256.hex()
    nodes = {n["name"]: n for n in out["nodes"]}
    assert nodes["node-0"]["freshness"] == "fresh" and nodes["node-1"]["freshness"] == "cached"
    assert all(n["ok"] and n["simulated"] for n in nodes.values())
    assert out["head"]["report_pubkey"] == keys.b64(front.report.public_key)


def test_verify_cli_rejects_a_wrong_manifest(make_front, files, deployment, tmp_path):
    front = make_front()
    _, root = files
    other = tmp_path / "other-manifest.json"
    other.write_bytes(make_manifest_bytes(deployment.owner_key, model_digest="99" * 32))
    rc, out, _ = _verify(front.url, other, root, owner_fingerprint=deployment.manifest.owner_fingerprint)
    assert (rc, out["ok"], out["reason"]) == (2, False, "manifest_mismatch")


class _TamperingBuilder(BundleBuilder):
    """Plays a compromised transport: rewrites the worker's bound overlay address in the bundle."""

    def build(self, nonce, **kw):
        bundle = super().build(nonce, **kw)
        for node in bundle["nodes"]:
            if node["name"] == "node-1":
                node["report_data_inputs"]["extra"]["overlay_address"] = base64.b64encode(b"100.64.0.99").decode()
        return bundle


class _EvidenceSwapBuilder(BundleBuilder):
    """Serves a different, validly signed head evidence (for another nonce) in place of the fresh one."""

    def build(self, nonce, **kw):
        stale = super().build(secrets.token_bytes(32), **kw)
        bundle = super().build(nonce, **kw)
        bundle["nodes"][0]["evidence"] = stale["nodes"][0]["evidence"]
        return bundle


def test_verify_cli_rejects_a_tampered_bundle(make_front, files, deployment):
    front = make_front(builder_cls=_TamperingBuilder)
    man, root = files
    rc, out, _ = _verify(front.url, man, root, owner_fingerprint=deployment.manifest.owner_fingerprint)
    assert (rc, out["reason"]) == (2, "report_data_mismatch")
    bad = next(n for n in out["nodes"] if n["name"] == "node-1")
    assert bad["ok"] is False and bad["reason"] == "report_data_mismatch"


def test_swapped_head_evidence_is_rejected(make_front, deployment):
    front = make_front(builder_cls=_EvidenceSwapBuilder)
    v = verify_endpoint(front.url, manifest=deployment.manifest, trusted_roots=[deployment.root.certificate],
                        timeout=10)
    assert not v.ok and v.result.reason == "report_data_mismatch"


def test_verify_cli_rejects_a_swapped_tls_key(make_front, files, deployment):
    """A second front with its own TLS key replaying the first one's evidence binding."""
    genuine = make_front()
    impostor = make_front(identity=generate_head_identity(["127.0.0.1"]),
                          bind_spki=genuine.identity.spki_sha256)
    man, root = files
    rc, out, _ = _verify(impostor.url, man, root, owner_fingerprint=deployment.manifest.owner_fingerprint)
    assert (rc, out["reason"]) == (2, "tls_key_mismatch")
    assert out["tls"]["spki_sha256"] == impostor.identity.spki_sha256.hex()


def test_bad_head_measurement_is_a_policy_failure(make_front, deployment, monkeypatch):
    bad = deployment.root.issue_attester("node-0", measurement=OTHER_MEASUREMENT)
    monkeypatch.setattr(deployment, "head_attester", bad)
    front = make_front()
    v = verify_endpoint(front.url, manifest=deployment.manifest, trusted_roots=[deployment.root.certificate],
                        timeout=10)
    assert not v.ok and v.result.reason == "measurement_mismatch" and v.result.exit_code == 4


def test_evicted_worker_makes_clients_refuse(make_front, deployment):
    front = make_front()
    roots = [deployment.root.certificate]
    assert verify_endpoint(front.url, manifest=deployment.manifest, trusted_roots=roots, timeout=10).ok
    front.on_peer_evicted("node-1", "evidence_expired")
    v = verify_endpoint(front.url, manifest=deployment.manifest, trusted_roots=roots, timeout=10)
    assert not v.ok and v.result.reason == "node_missing"
    front.on_peer_admitted(**deployment.worker_admission())       # re-admitted with fresh evidence
    assert verify_endpoint(front.url, manifest=deployment.manifest, trusted_roots=roots, timeout=10).ok
    events = [(e.node, e.result, e.reason) for e in front.report.events()]
    assert events == [("node-1", "evicted", "evidence_expired"), ("node-1", "ok", None)]


def test_head_front_for_agent_wires_a_real_admission(deployment, vllm, files, tmp_path):
    """The glue the head's agent uses: its evidence source, keys and owner enrolment, and the
    admission hook fed with a real overlay AttestReply (answer_challenge, with the worker owner's
    enrolment) as NodeAgent._attest_peer passes it."""
    head_identity, worker_identity = NodeIdentity.generate(), NodeIdentity.generate()

    def enrol(stage: str, owner: str, identity: NodeIdentity) -> bytes:
        return sign_enrolment(NODE_OWNER_KEYS[owner], manifest=deployment.manifest, stage=stage,
                              node_keys=NodeKeys(identity.wg_public.raw, identity.hpke_public.raw,
                                                 identity.statement_public))
    agent = SimpleNamespace(
        cfg=SimpleNamespace(node_name="node-0", manifest_digest=deployment.manifest.digest,
                            evidence_source=SimEvidenceSource(deployment.head_attester)),
        identity=head_identity, admission_hooks=[], enrolment=enrol("node-0", "alice", head_identity))
    front = head_front_for_agent(agent, manifest=deployment.manifest, upstream=f"http://{vllm.address}",
                                 listen_host="127.0.0.1", listen_port=0, tls_names=["127.0.0.1"],
                                 model_manifest=deployment.model_manifest)
    assert agent.admission_hooks and repr(front).count("redacted") == 1
    hook = agent.admission_hooks[0]
    ann = Announcement(node_id="node-1", owner="bob", role="worker", underlay_host="198.18.0.3",
                       admission_port=51821, wireguard_port=51820, wg_public_key=worker_identity.wg_public,
                       hpke_public_key=worker_identity.hpke_public,
                       overlay_address=ipaddress.IPv4Address("100.64.0.3"),
                       statement_key=worker_identity.statement_public)
    nonce = secrets.token_bytes(32)
    reply = answer_challenge(me=ann, source=SimEvidenceSource(deployment.worker_attester),
                             manifest_digest=deployment.manifest.digest, nonce=nonce,
                             enrolment=enrol("node-1", "bob", worker_identity))
    front.start_in_thread()
    try:
        roots = [deployment.root.certificate]
        v = verify_endpoint(front.url, manifest=deployment.manifest, trusted_roots=roots, timeout=10)
        assert not v.ok and v.result.reason == "node_missing"     # worker not admitted yet
        hook.on_admitted(ann, reply, nonce)
        v = verify_endpoint(front.url, manifest=deployment.manifest, trusted_roots=roots, timeout=10)
        assert v.ok, v.to_json()
        worker = next(n for n in v.result.nodes if n.name == "node-1")
        assert worker.claims["measurement"] == MEASUREMENT.hex()
        assert [(n.name, n.owner_proof["owner"]) for n in v.result.nodes] == [("node-0", "alice"), ("node-1", "bob")]
        stages = front.report.snapshot().stages
        assert stages[1].node == "node-1" and all(s.owner_proof is not None for s in stages)
        hook.on_evicted("node-1", reason="reattestation_failed")
        v = verify_endpoint(front.url, manifest=deployment.manifest, trusted_roots=roots, timeout=10)
        assert not v.ok and v.result.reason == "node_missing"
        hook.on_evicted("not-a-stage")                              # ignored, no error
    finally:
        front.stop_thread()


def test_head_front_for_agent_refuses_a_non_head(deployment):
    agent = SimpleNamespace(cfg=SimpleNamespace(node_name="node-1", manifest_digest=deployment.manifest.digest,
                                                evidence_source=None),
                            identity=NodeIdentity.generate(), admission_hooks=[])
    try:
        head_front_for_agent(agent, manifest=deployment.manifest, upstream="127.0.0.1:9", listen_host="127.0.0.1",
                             listen_port=0, tls_names=["127.0.0.1"], model_manifest=model_manifest())
    except ValueError as exc:
        assert "head stage" in str(exc)
    else:
        raise AssertionError("a worker must not get a head front")
    assert agent.admission_hooks == []
