"""Issue 16 hole 1: a node's stage, role and owner are proven by its owner's enrolment, not claimed.

Admission-level tests use the Verifier directly with simulated evidence of the approved image
(an impostor has genuine evidence too: only the enrolment tells it apart); agent-level tests run
real in-process agents on loopback with the owners' tool (`conclave owner enroll`'s enroll_node).
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.overlay.admission import AdmissionRejected, Verifier, node_keys_of
from conclave.overlay.prover import answer_challenge
from conclave.overlay.device import FakeDevice
from conclave.overlay.evidence import SimEvidenceSource
from conclave.overlay.identity import Announcement, NodeIdentity, Role
from conclave.overlay.nonces import NonceCache
from conclave.runtime.agent.agent import NodeAgent
from conclave.runtime.agent.config import NodeConfig, Timing
from conclave.runtime.agent.status import request
from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.cli.owner import enroll_node
from conclave.runtime.manifest import document as doc
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.manifest import enrolment

import sim_deployment
from inprocess_support import GOOD, POLICY, free_port, wait_for

OWNER_KEYS = {"alice": ed25519.Ed25519PrivateKey.generate(), "bob": ed25519.Ed25519PrivateKey.generate()}
DEPLOYER = ed25519.Ed25519PrivateKey.generate()
STAGES = [("en-h", "alice", "head"), ("en-w1", "bob", "worker"), ("en-w2", "bob", "worker")]


def make_manifest(stages=STAGES, owners=OWNER_KEYS) -> doc.VerifiedManifest:
    data = sim_deployment.sign_manifest(
        DEPLOYER, stages=[doc.Stage(node, owner, role, i, i + 1) for i, (node, owner, role) in enumerate(stages)],
        node_owners=sim_deployment.public_keys(owners), policy=POLICY,
        model_digest=hashlib.sha256(b"m").hexdigest(), engine_digest=hashlib.sha256(b"e").hexdigest(),
        rendezvous=())
    return sim_deployment.verify_manifest(data, DEPLOYER)


MANIFEST = make_manifest()


@pytest.fixture(scope="module")
def root():
    return SimulatedRoot.generate()


def node(root, name, role="worker", address="100.64.0.9"):
    ident = NodeIdentity.generate()
    ann = Announcement(node_id=name, owner="", role=Role(role), underlay_host="198.19.0.9", admission_port=51821,
                       wireguard_port=51820, wg_public_key=ident.wg_public, hpke_public_key=ident.hpke_public,
                       overlay_address=ipaddress.IPv4Address(address), statement_key=ident.statement_public)
    # the approved image on genuine (simulated) hardware: its evidence alone is admissible
    return ann, SimEvidenceSource(root.issue_attester(name, measurement=GOOD))


def enrol(ann, owner="bob", *, manifest=MANIFEST, stage=None, **kw) -> bytes:
    return enrolment.sign_enrolment(OWNER_KEYS[owner] if isinstance(owner, str) else owner, manifest=manifest,
                                    stage=stage or ann.node_id, node_keys=node_keys_of(ann), **kw)


def admit(root, ann, src, blob: bytes, *, claimed=None):
    v = Verifier(policy=MANIFEST.policy, manifest_digest=MANIFEST.digest, overlay=ipaddress.IPv4Network(
        MANIFEST.overlay_cidr), trusted_sim_roots=[root.certificate], manifest=MANIFEST)
    nonces = NonceCache()
    claimed = claimed or ann
    reply = answer_challenge(me=claimed, source=src, manifest_digest=MANIFEST.digest,
                             nonce=nonces.issue(claimed.node_id), enrolment=blob)
    return v.admit(challenged=claimed, reply=reply, nonces=nonces)


def refused(fn) -> str:
    with pytest.raises(AdmissionRejected) as err:
        fn()
    return err.value.reason


def test_enrolled_node_is_admitted_with_its_owner_proven(root):
    ann, src = node(root, "en-w1")
    peer = admit(root, ann, src, enrol(ann))
    assert peer.stage_proof.owner == "bob" and peer.stage_proof.stage == "en-w1"
    assert peer.claims_summary["owner"] == "bob" and peer.claims_summary["owner_proven"] is True


def test_impostor_taking_another_stage_is_refused(root):
    """Same image, genuine evidence, the other worker's name: nothing it can present is an enrolment
    by bob over its own keys."""
    real, _ = node(root, "en-w1")
    impostor, src = node(root, "en-w1", address="100.64.0.10")
    assert refused(lambda: admit(root, impostor, src, b"")) == "owner_not_enrolled"
    # the real node's enrolment (replayed) covers other keys
    assert refused(lambda: admit(root, impostor, src, enrol(real))) == "owner_not_enrolled"
    # enrolled by an owner of the manifest who does not own this stage
    # the owner tool itself refuses a key that is not the stage owner's
    with pytest.raises(enrolment.EnrolmentRejected) as err:
        enrol(impostor, "alice")
    assert err.value.reason == "owner_not_enrolled"


def test_enrolment_signed_by_a_key_that_is_not_the_stage_owner_is_refused(root):
    """An unenrolled owner (a key the manifest does not list for this stage) cannot enrol a node,
    even by signing the enrolment content by hand."""
    ann, src = node(root, "en-w1")
    stranger = ed25519.Ed25519PrivateKey.generate()
    other_manifest = make_manifest(owners={"alice": OWNER_KEYS["alice"], "bob": stranger})
    # a manifest where `stranger` is bob would let it sign; under the real manifest it is refused
    blob = enrol(ann, stranger, manifest=other_manifest)
    assert refused(lambda: admit(root, ann, src, blob)) == "owner_not_enrolled"
    content = dict(enrolment.strict_loads(blob)["enrolment"], manifest_digest=MANIFEST.digest.hex())
    handmade = enrolment.canonical_json({"enrolment": content, "signature": keys.b64(
        stranger.sign(enrolment.SIGNING_CONTEXT + enrolment.canonical_json(content)))})
    assert refused(lambda: admit(root, ann, src, handmade)) == "owner_not_enrolled"
    alice_signed = enrolment.canonical_json({"enrolment": content, "signature": keys.b64(
        OWNER_KEYS["alice"].sign(enrolment.SIGNING_CONTEXT + enrolment.canonical_json(content)))})
    assert refused(lambda: admit(root, ann, src, alice_signed)) == "owner_not_enrolled"


def test_impostor_claiming_the_head_role_is_refused(root):
    ann, src = node(root, "en-w1", role="head")
    assert refused(lambda: admit(root, ann, src, b"")) == "role_mismatch"


def test_node_id_that_is_no_stage_is_refused(root):
    ann, src = node(root, "en-w9")
    assert refused(lambda: admit(root, ann, src, b"")) == "stage_unknown"


def test_expired_future_tampered_and_foreign_enrolments_are_refused(root):
    ann, src = node(root, "en-w1")
    now = datetime.now(timezone.utc)
    expired = enrol(ann, issued=now - timedelta(hours=3), validity=timedelta(hours=1))
    future = enrol(ann, issued=now + timedelta(hours=1))
    other = make_manifest(stages=[("en-h", "alice", "head"), ("en-w1", "bob", "worker")])
    foreign = enrol(ann, manifest=other)
    tampered = enrol(ann).replace(b'"role":"worker"', b'"role":"head"')
    for blob in (expired, future, foreign, tampered, b"{", b"x" * 9000):
        assert refused(lambda: admit(root, ann, src, blob)) == "owner_not_enrolled"


def test_manifest_requires_owners_and_known_stage_owners():
    with pytest.raises(doc.ManifestError) as err:
        make_manifest(stages=[("en-h", "carol", "head")])
    assert err.value.reason == "malformed"
    content = dict(MANIFEST.content)
    content.pop("owners")
    with pytest.raises(doc.ManifestError) as err:
        doc.check_content(content)
    assert err.value.reason == "malformed"
    assert MANIFEST.owner_key_for("en-w2") == keys.public_key_bytes(OWNER_KEYS["bob"])


# ---------------------------------------------------------------- real agents on loopback

@pytest.fixture()
def cluster(tmp_path, root):
    rdv = free_port()
    made: list[NodeAgent] = []

    def start(name, role, *, index, skip_self_check=False):
        cfg = NodeConfig(
            node_name=name, role=role, owner="claimed-by-cli", policy=MANIFEST.policy,
            manifest_digest=MANIFEST.digest, manifest=MANIFEST,
            evidence_source=SimEvidenceSource(root.issue_attester(name, measurement=GOOD)),
            underlay_host="127.0.0.1", admission_port=free_port(), wireguard_port=51840 + index,
            overlay_address=ipaddress.IPv4Address(f"100.64.1.{10 + index}"),
            rendezvous=[f"127.0.0.1:{rdv}"], serve_rendezvous_port=rdv if not made else None,
            trusted_sim_roots=[root.certificate], status_socket=Path(tmp_path / f"{name}-{index}.sock"),
            collateral_dir=tmp_path / f"coll-{index}",
            device_factory=lambda cfg, ident, addr: FakeDevice(cfg.interface, cfg.wireguard_port),
            timing=Timing(tick=0.05, reconcile_interval=0.3, announce_interval=0.2, retry_interval=0.3,
                          reattest_interval=600))
        agent = NodeAgent(cfg)
        if skip_self_check:   # a rogue build that does not refuse its own bad claim
            agent.self_attest = lambda: None
        made.append(agent)
        agent.start()
        return agent

    try:
        yield start
    finally:
        for a in made:
            a.stop()


def _peer(agent, node_id, wg=None):
    for p in agent.status()["peers"]:
        if p["node_id"] == node_id and (wg is None or p["wg_public_key"] == wg):
            return p
    return None


def _enroll(agent, owner):
    return enroll_node(owner_key=OWNER_KEYS[owner], manifest=MANIFEST, stage=agent.cfg.node_name,
                       status_socket=agent.cfg.status_socket, trusted_sim_roots=[agent.cfg.trusted_sim_roots[0]])[1]


def test_agents_mesh_only_once_owners_enrolled_them_and_impostors_stay_out(cluster):
    head = cluster("en-h", "head", index=0)
    worker = cluster("en-w1", "worker", index=1)
    wait_for(lambda: (_peer(head, "en-w1") or {}).get("reason") == "owner_not_enrolled",
             what="the head refusing the unenrolled worker")
    answer = _enroll(head, "alice")
    assert answer["ok"] and answer["owner"] == "alice" and answer["proven"] is True
    assert _enroll(worker, "bob")["owner"] == "bob"
    wait_for(lambda: (_peer(head, "en-w1") or {}).get("state") == "meshed"
             and (_peer(worker, "en-h") or {}).get("state") == "meshed", timeout=20, what="mesh after enrolment")
    assert _peer(head, "en-w1")["owner_proven"] == "bob" and _peer(worker, "en-h")["owner_proven"] == "alice"
    assert head.status()["enrolment"]["owner"] == "alice"
    real_key = worker.identity.wg_public.to_base64()

    # an impostor: same image, genuine evidence, the worker's stage name; its own owner tool has no bob key
    impostor = cluster("en-w1", "worker", index=2)
    with pytest.raises(Exception) as err:
        _enroll(impostor, "alice")
    assert getattr(err.value, "reason", None) == "owner_not_enrolled"
    imp_key = impostor.identity.wg_public.to_base64()
    wait_for(lambda: (_peer(head, "en-w1", imp_key) or {}).get("reason") == "owner_not_enrolled",
             what="the head refusing the impostor")
    assert _peer(head, "en-w1", real_key)["state"] == "meshed"   # not `replaced`

    # a worker claiming the head role: an honest build refuses to boot, a rogue one is refused by the head
    with pytest.raises(Exception) as err:
        cluster("en-w2", "head", index=3)
    assert "role_mismatch" in str(err.value)
    cluster("en-w2", "head", index=5, skip_self_check=True)
    wait_for(lambda: (_peer(head, "en-w2") or {}).get("reason") == "role_mismatch", what="role_mismatch")


def test_enroll_command_refuses_an_enrolment_of_other_keys(cluster):
    worker = cluster("en-w2", "worker", index=4)
    other, _ = node(SimulatedRoot.generate(), "en-w2")
    import base64
    answer = request(worker.cfg.status_socket, {"cmd": "enroll", "enrolment": base64.b64encode(enrol(other)).decode()})
    assert answer == {"ok": False, "reason": "owner_not_enrolled", "error": answer["error"]}
    assert worker.status()["enrolment"] is None
    ident = request(worker.cfg.status_socket, {"cmd": "identity"})
    assert ident["node"] == "en-w2" and ident["wg_public_key"] == base64.b64encode(worker.identity.wg_public.raw).decode()


def test_owner_enroll_cli_attests_the_node_and_delivers_the_enrolment(cluster, tmp_path, capsys, root):
    """`conclave owner enroll`: the owner key file never reaches output; a key that is not the
    stage owner's is refused (owner_not_enrolled) and the node stays unenrolled."""
    import json

    from conclave.runtime.cli import main
    worker = cluster("en-w2", "worker", index=6)
    manifest_path, sim_root = tmp_path / "manifest.json", tmp_path / "sim-root.pem"
    manifest_path.write_bytes(MANIFEST.raw)
    sim_root.write_bytes(root.cert_pem)
    alice_key, bob_key = tmp_path / "alice.pem", tmp_path / "bob.pem"
    assert main(["owner", "keygen", str(alice_key), "--json"]) == 0
    capsys.readouterr()
    bob_key.write_bytes(_pem(OWNER_KEYS["bob"]))
    bob_key.chmod(0o600)
    base = ["owner", "enroll", "--manifest", str(manifest_path), "--owner-fingerprint",
            keys.fingerprint(DEPLOYER.public_key()), "--stage", "en-w2", "--status-socket",
            str(worker.cfg.status_socket), "--sim-root", str(sim_root), "--json"]
    assert main(base + ["--owner-key", str(alice_key)]) == 2
    assert json.loads(capsys.readouterr().out)["reason"] == "owner_not_enrolled"
    assert worker.status()["enrolment"] is None
    out = tmp_path / "enrolment.json"
    assert main(base + ["--owner-key", str(bob_key), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed)
    assert result["ok"] and result["owner"] == "bob" and result["delivered"] is True
    assert "PRIVATE" not in printed and bob_key.read_text() not in printed
    assert worker.status()["enrolment"]["owner"] == "bob"
    assert json.loads(out.read_bytes())["enrolment"]["stage"] == "en-w2"


def _pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_key_broker_releases_a_stage_key_only_to_the_enrolled_node(root):
    """The model owner's broker checks the same claim: without the stage owner's enrolment a node
    with genuine evidence gets nothing (owner_not_enrolled); with it, its stage's key."""
    from conclave.overlay import rpc
    from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
    from conclave.runtime.broker.service import KeyBrokerService
    from conclave.runtime.keys.broker import SecretsBroker, stage_key_name
    from conclave.runtime.keys.secret import SecretValue
    from conclave.runtime.node.stage_key import StageKeyRefused, fetch_stage_key

    verifier = Verifier(policy=MANIFEST.policy, manifest_digest=MANIFEST.digest,
                        overlay=ipaddress.IPv4Network(MANIFEST.overlay_cidr), trusted_sim_roots=[root.certificate])
    service = KeyBrokerService(manifest=MANIFEST, verifier=verifier,
                               secrets_broker=SecretsBroker({stage_key_name("en-w1"): SecretValue(b"k" * 32)}))
    server = rpc.server(workers=2)
    pb_grpc.add_KeyBrokerServicer_to_server(service, server)
    port = rpc.bind(server, "127.0.0.1", 0)
    server.start()
    try:
        ident = NodeIdentity.generate()
        ann = Announcement(node_id="en-w1", owner="", role=Role.WORKER, underlay_host="127.0.0.1",
                           admission_port=1, wireguard_port=2, wg_public_key=ident.wg_public,
                           hpke_public_key=ident.hpke_public, overlay_address=ipaddress.IPv4Address("100.64.0.9"),
                           statement_key=ident.statement_public)
        args = dict(me=ann, identity=ident, source=SimEvidenceSource(root.issue_attester("en-w1", measurement=GOOD)),
                    manifest_digest=MANIFEST.digest)
        with pytest.raises(StageKeyRefused) as err:
            fetch_stage_key(f"127.0.0.1:{port}", **args)
        assert err.value.reason == "owner_not_enrolled" and service.released == {}
        with pytest.raises(StageKeyRefused) as err:   # an enrolment by an owner who does not own the stage
            fetch_stage_key(f"127.0.0.1:{port}", enrolment=enrol(ann, OWNER_KEYS["alice"],
                                                                 manifest=make_manifest(owners={
                                                                     "alice": OWNER_KEYS["alice"],
                                                                     "bob": OWNER_KEYS["alice"]})), **args)
        assert err.value.reason == "owner_not_enrolled" and service.released == {}
        got = fetch_stage_key(f"127.0.0.1:{port}", enrolment=enrol(ann), **args)
        assert got == SecretValue(b"k" * 32) and service.released == {"en-w1": 1}
    finally:
        server.stop(0)
