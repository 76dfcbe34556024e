"""Issue 16 hole 5 in-process: a forged PSK and a forged secret offered to a worker are refused.

An attacker on the plaintext gRPC path between a worker and the head replaces the head's replies
with values of its choice, sealed correctly to the worker's public HPKE key under the right context
(everything needed is public), but it cannot sign them with the head's statement key (bound into
the evidence the worker admitted). The worker refuses them (psk_not_authenticated,
secret_not_authenticated), never configures a tunnel with a forged PSK, never hands a forged
token to Ray, and once the path is clean takes the real ones.
"""
from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.overlay import keyrelease
from conclave.overlay.device import FakeDevice
from conclave.overlay.evidence import SimEvidenceSource
from conclave.overlay.identity import NodeIdentity, Role
from conclave.overlay.keys import WgPublicKey
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.runtime.agent.agent import NodeAgent
from conclave.runtime.agent.config import NodeConfig, Timing
from conclave.runtime.agent.peers import PeerRecord
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.keys.broker import secret_info, sign_secret
from conclave.runtime.keys.hpke import seal
from conclave.runtime.keys.secret import SecretValue
from conclave.runtime.keys.sender_auth import sign_release

from inprocess_support import GOOD, POLICY, free_port, wait_for

REAL_TOKEN = SecretValue(b"r" * 32)
FORGED_TOKEN = b"attacker-chosen-ray-token-000000"


class OnPathAttacker:
    """Rewrites the worker's ReleaseKey / GetSecret replies while its switches are on. Forgeries
    alternate between unsigned and signed by the attacker's own Ed25519 key."""

    def __init__(self, victim: NodeIdentity):
        self.victim = victim
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.forge_psk = True
        self.forge_secret = True
        self.forged_psks = 0
        self.forged_secrets = 0
        self._lock = threading.Lock()

    def _signature(self, n: int, sign) -> bytes:
        return b"" if n % 2 else sign()

    def release_key(self, real, request, **kw):
        reply = real(request, **kw)
        if not self.forge_psk or reply.status != pb.OK:
            return reply
        leader = WgPublicKey(bytes(request.leader_wg_public_key))
        follower = WgPublicKey(bytes(request.requester_wg_public_key))
        info = keyrelease.psk_info(leader, follower)
        sealed = seal(self.victim.hpke_public, b"\x42" * 32, info=info)
        with self._lock:
            self.forged_psks += 1
            n = self.forged_psks
        return pb.KeyReleaseReply(status=pb.OK, sealed_psk=sealed, sender_signature=self._signature(
            n, lambda: sign_release(self.key, info=info, sealed=sealed)))

    def get_secret(self, real, head_wg: bytes, request, **kw):
        reply = real(request, **kw)
        if not self.forge_secret or reply.status != pb.OK:
            return reply
        sealed = seal(self.victim.hpke_public, FORGED_TOKEN,
                      info=secret_info(request.name, head_wg, bytes(request.requester_wg_public_key)))
        with self._lock:
            self.forged_secrets += 1
            n = self.forged_secrets
        return pb.SecretReply(status=pb.OK, sealed_secret=sealed, sender_signature=self._signature(
            n, lambda: sign_secret(self.key, sealed, name=request.name, broker_wg=head_wg,
                                   requester_wg=bytes(request.requester_wg_public_key))))


class _Intercepted:
    """A NodeStub whose ReleaseKey and GetSecret go through the attacker; the rest is untouched."""

    def __init__(self, stub, attacker: OnPathAttacker, head_wg: bytes):
        self._stub, self._attacker, self._head_wg = stub, attacker, head_wg

    def __getattr__(self, name):
        return getattr(self._stub, name)

    def ReleaseKey(self, request, **kw):
        return self._attacker.release_key(self._stub.ReleaseKey, request, **kw)

    def GetSecret(self, request, **kw):
        return self._attacker.get_secret(self._stub.GetSecret, self._head_wg, request, **kw)


def _identities() -> tuple[NodeIdentity, NodeIdentity]:
    """(head, worker) with the worker as the pair's follower: it pulls the PSK from the head."""
    while True:
        head, worker = NodeIdentity.generate(), NodeIdentity.generate()
        if keyrelease.is_leader(head.wg_public, worker.wg_public):
            return head, worker


def _config(tmp: Path, root: SimulatedRoot, name: str, role: str, rdv: int, *, serve: bool) -> NodeConfig:
    return NodeConfig(
        node_name=name, role=role, owner="t", policy=Policy.from_dict(POLICY), manifest_digest=b"\x12" * 32,
        evidence_source=SimEvidenceSource(root.issue_attester(name, measurement=GOOD)),
        underlay_host="127.0.0.1", admission_port=free_port(), wireguard_port=51840 + (0 if serve else 1),
        rendezvous=[f"127.0.0.1:{rdv}"], serve_rendezvous_port=rdv if serve else None,
        trusted_sim_roots=[root.certificate], status_socket=tmp / f"{name}.sock",
        secrets={"ray_token": REAL_TOKEN} if role == "head" else {},
        want_secrets=["ray_token"] if role == "worker" else [],
        device_factory=lambda cfg, ident, addr: FakeDevice(cfg.interface, cfg.wireguard_port),
        timing=Timing(tick=0.05, reconcile_interval=0.3, announce_interval=0.2, retry_interval=0.5,
                      reattest_interval=600))


