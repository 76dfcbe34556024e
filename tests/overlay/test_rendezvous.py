"""Rendezvous: an untrusted relay. Several can run; the client merges them and skips dead ones."""
from __future__ import annotations

import ipaddress
import socket

import grpc
import pytest

from conclave.overlay import rpc
from conclave.overlay.identity import Announcement, NodeIdentity, Role
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from conclave.overlay.rendezvous import RendezvousClient, RendezvousService


def ann(name: str, n: int) -> Announcement:
    ident = NodeIdentity.generate()
    return Announcement(node_id=name, owner="o", role=Role.WORKER, underlay_host=f"198.19.0.{n}",
                        admission_port=51821, wireguard_port=51820, wg_public_key=ident.wg_public,
                        hpke_public_key=ident.hpke_public, overlay_address=ipaddress.IPv4Address(f"100.64.0.{n}"))


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
    RendezvousClient([targets[0]]).announce(a)
    RendezvousClient([targets[1]]).announce(b)
    RendezvousClient(targets).announce(a)  # duplicates collapse
    client = RendezvousClient([*targets, dead])
    got = {x.node_id: x for x in client.list()}
    assert set(got) == {"a", "b"} and got["a"] == a and got["b"] == b
    assert dead in client.errors


def test_entries_expire(two_rendezvous):
    targets, services, clock = two_rendezvous
    RendezvousClient([targets[0]]).announce(ann("a", 1))
    clock.t += 31
    assert RendezvousClient([targets[0]]).list() == []


def test_malformed_announcements_are_refused(two_rendezvous):
    targets, _, _ = two_rendezvous
    msg = ann("a", 1).to_proto()
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
    client.announce(real)
    client.announce(forged)
    listed = client.list()
    assert real in listed and forged in listed and len(listed) == 2
