"""Three real node agents in one process on loopback (gRPC, HPKE, sim evidence) with FakeDevices:
the full join, key release, secrets, eviction and malformed RPCs, without root."""
from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from conclave.overlay import keyrelease, rpc
from conclave.overlay.device import FakeDevice
from conclave.overlay.evidence import SimEvidenceSource
from conclave.overlay.keys import WgPrivateKey
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from conclave.runtime.agent.agent import NodeAgent
from conclave.runtime.agent.config import NodeConfig, Timing
from conclave.runtime.agent.status import query
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.keys.secret import SecretValue

from inprocess_support import GOOD, POLICY, free_port, wait_for


@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agents")
    root = SimulatedRoot.generate()
    rdv = free_port()
    made: list[NodeAgent] = []
    try:
        for i, role in enumerate(("head", "worker", "worker")):
            name = f"ip-n{i}"
            cfg = NodeConfig(
                node_name=name, role=role, owner="t", policy=Policy.from_dict(POLICY), manifest_digest=b"\x11" * 32,
                evidence_source=SimEvidenceSource(root.issue_attester(name, measurement=GOOD)),
                underlay_host="127.0.0.1", admission_port=free_port(), wireguard_port=51820 + i,
                rendezvous=[f"127.0.0.1:{rdv}"], serve_rendezvous_port=rdv if i == 0 else None,
                trusted_sim_roots=[root.certificate], status_socket=Path(tmp / f"{name}.sock"),
                secrets={"ray_token": SecretValue(b"r" * 32), "model_key": SecretValue(b"m" * 32)} if i == 0 else {},
                allowed_roles={"ray_token": frozenset({"head", "worker"}), "model_key": frozenset({"head"})},
                want_secrets=["ray_token", "model_key"] if role == "worker" else [],
                device_factory=lambda cfg, ident, addr: FakeDevice(cfg.interface, cfg.wireguard_port),
                timing=Timing(tick=0.05, reconcile_interval=0.3, announce_interval=0.2, retry_interval=0.5,
                              reattest_interval=600))
            agent = NodeAgent(cfg)
            agent.start()
            made.append(agent)
        made[0].test_root, made[0].test_rdv = root, rdv
        wait_for(lambda: all(len(a.status()["device_peers"]) == 2 for a in made), what="full mesh")
        yield made
    finally:
        for a in made:
            a.stop()


def test_full_mesh_with_psks_agreed_pairwise(agents):
    for a in agents:
        st = a.status()
        assert st["state"] == "meshed"
        assert all(p["state"] == "meshed" and p["admitted_by_us"] and p["admitted_us"] for p in st["peers"])
    # both ends of every pair configured the same PSK (fingerprints on the fake devices)
    for a in agents:
        for b in agents:
            if a is b:
                continue
            fa = a._device.peers[b.identity.wg_public].psk_fingerprint
            fb = b._device.peers[a.identity.wg_public].psk_fingerprint
            assert fa == fb
            assert a._device.peers[b.identity.wg_public].allowed_ips == (f"{b.cfg.overlay_address}/32",)


def test_secrets_by_role(agents):
    head, w1, w2 = agents
    wait_for(lambda: "ray_token" in w1.received_secrets and "ray_token" in w2.received_secrets, what="secrets")
    assert w1.received_secrets["ray_token"][0] == SecretValue(b"r" * 32)
    assert "model_key" not in w1.received_secrets and w1.secret_errors["model_key"] == "role_not_allowed"


def test_agent_records_conclave_metrics(agents):
    """Each agent records into its own runtime.metrics.ConclaveMetrics (served on the overlay address)."""
    head, w1, w2 = agents
    wait_for(lambda: "ray_token" in w1.received_secrets and "ray_token" in w2.received_secrets, what="secrets")
    names = {a.cfg.node_name for a in agents}
    for a in agents:
        reg = a.metrics.registry
        peers = names - {a.cfg.node_name}
        wait_for(lambda: all(reg.get_sample_value("conclave_wireguard_rx_bytes", {"peer": p}) is not None
                             for p in peers), what="wireguard series after a reconcile")
        assert reg.get_sample_value("conclave_admissions_total", {"result": "admitted", "reason": "ok"}) >= 2
        assert reg.get_sample_value("conclave_peers_admitted") == 2
        assert reg.get_sample_value("conclave_verification_seconds_count", {"tee": "sim"}) >= 2
        for p in peers:
            age = reg.get_sample_value("conclave_peer_evidence_age_seconds", {"peer": p})
            assert age is not None and 0 <= age < 600
    assert head.metrics.registry.get_sample_value("conclave_secrets_released_total", {"name": "ray_token"}) == 2
    assert head.metrics.registry.get_sample_value("conclave_secrets_released_total", {"name": "model_key"}) is None


def test_status_socket_is_private_and_answers(agents):
    path = agents[0].cfg.status_socket
    assert (path.stat().st_mode & 0o777) == 0o600
    st = query(path)
    assert st["node"] == "ip-n0" and len(st["peers"]) == 2
    assert query(path, "bogus")["reason"] == "unknown_command"


def _stub(agent) -> pb_grpc.NodeStub:
    return pb_grpc.NodeStub(rpc.channel(f"127.0.0.1:{agent.cfg.admission_port}"))


