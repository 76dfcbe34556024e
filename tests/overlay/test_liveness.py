"""Liveness, recovery and device healing without root: real agents on loopback (gRPC, HPKE, sim
evidence) with FakeDevices, fake Node servers standing in for a peer that answers with the
wrong key (or forges 'alive'), plus the pure pieces (reply judgement, timing validation, bind)."""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from conclave.overlay import keyrelease, rpc
from conclave.overlay.desired import AdmittedPeerConfig, desired_device
from conclave.overlay.device import FakeDevice
from conclave.overlay.evidence import SimEvidenceSource
from conclave.overlay.keys import PresharedKey, WgPrivateKey
from conclave.overlay.liveness import (TOKEN_LEN, PeerLiveness, PingOutcome, judge_reply, new_token, ping_proof,
                                       proof_matches)
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from conclave.overlay.reasons import DeviceReason
from conclave.overlay.reconcile import Reconciler
from conclave.runtime.agent.agent import NodeAgent
from conclave.runtime.agent.config import NodeConfig, Timing
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.errors import ConclaveError, UsageError

from inprocess_support import GOOD, POLICY, free_port, wait_for
from signed_manifest import write_signed_manifest

INTERVAL, TIMEOUT = 0.25, 2.0


class Mesh:
    """N in-process agents sharing a rendezvous (hosted by the first) and a simulated root."""

    def __init__(self, tmp: Path, **timing):
        self.tmp, self.root, self.rdv = tmp, SimulatedRoot.generate(), free_port()
        self.timing = {"tick": 0.05, "reconcile_interval": 0.3, "announce_interval": 0.2, "retry_interval": 0.5,
                       "reattest_interval": 600, "liveness_interval": INTERVAL, "liveness_timeout": TIMEOUT,
                       **timing}
        self.agents: list[NodeAgent] = []

    def config(self, name: str, role: str, *, port: int | None = None, first: bool = False) -> NodeConfig:
        return NodeConfig(
            node_name=name, role=role, owner="t", policy=Policy.from_dict(POLICY), manifest_digest=b"\x22" * 32,
            evidence_source=SimEvidenceSource(self.root.issue_attester(name, measurement=GOOD)),
            underlay_host="127.0.0.1", admission_port=port or free_port(), wireguard_port=51900 + len(self.agents),
            rendezvous=[f"127.0.0.1:{self.rdv}"], serve_rendezvous_port=self.rdv if first else None,
            trusted_sim_roots=[self.root.certificate], status_socket=self.tmp / f"{name}.sock", metrics_port=None,
            device_factory=lambda cfg, ident, addr: FakeDevice(cfg.interface, cfg.wireguard_port),
            timing=Timing(**self.timing))

    def start(self, name: str, role: str = "worker", *, identity=None, port: int | None = None) -> NodeAgent:
        agent = NodeAgent(self.config(name, role, port=port, first=not self.agents), identity=identity)
        agent.start()
        self.agents.append(agent)
        return agent

    def stop(self, agent: NodeAgent) -> None:
        agent.stop()
        self.agents.remove(agent)

    def close(self) -> None:
        for agent in reversed(self.agents):
            agent.stop()


def peer(agent: NodeAgent, node: str) -> dict | None:
    return next((p for p in agent.status()["peers"] if p["node_id"] == node), None)


def meshed(a: NodeAgent, b: NodeAgent) -> bool:
    """Both sides meshed with each other, on both devices, with the same PSK."""
    pa, pb_ = peer(a, b.cfg.node_name), peer(b, a.cfg.node_name)
    if not (pa and pb_ and pa["state"] == "meshed" and pb_["state"] == "meshed"):
        return False
    da, db = a._device.peers.get(b.identity.wg_public), b._device.peers.get(a.identity.wg_public)
    return bool(da and db and da.psk_fingerprint and da.psk_fingerprint == db.psk_fingerprint)


def full_mesh(agents) -> bool:
    return all(meshed(a, b) for i, a in enumerate(agents) for b in agents[i + 1:])


@pytest.fixture
def mesh(tmp_path):
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        m.close()