def _head_record(worker: NodeAgent, head: NodeAgent) -> PeerRecord | None:
    with worker._lock:
        return next((r for r in worker.peers.values() if r.key == head.identity.wg_public), None)


def test_forged_psk_and_forged_secret_are_refused_real_ones_work(tmp_path):
    root = SimulatedRoot.generate()
    rdv = free_port()
    head_id, worker_id = _identities()
    head = NodeAgent(_config(tmp_path, root, "sa-head", "head", rdv, serve=True), identity=head_id)
    worker = NodeAgent(_config(tmp_path, root, "sa-worker", "worker", rdv, serve=False), identity=worker_id)
    attacker = OnPathAttacker(worker_id)
    real_stub = worker._stub
    worker._stub = lambda target: _Intercepted(real_stub(target), attacker, head_id.wg_public.raw)
    try:
        head.start()
        worker.start()
        # 1. forged PSKs (unsigned, and signed by another key) are refused before opening: no tunnel
        wait_for(lambda: attacker.forged_psks >= 4, what="several forged PSKs offered")
        rec = _head_record(worker, head)
        assert rec is not None and rec.state != "meshed" and rec.psk is None
        assert ("key_release_failed", "psk_not_authenticated") in [(e, r) for _, e, r in rec.events]
        assert worker._device.peers == {} and head._device.peers == {}
        # 2. the real PSK (signed by the head's attested statement key) meshes the pair
        attacker.forge_psk = False
        wait_for(lambda: worker_id.wg_public in head._device.peers and head_id.wg_public in worker._device.peers,
                 what="mesh with the real PSK")
        assert (head._device.peers[worker_id.wg_public].psk_fingerprint
                == worker._device.peers[head_id.wg_public].psk_fingerprint)
        # 3. forged ray tokens are refused, and the worker keeps asking
        wait_for(lambda: attacker.forged_secrets >= 4, what="several forged secrets offered")
        assert worker.secret_errors.get("ray_token") == "secret_not_authenticated"
        assert "ray_token" not in worker.received_secrets and worker.ray_token() is None
        # 4. the real token is taken once the path is clean
        attacker.forge_secret = False
        wait_for(lambda: "ray_token" in worker.received_secrets, what="the real ray token")
        assert worker.received_secrets["ray_token"][0] == REAL_TOKEN
        assert worker.ray_token() == REAL_TOKEN.reveal() and "ray_token" not in worker.secret_errors
    finally:
        worker.stop()
        head.stop()


def test_secrets_come_only_from_the_manifests_head(tmp_path):
    root = SimulatedRoot.generate()
    worker = NodeAgent(_config(tmp_path, root, "sa-w2", "worker", free_port(), serve=False))
    head_id = NodeIdentity.generate()

    def record(node_id: str, role: Role) -> PeerRecord:
        from conclave.overlay.identity import Announcement
        return PeerRecord(announcement=Announcement(
            node_id=node_id, owner="t", role=role, underlay_host="127.0.0.1", admission_port=1, wireguard_port=2,
            wg_public_key=head_id.wg_public, hpke_public_key=head_id.hpke_public,
            overlay_address=worker.cfg.overlay_address, statement_key=head_id.statement_public))

    worker.cfg.manifest = SimpleNamespace(head=SimpleNamespace(node="node-0"))
    assert worker._wants_secrets_from(record("node-0", Role.HEAD))
    assert not worker._wants_secrets_from(record("node-1", Role.HEAD))    # claims head, is not the manifest's
    assert not worker._wants_secrets_from(record("node-0", Role.WORKER))
    worker.cfg.manifest = None                                            # bare agent: any admitted head
    assert worker._wants_secrets_from(record("node-1", Role.HEAD))


@pytest.mark.parametrize("admitted", [False, True])
def test_no_admitted_statement_key_means_nothing_is_accepted(tmp_path, admitted):
    """A peer not (or no longer) admitted, or admitted without a statement key, authenticates nothing."""
    from conclave.overlay.admission import AdmittedPeer
    from conclave.overlay.identity import Announcement
    from conclave.runtime.attestation.core import TeeType
    from datetime import datetime, timezone
    root = SimulatedRoot.generate()
    worker = NodeAgent(_config(tmp_path, root, "sa-w3", "worker", free_port(), serve=False))
    ident = NodeIdentity.generate()
    ann = Announcement(node_id="h", owner="t", role=Role.HEAD, underlay_host="127.0.0.1", admission_port=1,
                       wireguard_port=2, wg_public_key=ident.wg_public, hpke_public_key=ident.hpke_public,
                       overlay_address=worker.cfg.overlay_address, statement_key=ident.statement_public)
    rec = PeerRecord(announcement=ann)
    if admitted:   # admitted from evidence that bound no statement key
        import dataclasses
        rec.admitted = AdmittedPeer(announcement=dataclasses.replace(ann, statement_key=b""), tee=TeeType.SIM,
                                    simulated=True, verified_at=datetime.now(timezone.utc))
    assert worker._admitted_statement_key(rec) == b""
