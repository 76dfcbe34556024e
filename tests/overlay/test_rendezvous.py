"""Rendezvous: an untrusted relay. Several can run; the client merges them and skips dead ones.
Announcements are signed by the node's statement key; nobody else can displace its entry."""
from __future__ import annotations

import ipaddress
import socket

import grpc
import pytest

from conclave.overlay import rpc, wire
from conclave.overlay.identity import Announcement, NodeIdentity, Role
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from conclave.overlay.rendezvous import RendezvousClient, RendezvousService


SIGNERS: dict[bytes, object] = {}   # statement key -> its private key (each test node's own)


def ann(name: str, n: int) -> Announcement:
    ident = NodeIdentity.generate()
    SIGNERS[ident.statement_public] = ident.statement_private
    return Announcement(node_id=name, owner="o", role=Role.WORKER, underlay_host=f"198.19.0.{n}",
                        admission_port=51821, wireguard_port=51820, wg_public_key=ident.wg_public,
                        hpke_public_key=ident.hpke_public, overlay_address=ipaddress.IPv4Address(f"100.64.0.{n}"),
                        statement_key=ident.statement_public)


def announce(client: RendezvousClient, a: Announcement) -> int:
    """Announce as the node that owns a's statement key."""
    return client.announce(a, SIGNERS[a.statement_key])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def two_rendezvous():
    clock = Clock()
    servers, targets, services = [], [], []
    for _ in range(2):
        svc = RendezvousService(ttl=30, clock=clock)
        srv = rpc.server(workers=2)
        pb_grpc.add_RendezvousServicer_to_server(svc, srv)
        port = free_port()
        rpc.bind(srv, "127.0.0.1", port)
        srv.start()
        servers.append(srv)
        services.append(svc)
        targets.append(f"127.0.0.1:{port}")
    yield targets, services, clock
    for srv in servers:
        srv.stop(0)


def test_client_merges_several_and_skips_dead_ones(two_rendezvous):
    targets, _, _ = two_rendezvous
    dead = f"127.0.0.1:{free_port()}"
    a, b = ann("a", 1), ann("b", 2)
    announce(RendezvousClient([targets[0]]), a)
    announce(RendezvousClient([targets[1]]), b)
    announce(RendezvousClient(targets), a)  # duplicates collapse
    client = RendezvousClient([*targets, dead])
    got = {x.node_id: x for x in client.list()}
    assert set(got) == {"a", "b"} and got["a"] == a and got["b"] == b
    assert dead in client.errors


def test_entries_expire(two_rendezvous):
    targets, services, clock = two_rendezvous
    announce(RendezvousClient([targets[0]]), ann("a", 1))
    clock.t += 31
    assert RendezvousClient([targets[0]]).list() == []