def _forge_server(port: int, answer_key: bytes, *, meshed: bool = True) -> grpc.Server:
    """A peer impostor on the admission port: answers Ping with `answer_key`, nothing else
    (Attest is UNIMPLEMENTED, so it can never pass re-attestation)."""
    class Impostor(pb_grpc.NodeServicer):
        def Ping(self, request, context):
            return pb.PingReply(wg_public_key=answer_key, token=request.token, meshed=meshed)

    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_NodeServicer_to_server(Impostor(), srv)
    rpc.bind(srv, "127.0.0.1", port)
    srv.start()
    return srv


# ------------------------------------------------------------------ pure pieces
def test_judge_reply_classifies_key_and_token():
    key = WgPrivateKey.generate().public_key()
    token = new_token()
    assert len(token) == TOKEN_LEN
    assert judge_reply(key, token, key.raw, token) == PingOutcome.ALIVE
    other = WgPrivateKey.generate().public_key()
    assert judge_reply(key, token, other.raw, token) == PingOutcome.IDENTITY_CHANGED
    # a reply that does not echo our token says nothing about who answers now: never evicts by itself
    assert judge_reply(key, token, other.raw, new_token()) == PingOutcome.BAD_REPLY
    assert judge_reply(key, token, key.raw, b"") == PingOutcome.BAD_REPLY
    assert judge_reply(key, token, b"\x01" * 31, token) == PingOutcome.BAD_REPLY


def test_peer_liveness_bookkeeping():
    lv = PeerLiveness(last_alive_mono=100.0)
    assert lv.due(100.0, 2.0) and not lv.overdue(110.0, 10.0) and lv.overdue(110.1, 10.0)
    lv.in_flight = True
    assert not lv.due(200.0, 2.0)
    lv.record(PingOutcome.NO_REPLY, 103.0, sent=101.0, peer_meshed=None, timed_out=True)
    assert not lv.in_flight and lv.failures == 1 and lv.reset_channel and lv.last_alive_mono == 100.0
    lv.record(PingOutcome.BAD_REPLY, 104.0, sent=103.5, peer_meshed=None)
    assert lv.failures == 2 and lv.last_alive_mono == 100.0
    lv.record(PingOutcome.ALIVE, 105.0, sent=104.9, peer_meshed=False)
    assert lv.failures == 0 and lv.last_alive_mono == 105.0 and round(lv.rtt_s, 3) == 0.1
    assert not lv.pairing_lost(105.5, 1.0) and lv.pairing_lost(106.0, 1.0)
    lv.record(PingOutcome.ALIVE, 106.5, sent=106.4, peer_meshed=True)
    assert not lv.pairing_lost(200.0, 1.0)
    lv.record(PingOutcome.IDENTITY_CHANGED, 107.0, sent=106.9, peer_meshed=True)
    assert lv.identity_changed and lv.last_alive_mono == 106.5


def test_liveness_timing_is_validated():
    assert Timing().liveness_interval == 2.0 and Timing().liveness_timeout == 10.0
    assert not Timing(liveness_interval=0).liveness_enabled
    for bad in ({"liveness_interval": 5, "liveness_timeout": 5}, {"liveness_interval": -1}):
        with pytest.raises(UsageError) as err:
            Timing(**bad)
        assert err.value.reason == "liveness_invalid"
    assert Timing(liveness_timeout=3).ping_deadline() == 1.5


def test_node_cli_liveness_flags_reach_the_timing(tmp_path):
    """`conclave node --liveness-interval S --liveness-timeout S`: a timeout not above the interval
    is refused as a usage error before anything starts (the netns test runs the valid flags)."""
    root = SimulatedRoot.generate()
    (tmp_path / "root.pem").write_bytes(root.cert_pem)
    manifest = write_signed_manifest(tmp_path / "manifest.json", stages=[("lv-h", "head"), ("lv-cli", "worker")],
                                     policy=POLICY)
    bundle = {"sim_attester": base64.b64encode(root.issue_attester("lv-cli", measurement=GOOD).to_secret_bytes()).decode()}
    cmd = [sys.executable, "-m", "conclave.runtime", "node", "--role", "worker", "--name", "lv-cli",
           *manifest.node_args(), "--underlay-host", "127.0.0.1",
           "--evidence", "sim", "--sim-root", str(tmp_path / "root.pem"), "--bundle-stdin",
           "--status-socket", str(tmp_path / "s.sock"), "--liveness-interval", "3", "--liveness-timeout", "3"]
    res = subprocess.run(cmd, input=json.dumps(bundle).encode(), capture_output=True, timeout=60,
                         env={**os.environ, "CONCLAVE_STATE_DIR": str(tmp_path)})
    assert res.returncode == 1 and b"liveness_invalid" in res.stderr, res.stderr