def test_malformed_and_oversized_rpcs_are_refused_without_harm(agents):
    head = agents[0]
    stub = _stub(head)
    with pytest.raises(grpc.RpcError) as err:
        stub.Attest(pb.AttestRequest(nonce=b"\x00" * (rpc.MAX_REQUEST_BYTES + 1)), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as err:
        stub.Attest(pb.AttestRequest(nonce=b"\x00" * 31), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.ReleaseKey(pb.KeyReleaseRequest(requester_wg_public_key=b"x" * 3), timeout=5).status == pb.MALFORMED
    assert stub.GetSecret(pb.SecretRequest(requester_wg_public_key=b"x" * 32, name="../etc"), timeout=5).status \
        == pb.MALFORMED
    # raw garbage that does not parse as the request message
    ch = rpc.channel(f"127.0.0.1:{head.cfg.admission_port}")
    raw = ch.unary_unary("/conclave.v1.Node/ReleaseKey", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError):
        raw(b"\xff\xff\xff\xff\x0f", timeout=5)
    # a stranger gets nothing; a forged confirmation from an admitted key is refused
    stranger = WgPrivateKey.generate().public_key()
    reply = stub.ReleaseKey(pb.KeyReleaseRequest(requester_wg_public_key=stranger.raw,
                                                 leader_wg_public_key=head.identity.wg_public.raw), timeout=5)
    assert reply.status in (pb.NOT_ADMITTED, pb.REFUSED) and not reply.sealed_psk
    for other in agents[1:]:
        if keyrelease.is_leader(head.identity.wg_public, other.identity.wg_public):
            conf = stub.ConfirmKey(pb.KeyConfirmRequest(requester_wg_public_key=other.identity.wg_public.raw,
                                                        leader_wg_public_key=head.identity.wg_public.raw,
                                                        confirmation=b"\x00" * 32), timeout=5)
            assert conf.status == pb.REFUSED and conf.reason == "key_confirmation_failed"
    # nothing changed
    assert len(head.status()["device_peers"]) == 2 and head.status()["state"] == "meshed"


def test_one_sided_admission_never_configures_a_tunnel(agents, tmp_path):
    head = agents[0]
    cfg = NodeConfig(
        node_name="ip-picky", role="worker", owner="t", manifest_digest=b"\x11" * 32,
        # this node's policy accepts only itself (its own measurement), so it admits no one,
        # while everyone else admits it
        policy=Policy.from_dict({**POLICY, "sim": {"measurement": [GOOD.hex(), "ee" * 48]}}),
        evidence_source=SimEvidenceSource(head.test_root.issue_attester("ip-picky", measurement=GOOD)),
        underlay_host="127.0.0.1", admission_port=free_port(), wireguard_port=51829,
        rendezvous=[f"127.0.0.1:{head.test_rdv}"], trusted_sim_roots=[head.test_root.certificate],
        status_socket=tmp_path / "picky.sock",
        device_factory=lambda cfg, ident, addr: FakeDevice(cfg.interface, cfg.wireguard_port),
        timing=Timing(tick=0.05, reconcile_interval=0.3, announce_interval=0.2, retry_interval=0.5))
    picky = NodeAgent(cfg)
    picky.start()
    try:
        picky.verifier.policy = Policy.from_dict({**POLICY, "sim": {"measurement": ["ee" * 48]}})
        wait_for(lambda: all(any(p["node_id"] == "ip-picky" and p["state"] == "admitted" for p in a.status()["peers"])
                             for a in agents[:2]), what="others admit the picky node")
        wait_for(lambda: len(picky.status()["peers"]) >= 2 and
                 all(p["state"] == "rejected" for p in picky.status()["peers"]), what="picky rejects them")
        time.sleep(1.0)  # several ticks and reconciles
        for a in agents[:2]:
            p = next(p for p in a.status()["peers"] if p["node_id"] == "ip-picky")
            assert p["admitted_by_us"] and not p["admitted_us"] and not p["on_device"]
            assert picky.identity.wg_public not in a._device.peers
        assert picky._device.peers == {}
    finally:
        picky.stop()


def test_policy_change_evicts_on_reattestation_within_one_reconcile_period(agents):
    head, w1, w2 = agents
    # w2's deployment policy stops allowing the measurement everyone runs
    w2.verifier.policy = Policy.from_dict({**POLICY, "sim": {"measurement": ["ee" * 48]}})
    w2.reattest_now()
    mesh = {"ip-n0", "ip-n1"}
    wait_for(lambda: all(p["state"] == "evicted" for p in w2.status()["peers"] if p["node_id"] in mesh),
             what="eviction")
    evicted_at = time.monotonic()
    wait_for(lambda: w2._device.peers == {}, timeout=w2.cfg.timing.reconcile_interval + 0.5,
             what="device peers removed within a reconcile period")
    assert time.monotonic() - evicted_at <= w2.cfg.timing.reconcile_interval + 0.5
    for p in (p for p in w2.status()["peers"] if p["node_id"] in mesh):
        assert p["reason"] == "measurement_mismatch"
        assert any(e["event"] == "reattestation_failed" for e in p["events"])
    reg = w2.metrics.registry
    assert reg.get_sample_value("conclave_evictions_total", {"reason": "measurement_mismatch"}) == 2
    assert reg.get_sample_value("conclave_admissions_total",
                                {"result": "rejected", "reason": "measurement_mismatch"}) >= 2
    still = [p for p in w2.status()["peers"] if p["state"] in ("admitted", "meshed")]
    assert all(p["node_id"] not in mesh for p in still)          # only the earlier test's picky node
    assert reg.get_sample_value("conclave_peers_admitted") == len(still)
    assert all(reg.get_sample_value("conclave_peer_evidence_age_seconds", {"peer": p}) is None for p in mesh)