def test_malformed_announcements_are_refused(two_rendezvous):
    targets, _, _ = two_rendezvous
    msg = wire.announcement_to_proto(ann("a", 1))
    msg.wg_public_key = b"\x00" * 5
    with rpc.channel(targets[0]) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.RendezvousStub(ch).Announce(pb.AnnounceRequest(announcement=msg), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.RendezvousStub(ch).Announce(pb.AnnounceRequest(announcement=pb.NodeAnnouncement(
                node_id="x", owner="o" * (rpc.MAX_REQUEST_BYTES + 1))), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert RendezvousClient([targets[0]]).list() == []


def test_challenge_rate_limit_rations_evidence_generation():
    from conclave.runtime.agent.service import RateLimit
    clock = Clock()
    limit = RateLimit(rate=2.0, burst=3, clock=clock)
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]
    clock.t += 0.5
    assert limit.allow() and not limit.allow()


def test_forged_announcement_cannot_overwrite_a_real_one(two_rendezvous):
    import dataclasses
    targets, _, _ = two_rendezvous
    real = ann("a", 1)
    forged = dataclasses.replace(real, hpke_public_key=NodeIdentity.generate().hpke_public, underlay_host="6.6.6.6")
    client = RendezvousClient([targets[0]])
    announce(client, real)
    assert client.announce(forged, SIGNERS[real.statement_key]) == 1   # same key, new fields: its own update
    listed = client.list()
    assert forged in listed and len(listed) == 1


def _raw_announce(target: str, request: pb.AnnounceRequest) -> grpc.RpcError | None:
    with rpc.channel(target) as ch:
        try:
            pb_grpc.RendezvousStub(ch).Announce(request, timeout=5)
        except grpc.RpcError as exc:
            return exc
    return None


def test_overwrite_attempt_leaves_the_real_entry_listed(two_rendezvous):
    """Issue 16 hole 6: the same public triple with another endpoint, role or overlay address,
    sent by someone without the node's statement key, never displaces the node's entry."""
    import dataclasses
    from conclave.overlay.rendezvous import signed_announcement
    targets, _, _ = two_rendezvous
    real = ann("victim", 1)
    client = RendezvousClient([targets[0]])
    assert announce(client, real) == 1
    attacker = NodeIdentity.generate()
    for attempt, change in enumerate(({"underlay_host": "6.6.6.6"}, {"role": Role.HEAD},
                                      {"overlay_address": ipaddress.IPv4Address("100.64.0.66")}), start=1):
        bogus = dataclasses.replace(real, **change)
        # 1. unsigned, as before this fix
        err = _raw_announce(targets[0], pb.AnnounceRequest(announcement=wire.announcement_to_proto(bogus)))
        assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("announcement_unsigned")
        # 2. the victim's statement key, signed by the attacker's key
        err = _raw_announce(targets[0], signed_announcement(bogus, client.next_sequence() + 10, attacker.statement_private))
        assert err is not None and err.details().startswith("announcement_signature_invalid")
        # 3. the victim's real signature over its real fields, glued to the changed fields
        genuine = signed_announcement(real, client.next_sequence() + 10, SIGNERS[real.statement_key])
        glued = pb.AnnounceRequest(announcement=wire.announcement_to_proto(bogus), sequence=genuine.sequence,
                                   signature=genuine.signature)
        err = _raw_announce(targets[0], glued)
        assert err is not None and err.details().startswith("announcement_signature_invalid")
        # 4. the attacker's own statement key, correctly signed: an entry of its own, beside the real one
        own = dataclasses.replace(bogus, statement_key=attacker.statement_public)
        assert _raw_announce(targets[0], signed_announcement(own, attempt, attacker.statement_private)) is None
        listed = client.list()
        assert real in listed and own in listed
    assert sum(1 for a in client.list() if a == real) == 1


def test_replayed_older_announcement_is_stale(two_rendezvous):
    """A captured earlier announcement (e.g. an old endpoint) cannot roll the entry back."""
    import dataclasses
    from conclave.overlay.rendezvous import signed_announcement
    targets, _, _ = two_rendezvous
    real = ann("a", 1)
    signer = SIGNERS[real.statement_key]
    old = signed_announcement(real, 100, signer)
    moved = dataclasses.replace(real, underlay_host="198.19.0.9")
    assert _raw_announce(targets[0], signed_announcement(moved, 200, signer)) is None
    err = _raw_announce(targets[0], old)
    assert err is not None and err.details().startswith("announcement_stale")
    client = RendezvousClient([targets[0]])
    assert client.list() == [moved]
    assert client.announce(real, SIGNERS[real.statement_key]) == 1   # the node itself moves on (ms sequence)
    assert client.list() == [real]


def test_client_reports_the_rendezvous_reason(two_rendezvous):
    targets, _, _ = two_rendezvous
    real = ann("a", 1)
    client = RendezvousClient([targets[0]])
    assert client.announce(real, NodeIdentity.generate().statement_private) == 0
    assert client.errors[targets[0]] == "announcement_signature_invalid"
    assert client.list() == []


def test_agent_keeps_a_forgery_beside_the_real_peer(tmp_path):
    """The listing carries the real entry and the forgery (same triple, the forger's statement key):
    the agent gives each its own record, so the forgery never replaces the real one's announcement."""
    import dataclasses
    from conclave.overlay.evidence import SimEvidenceSource
    from conclave.runtime.agent.agent import NodeAgent
    from conclave.runtime.agent.config import NodeConfig
    from conclave.runtime.attestation.policy import Policy
    from conclave.runtime.attestation.sim import SimulatedRoot
    from inprocess_support import GOOD, POLICY
    root = SimulatedRoot.generate()
    agent = NodeAgent(NodeConfig(
        node_name="rdv-me", role="worker", owner="o", policy=Policy.from_dict(POLICY), manifest_digest=b"\x11" * 32,
        evidence_source=SimEvidenceSource(root.issue_attester("rdv-me", measurement=GOOD)),
        underlay_host="127.0.0.1", status_socket=tmp_path / "me.sock"))
    real = ann("peer", 1)
    forged = dataclasses.replace(real, underlay_host="6.6.6.6", statement_key=NodeIdentity.generate().statement_public)
    agent._merge([real, forged])
    agent._merge([forged])
    by_statement = {rec.announcement.statement_key: rec.announcement for rec in agent.peers.values()}
    assert by_statement == {real.statement_key: real, forged.statement_key: forged}