def test_bind_reports_a_busy_port_as_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        srv = rpc.server()
        try:
            with pytest.raises(ConclaveError) as err:
                rpc.bind(srv, "127.0.0.1", port)
            assert err.value.reason == "port_in_use"
        finally:
            srv.stop(0)

    class ReturnsZero:   # older grpcio: add_insecure_port returns 0
        def add_insecure_port(self, target):
            return 0

    class Raises:        # newer grpcio: RuntimeError("Failed to bind to address ...")
        def add_insecure_port(self, target):
            raise RuntimeError("Failed to bind to address")
    for fake in (ReturnsZero(), Raises()):
        with pytest.raises(ConclaveError) as err:
            rpc.bind(fake, "127.0.0.1", 1)
        assert err.value.reason == "port_in_use"


def test_reconciler_heals_a_dead_device_and_reapplies_every_peer():
    dev = FakeDevice("cnc-heal", 51999)
    rec = Reconciler(dev)
    keys = [WgPrivateKey.generate().public_key() for _ in range(2)]
    psks = [PresharedKey.generate() for _ in keys]
    me = WgPrivateKey.generate().public_key()
    want = desired_device(interface="cnc-heal", listen_port=51999, self_key=me,
                          self_address=ipaddress.IPv4Address("100.64.0.1"), overlay=ipaddress.IPv4Network("100.64.0.0/16"),
                          admitted=[AdmittedPeerConfig(public_key=k, overlay_address=ipaddress.IPv4Address(f"100.64.0.{i + 2}"),
                                                       endpoint=f"127.0.0.1:{52000 + i}", psk=p)
                                    for i, (k, p) in enumerate(zip(keys, psks))])
    rec.step(want)
    assert rec.heal() is None and len(dev.peers) == 2
    dev.kill(DeviceReason.SOCKET_MISSING)
    assert dev.peers == {}
    assert rec.heal() == "wireguard_socket_missing" and dev.recreations == 1 and rec.last_observed is None
    _, observed = rec.step(want)
    assert {k: p.psk_fingerprint for k, p in observed.peers.items()} == \
        {k: p.fingerprint() for k, p in zip(keys, psks)}
    assert rec.heal() is None


def test_ping_proof_binds_psk_token_and_both_keys():
    psk, token = PresharedKey.generate(), new_token()
    a, b = (WgPrivateKey.generate().public_key() for _ in range(2))
    proof = ping_proof(psk.secret_bytes(), token, a, b)
    assert len(proof) == 32 and proof_matches(psk.secret_bytes(), token, a, b, proof)
    assert not proof_matches(PresharedKey.generate().secret_bytes(), token, a, b, proof)
    assert not proof_matches(psk.secret_bytes(), new_token(), a, b, proof)
    assert not proof_matches(psk.secret_bytes(), token, b, a, proof)
    assert not proof_matches(None, token, a, b, proof) and not proof_matches(psk.secret_bytes(), token, a, b, b"")


