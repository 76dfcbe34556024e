"""Dishonest hosts in network namespaces: none is ever added as a peer, none reaches the overlay.

h0 head + h1 worker are honest and enrolled by their owner, who attests them first. Rogues
(real agents with a dishonest prover): rk presents evidence bound to another WireGuard key, rr
replays the evidence for an old nonce, rm runs a wrong measurement. Each of them carries a valid
enrolment from its stage's owner (one that vouched without attesting), so the reason each is
refused is the one about its own lie, not the missing enrolment. ru is an honest node nobody
enrolled: refused with owner_not_enrolled. (Debug guests: test_mesh_netns; simulated evidence
under a production policy: test_admission / test_node_cli, since an all-simulated cluster cannot
hold a production policy.)
"""
from __future__ import annotations

import pytest

from conclave.overlay import rpc
from conclave.overlay.keys import WgPublicKey
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from conclave.runtime.errors import ConclaveError
from overlay_hosts import ADMISSION_PORT, ENROL_VOUCHED, METRICS_PORT, LocalHosts

pytestmark = pytest.mark.netns  # builds hosts in network namespaces with wireguard-go

HONEST = ("h0", "h1")
ROGUES = {"rk": "report_data_mismatch", "rr": "nonce_replayed", "rm": "measurement_mismatch",
          "ru": "owner_not_enrolled"}


@pytest.fixture(scope="module")
def cluster(overlay_tools, tmp_path_factory):
    lh = LocalHosts(tmp_path_factory.mktemp("rogues"))
    try:
        lh.add_host("h0", "head")
        for short in ("h1", *ROGUES):
            lh.add_host(short, "worker")
        lh.start("h0", serve_rendezvous=True, extra=["--generate-secret", "ray_token"])
        lh.start("h1")
        lh.start("rk", rogue_mode="wrong_key", enrol=ENROL_VOUCHED)
        lh.start("rr", rogue_mode="replay", enrol=ENROL_VOUCHED)
        lh.start("rm", rogue_mode="unchecked", measurement=bytes.fromhex("cd" * 48), enrol=ENROL_VOUCHED)
        lh.start("ru", enrol=None)
        for short in lh.hosts:
            lh.wait_status(short)

        def settled():
            for a in HONEST:
                st = lh.status(a)
                for r, reason in ROGUES.items():
                    p = next((p for p in st["peers"] if p["node_id"] == lh.hosts[r].name), None)
                    if p is None or p["reason"] != reason:
                        return False
                other = lh.hosts["h1" if a == "h0" else "h0"].name
                if not any(p["node_id"] == other and p["state"] == "meshed" and p["latest_handshake"]
                           for p in st["peers"]):
                    return False
            return True
        lh.wait_for(settled, 40, "honest mesh and every rogue rejected")
        yield lh
    finally:
        lh.teardown()


@pytest.mark.parametrize("rogue", sorted(ROGUES))
def test_rogue_is_rejected_with_the_right_reason_and_never_a_peer(cluster, rogue):
    host = cluster.hosts[rogue]
    rogue_key = cluster.status(rogue)["wg_public_key"]
    for a in HONEST:
        st = cluster.status(a)
        p = next(p for p in st["peers"] if p["node_id"] == host.name)
        assert p["state"] == "rejected" and p["reason"] == ROGUES[rogue]
        assert not p["admitted_by_us"] and not p["admitted_us"] and not p["on_device"]
        assert rogue_key not in st["device_peers"]
        on_device = cluster.exec(a, ["wg", "show", cluster.hosts[a].interface, "peers"]).stdout.split()
        assert rogue_key not in on_device
    assert all(p["state"] != "meshed" for p in cluster.status(rogue)["peers"])
    assert cluster.status(rogue)["device_peers"] == []


@pytest.mark.parametrize("rogue", sorted(ROGUES))
def test_rogue_cannot_reach_any_overlay_address(cluster, rogue):
    for a in HONEST:
        assert not cluster.tcp_probe(rogue, cluster.hosts[a].overlay_ip, METRICS_PORT, timeout=1)
    # not even by routing the overlay address over the underlay
    target = cluster.hosts["h1"]
    cluster.exec(rogue, ["ip", "route", "add", f"{target.overlay_ip}/32", "via", target.underlay_ip])
    try:
        assert not cluster.tcp_probe(rogue, target.overlay_ip, METRICS_PORT, timeout=1)
        assert not cluster.tcp_probe(rogue, target.overlay_ip, ADMISSION_PORT, timeout=1)
    finally:
        cluster.exec(rogue, ["ip", "route", "del", f"{target.overlay_ip}/32"])


def test_honest_hosts_still_reach_each_other(cluster):
    assert cluster.tcp_probe("h0", cluster.hosts["h1"].overlay_ip, METRICS_PORT)
    assert cluster.tcp_probe("h1", cluster.hosts["h0"].overlay_ip, METRICS_PORT)


def test_secret_refused_to_rogue(cluster):
    assert "ray_token" in cluster.status("h1")["secrets_received"]
    for rogue in ROGUES:
        assert "ray_token" not in cluster.status(rogue)["secrets_received"]
        key = WgPublicKey.from_base64(cluster.status(rogue)["wg_public_key"]).raw
        with rpc.channel(f"{cluster.hosts['h0'].underlay_ip}:{ADMISSION_PORT}") as ch:
            reply = pb_grpc.NodeStub(ch).GetSecret(pb.SecretRequest(requester_wg_public_key=key, name="ray_token"),
                                                   timeout=5)
        assert reply.status == pb.NOT_ADMITTED and reply.reason == "not_admitted" and not reply.sealed_secret


def test_enrolments_are_as_the_owners_gave_them(cluster):
    """The honest hosts and the vouched-for rogues show their owner's proof; ru has none."""
    for short in ("h0", "h1", "rk", "rr", "rm"):
        proof = cluster.status(short)["enrolment"]
        assert proof["proven"] and proof["stage"] == cluster.hosts[short].name and proof["owner"] == "test"
    assert cluster.status("ru")["enrolment"] is None


@pytest.mark.parametrize("rogue", ["rk", "rm"])
def test_an_owner_that_attests_first_refuses_to_enrol_the_rogue(cluster, rogue):
    """`conclave owner enroll` attests before it signs: the rogue's lie stops it there."""
    with pytest.raises(ConclaveError) as err:
        cluster.manifest.enroll(cluster.hosts[rogue].status_socket, cluster.hosts[rogue].name,
                                [cluster.root.certificate])
    assert err.value.reason == ROGUES[rogue]