# ------------------------------------------------------------------ agents on loopback
def test_ping_answers_own_key_echoes_token_and_says_whether_meshed(mesh):
    head, w1 = mesh.start("lv-h", "head"), mesh.start("lv-w1")
    wait_for(lambda: full_mesh([head, w1]), what="mesh")
    with rpc.channel(f"127.0.0.1:{head.cfg.admission_port}") as ch:
        stub = pb_grpc.NodeStub(ch)
        token = new_token()
        with w1._lock:
            psk = w1._admitted_by_key(head.identity.wg_public).psk
        proof = ping_proof(psk.secret_bytes(), token, w1.identity.wg_public, head.identity.wg_public)
        reply = stub.Ping(pb.PingRequest(verifier_wg_public_key=w1.identity.wg_public.raw, token=token,
                                         proof=proof), timeout=5)
        assert reply.wg_public_key == head.identity.wg_public.raw and reply.token == token and reply.meshed
        # an outsider naming w1's key (no proof, or a proof without the PSK) learns nothing
        for fake in (b"", bytes(32), ping_proof(bytes(32), token, w1.identity.wg_public, head.identity.wg_public)):
            outsider = stub.Ping(pb.PingRequest(verifier_wg_public_key=w1.identity.wg_public.raw, token=token,
                                                proof=fake), timeout=5)
            unknown = stub.Ping(pb.PingRequest(verifier_wg_public_key=WgPrivateKey.generate().public_key().raw,
                                               token=token, proof=fake), timeout=5)
            assert not outsider.meshed
            assert (outsider.wg_public_key, outsider.token, outsider.meshed) == \
                (unknown.wg_public_key, unknown.token, unknown.meshed)
        # a proof is bound to its token: replaying it with another token does not work
        assert not stub.Ping(pb.PingRequest(verifier_wg_public_key=w1.identity.wg_public.raw, token=new_token(),
                                            proof=proof), timeout=5).meshed
        stranger = WgPrivateKey.generate().public_key()
        reply = stub.Ping(pb.PingRequest(verifier_wg_public_key=stranger.raw, token=token), timeout=5)
        assert reply.wg_public_key == head.identity.wg_public.raw and not reply.meshed
        for bad in (pb.PingRequest(verifier_wg_public_key=stranger.raw, token=b"x" * 15),
                    pb.PingRequest(verifier_wg_public_key=stranger.raw, token=token, proof=b"p" * 31),
                    pb.PingRequest(verifier_wg_public_key=b"x" * 31, token=token)):
            with pytest.raises(grpc.RpcError) as err:
                stub.Ping(bad, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # liveness is running: both sides have a recent good reply
    wait_for(lambda: peer(w1, "lv-h")["ping_rtt_ms"] is not None, what="a ping round trip")
    st = w1.status()
    assert st["liveness_interval_s"] == INTERVAL and st["liveness_timeout_s"] == TIMEOUT
    assert peer(w1, "lv-h")["alive_age_s"] < TIMEOUT and peer(w1, "lv-h")["ping_failures"] == 0


def test_dead_peer_is_evicted_after_the_timeout_and_readmitted_with_the_same_keys(mesh):
    head, w1, w2 = mesh.start("lv-h", "head"), mesh.start("lv-w1"), mesh.start("lv-w2")
    wait_for(lambda: full_mesh([head, w1, w2]), what="full mesh")
    identity, port = w2.identity, w2.cfg.admission_port
    died = time.monotonic()
    mesh.stop(w2)                                   # every process of that host is gone
    wait_for(lambda: all(peer(a, "lv-w2")["state"] == "evicted" for a in (head, w1)), TIMEOUT + 5, "eviction")
    took = time.monotonic() - died
    assert TIMEOUT - INTERVAL <= took <= TIMEOUT + 3, took
    for a in (head, w1):
        p = peer(a, "lv-w2")
        assert p["reason"] == "peer_unreachable" and p["events"][-1]["event"] == "unreachable"
        assert identity.wg_public not in a._device.peers or wait_for(
            lambda: identity.wg_public not in a._device.peers, 2, "device peer removed")
        assert a.metrics.registry.get_sample_value("conclave_evictions_total", {"reason": "peer_unreachable"}) == 1
    assert full_mesh([head, w1])                     # the survivors are untouched
    # the host comes back with the same identity keys: re-admitted, re-keyed, meshed; no operator
    w2 = mesh.start("lv-w2", identity=identity, port=port)
    wait_for(lambda: full_mesh([head, w1, w2]), 20, "re-mesh after the host came back")
    for a in (head, w1):
        events = [e["event"] for e in peer(a, "lv-w2")["events"]]
        assert events.index("unreachable") < len(events) - 1 - events[::-1].index("admitted")


def test_reply_from_another_key_evicts_at_once(mesh):
    mesh.timing["liveness_timeout"] = 30.0           # eviction must not come from the timeout
    head, w1 = mesh.start("lv-h", "head"), mesh.start("lv-w1")
    wait_for(lambda: full_mesh([head, w1]), what="mesh")
    port = w1.cfg.admission_port
    mesh.stop(w1)
    impostor = _forge_server(port, WgPrivateKey.generate().public_key().raw)
    try:
        started = time.monotonic()
        wait_for(lambda: peer(head, "lv-w1")["state"] == "evicted", 5, "identity_changed eviction")
        assert time.monotonic() - started < 5
        p = peer(head, "lv-w1")
        assert p["reason"] == "identity_changed" and p["events"][-1]["event"] == "identity_changed"
        assert head.metrics.registry.get_sample_value("conclave_evictions_total", {"reason": "identity_changed"}) == 1
    finally:
        impostor.stop(0)


def test_forged_alive_replies_never_outlast_evidence_expiry(mesh):
    """Liveness only ever evicts: an impostor answering pings with the admitted key keeps the
    peer listed at most until its evidence expires (re-attestation still has the last word)."""
    mesh.timing.update(reattest_interval=1.0, max_evidence_age=6.0, liveness_timeout=2.0)
    head, w1 = mesh.start("lv-h", "head"), mesh.start("lv-w1")
    wait_for(lambda: full_mesh([head, w1]), what="mesh")
    port, key = w1.cfg.admission_port, w1.identity.wg_public.raw
    mesh.stop(w1)
    impostor = _forge_server(port, key)
    try:
        stopped = time.monotonic()
        time.sleep(2.0 + 1.0)                          # past the liveness timeout: the forgery holds it
        p = peer(head, "lv-w1")
        assert p["state"] == "meshed" and p["alive_age_s"] < 2.0 and p["evidence_age_s"] > 2.0
        wait_for(lambda: peer(head, "lv-w1")["state"] == "evicted", 6, "evidence expiry")
        assert peer(head, "lv-w1")["reason"] == "evidence_expired"
        assert time.monotonic() - stopped <= 6.0 + 2.0
        assert all(p["node_id"] != "lv-w1" or p["state"] == "evicted" for p in head.status()["peers"])
    finally:
        impostor.stop(0)


@pytest.mark.parametrize("evictor", ["leader", "follower"])
def test_one_sided_eviction_heals_by_itself(mesh, evictor):
    """Only one side evicted the other (its policy briefly refused it): once it re-admits the peer,
    the pair re-keys and meshes again without waiting for the next scheduled re-attestation."""
    head, w1 = mesh.start("lv-h", "head"), mesh.start("lv-w1")
    wait_for(lambda: full_mesh([head, w1]), what="mesh")
    leader = head if keyrelease.is_leader(head.identity.wg_public, w1.identity.wg_public) else w1
    follower = w1 if leader is head else head
    a, b = (leader, follower) if evictor == "leader" else (follower, leader)
    before = a._device.peers[b.identity.wg_public].psk_fingerprint
    good = a.verifier.policy
    a.verifier.policy = Policy.from_dict({**POLICY, "sim": {"measurement": ["ee" * 48]}})
    a.reattest_now()
    wait_for(lambda: peer(a, b.cfg.node_name)["state"] == "evicted", 5, "one-sided eviction")
    assert peer(b, a.cfg.node_name)["state"] == "meshed"     # b never noticed anything wrong
    a.verifier.policy = good
    wait_for(lambda: full_mesh([head, w1]), 15, "re-keyed mesh")
    assert a._device.peers[b.identity.wg_public].psk_fingerprint != before
    if evictor == "leader":   # the follower learnt from the leader's pings that the pairing was gone
        assert any(e["event"] == "pairing_check" for e in peer(b, a.cfg.node_name)["events"])


def test_dead_wireguard_device_is_recreated_and_peers_reapplied_without_readmission(mesh):
    head, w1, w2 = mesh.start("lv-h", "head"), mesh.start("lv-w1"), mesh.start("lv-w2")
    wait_for(lambda: full_mesh([head, w1, w2]), what="full mesh")
    before = {k: p.psk_fingerprint for k, p in w1._device.peers.items()}
    admitted_events = {n: sum(e["event"] == "admitted" for e in peer(w1, n)["events"]) for n in ("lv-h", "lv-w2")}
    w1._device.kill(DeviceReason.DAEMON_EXITED)
    wait_for(lambda: w1.status()["device_restarts"] == 1, 5, "device restart")
    wait_for(lambda: {k: p.psk_fingerprint for k, p in w1._device.peers.items()} == before, 5, "peers re-applied")
    st = w1.status()
    assert st["device_restart_reason"] == "wireguard_daemon_exited" and st["reconcile_error"] is None
    assert w1._device.recreations == 1
    assert full_mesh([head, w1, w2])
    assert {n: sum(e["event"] == "admitted" for e in peer(w1, n)["events"]) for n in ("lv-h", "lv-w2")} \
        == admitted_events
    assert w1.metrics.registry.get_sample_value("conclave_wireguard_device_restarts_total",
                                                {"reason": "wireguard_daemon_exited"}) == 1
