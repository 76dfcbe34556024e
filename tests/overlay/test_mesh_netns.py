"""Real overlay in network namespaces: five hosts running `conclave node` with wireguard-go.

h0 head (hosts the rendezvous and brokers ray_token, and model_key for heads only),
h1, h2 workers, h3 a worker whose attester certificate expires shortly after joining
(re-attestation fails), h4 a debug-mode guest (must never be admitted). Every host carries its
owner's enrolment; h4's owner vouched for it without attesting, so what refuses it is the peers'
own evidence check (debug_enabled), not a missing enrolment.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import grpc
import pytest

from conclave.overlay import rpc
from conclave.overlay.keys import WgPrivateKey, WgPublicKey
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from overlay_hosts import (ADMISSION_PORT, ENROL_VOUCHED, METRICS_PORT, RENDEZVOUS_PORT, LocalHosts, meshed_with,
                           peer)

pytestmark = pytest.mark.netns  # builds hosts in network namespaces with wireguard-go

GOOD = ("h0", "h1", "h2")
REATTEST = 2.0
RECONCILE = 1.0
VICTIM_VALIDITY = 25.0


@pytest.fixture(scope="module")
def mesh(overlay_tools, tmp_path_factory):
    lh = LocalHosts(tmp_path_factory.mktemp("mesh"))
    try:
        for short, role in (("h0", "head"), ("h1", "worker"), ("h2", "worker"), ("h3", "worker"), ("h4", "worker")):
            lh.add_host(short, role)
        common = {"reattest_interval": REATTEST, "reconcile_interval": RECONCILE}
        lh.start("h0", serve_rendezvous=True, **common,
                 extra=["--generate-secret", "ray_token", "--generate-secret", "model_key",
                        "--secret-roles", "model_key=head"])
        lh.start("h1", **common, extra=["--want-secret", "ray_token", "--want-secret", "model_key"])
        lh.start("h2", **common)
        lh.victim_started = time.time()
        lh.start("h3", validity=timedelta(seconds=VICTIM_VALIDITY), **common)
        lh.start("h4", debug=True, rogue_mode="unchecked", enrol=ENROL_VOUCHED, **common)
        for short in lh.hosts:
            lh.wait_status(short)
        lh.wait_for(lambda: all(meshed_with(lh, a, b, handshake=True)
                                for a in GOOD for b in GOOD + ("h3",) if a != b),
                    40, "h0-h3 to mesh")
        yield lh
    finally:
        lh.teardown()


def test_admitted_hosts_are_mutually_meshed_with_exact_allowed_ips(mesh):
    for a in GOOD:
        st = mesh.status(a)
        assert st["state"] == "meshed" and st["device"] == "wireguard-go" and st["firewall"] == "nft"
        for b in GOOD:
            if a == b:
                continue
            p = peer(st, mesh.hosts[b].name)
            assert p["admitted_by_us"] and p["admitted_us"] and p["on_device"]
            assert p["overlay_address"] == mesh.hosts[b].overlay_ip
            assert p["evidence_age_s"] is not None and p["evidence_age_s"] < 3 * REATTEST
    # the device itself: each peer exactly its /32, with a PSK
    h0 = mesh.hosts["h0"]
    dump = mesh.exec("h0", ["wg", "show", h0.interface, "allowed-ips"]).stdout
    lines = dict(line.split("\t") for line in dump.strip().splitlines())
    for b in ("h1", "h2"):
        assert lines[mesh.status(b)["wg_public_key"]] == f"{mesh.hosts[b].overlay_ip}/32"
    psks = mesh.exec("h0", ["wg", "show", h0.interface, "preshared-keys"]).stdout
    assert "(none)" not in psks


def test_admitted_hosts_reach_each_other_only_over_overlay(mesh):
    for a in GOOD:
        for b in GOOD:
            if a == b:
                continue
            assert mesh.tcp_probe(a, mesh.hosts[b].overlay_ip, METRICS_PORT), f"{a} -> {b} over overlay"
            assert not mesh.tcp_probe(a, mesh.hosts[b].underlay_ip, METRICS_PORT, timeout=1), \
                f"{b}'s overlay service must not answer on the underlay"


def test_only_wireguard_admission_and_rendezvous_listen_on_the_underlay(mesh):
    for a in GOOD:
        host = mesh.hosts[a]
        out = mesh.exec(a, ["ss", "-H", "-lntu"]).stdout
        listeners = set()
        for line in out.splitlines():
            fields = line.split()
            proto, local = fields[0], fields[4]
            addr, _, port = local.rpartition(":")
            listeners.add((proto, addr.strip("[]"), int(port)))
        for proto, addr, port in listeners:
            if addr == host.overlay_ip:
                continue  # overlay-bound services (metrics) are fine
            allowed = {("udp", 51820), ("tcp", ADMISSION_PORT)} | ({("tcp", RENDEZVOUS_PORT)} if a == "h0" else set())
            assert (proto, port) in allowed, f"{a}: unexpected underlay listener {proto} {addr}:{port}"
        assert ("tcp", host.overlay_ip, METRICS_PORT) in listeners


def test_debug_guest_is_rejected_by_everyone_and_reaches_nothing(mesh):
    rogue = mesh.hosts["h4"]
    rogue_key = mesh.status("h4")["wg_public_key"]
    for a in GOOD:
        st = mesh.status(a)
        p = peer(st, rogue.name)
        assert p is not None and p["state"] == "rejected"
        assert p["reason"] == "debug_enabled"
        assert rogue_key not in st["device_peers"]
    assert all(p["state"] != "meshed" for p in mesh.status("h4")["peers"])
    for a in GOOD:
        assert not mesh.tcp_probe("h4", mesh.hosts[a].overlay_ip, METRICS_PORT, timeout=1)
    # even routing the overlay address over the underlay does not get through
    target = mesh.hosts["h0"]
    mesh.exec("h4", ["ip", "route", "add", f"{target.overlay_ip}/32", "via", target.underlay_ip, "dev", "eth0"])
    try:
        assert not mesh.tcp_probe("h4", target.overlay_ip, METRICS_PORT, timeout=1)
    finally:
        mesh.exec("h4", ["ip", "route", "del", f"{target.overlay_ip}/32"])


def test_underlay_capture_contains_no_overlay_plaintext(mesh):
    marker = os.urandom(8).hex()
    secret_payload = f"CONCLAVE-OVERLAY-{marker}".encode() * 8
    control_payload = f"CONCLAVE-CONTROL-{marker}".encode()
    pcap = mesh.workdir / "underlay.pcap"
    dump = subprocess.Popen(["tcpdump", "-i", mesh.bridge, "-U", "-s", "0", "-w", str(pcap)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # tcpdump attaches
        h2 = mesh.hosts["h2"]
        server = ("import socket\n"
                  f"s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                  f"s.bind(('{h2.overlay_ip}', 7070)); s.listen(1); s.settimeout(15)\n"
                  "c,_=s.accept(); data=b''\n"
                  "while True:\n"
                  "    d=c.recv(65536)\n"
                  "    if not d: break\n"
                  "    data+=d\n"
                  "print(len(data))\n")
        srv = subprocess.Popen(["ip", "netns", "exec", h2.ns, sys.executable, "-c", server],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            client = ("import socket,sys,time\n"
                      "for _ in range(50):\n"
                      "    s=socket.socket()\n"
                      f"    if s.connect_ex(('{h2.overlay_ip}', 7070)) == 0: break\n"
                      "    s.close(); time.sleep(0.1)\n"
                      f"s.sendall({secret_payload!r}); s.close()\n"
                      "u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      f"u.sendto({control_payload!r}, ('{h2.underlay_ip}', 9))\n")
            res = mesh.exec("h1", [sys.executable, "-c", client])
            assert res.returncode == 0, res.stderr
            out, err = srv.communicate(timeout=20)
            assert out.strip() == str(len(secret_payload)), err
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()
        time.sleep(1.0)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
    data = pcap.read_bytes()
    assert control_payload in data, "the capture must see plaintext underlay traffic (control)"
    assert f"CONCLAVE-OVERLAY-{marker}".encode() not in data


def _get_secret(mesh, requester_key: bytes, name: str) -> pb.SecretReply:
    h0 = mesh.hosts["h0"]
    with rpc.channel(f"{h0.underlay_ip}:{ADMISSION_PORT}") as ch:
        return pb_grpc.NodeStub(ch).GetSecret(pb.SecretRequest(requester_wg_public_key=requester_key, name=name),
                                              timeout=5)


def test_secret_released_to_admitted_and_refused_otherwise(mesh):
    served = mesh.status("h0")["secrets_served"]
    for w in ("h1", "h2"):
        mesh.wait_for(lambda: "ray_token" in mesh.status(w)["secrets_received"], 10, f"{w} ray_token")
        got = mesh.status(w)["secrets_received"]["ray_token"]
        assert got["fingerprint"] == served["ray_token"] and got["from"] == mesh.hosts["h0"].name
    # model_key is for heads only
    h1 = mesh.status("h1")
    assert "model_key" not in h1["secrets_received"]
    assert h1["secret_errors"].get("model_key") == "role_not_allowed"
    # the debug guest (never admitted) and a stranger are refused; nothing sealed comes back
    for key in (WgPublicKey.from_base64(mesh.status("h4")["wg_public_key"]).raw,
                WgPrivateKey.generate().public_key().raw):
        reply = _get_secret(mesh, key, "ray_token")
        assert reply.status == pb.NOT_ADMITTED and reply.reason == "not_admitted"
        assert reply.sealed_secret == b""


def test_oversized_admission_message_is_refused_without_harm(mesh):
    h0 = mesh.hosts["h0"]
    with rpc.channel(f"{h0.underlay_ip}:{ADMISSION_PORT}") as ch:
        stub = pb_grpc.NodeStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSecret(pb.SecretRequest(requester_wg_public_key=b"x" * 32, name="a" * (rpc.MAX_REQUEST_BYTES + 10)),
                           timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as err:
            stub.Attest(pb.AttestRequest(nonce=b"short"), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert mesh.status("h0")["state"] == "meshed"
    assert meshed_with(mesh, "h0", "h1", handshake=True)


def test_failed_reattestation_evicts_within_one_reconcile_period(mesh):
    victim = mesh.hosts["h3"]
    victim_key = None
    for a in GOOD:  # joined while its certificate was valid
        p = peer(mesh.status(a), victim.name)
        assert p is not None and any(e["event"] == "meshed" for e in p["events"])
        victim_key = p["wg_public_key"]
    expiry = mesh.victim_started + VICTIM_VALIDITY
    deadline_s = max(0.0, expiry - time.time()) + REATTEST + RECONCILE + 8

    def removed_everywhere():
        out = {}
        for a in GOOD:
            st = mesh.status(a)
            p = peer(st, victim.name)
            if p["state"] != "evicted" or victim_key in st["device_peers"]:
                return None
            out[a] = (p, st, time.time())
        return out

    result = mesh.wait_for(removed_everywhere, deadline_s, "victim eviction", interval=0.1)
    for a, (p, st, _) in result.items():
        assert p["reason"] == "cert_expired", p
        evicted_at = next(e["at"] for e in reversed(p["events"]) if e["event"] == "reattestation_failed")
        assert evicted_at >= expiry - 1
        wg = mesh.exec(a, ["wg", "show", mesh.hosts[a].interface, "peers"]).stdout.split()
        assert victim_key not in wg
    # the device dropped the peer within one reconcile period of the eviction decision
    for a in GOOD:
        p = peer(mesh.status(a), victim.name)
        evicted_at = next(e["at"] for e in reversed(p["events"]) if e["event"] == "reattestation_failed")
        assert p["device_removed_at"] is not None
        assert 0 <= p["device_removed_at"] - evicted_at <= RECONCILE, (a, p)
    # and the victim itself sees why its own evidence stopped working
    mesh.wait_for(lambda: mesh.status("h3")["own_evidence_error"], REATTEST + 5, "victim self-check")
    assert not mesh.tcp_probe("h3", mesh.hosts["h0"].overlay_ip, METRICS_PORT, timeout=1)


def test_mesh_status_cli_lists_peers_and_reasons(mesh):
    env = {"PATH": os.environ["PATH"], "CONCLAVE_STATE_DIR": str(mesh.state_dir)}
    res = subprocess.run([sys.executable, "-m", "conclave.runtime", "mesh", "status", "--json"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert set(nodes) == {h.name for h in mesh.hosts.values()}
    h0 = nodes[mesh.hosts["h0"].name]
    reasons = {p["node_id"]: p["reason"] for p in h0["peers"]}
    assert reasons[mesh.hosts["h4"].name] == "debug_enabled"
    for p in h0["peers"]:
        assert {"state", "latest_handshake", "evidence_age_s", "admitted_by_us", "admitted_us"} <= set(p)
    text = subprocess.run([sys.executable, "-m", "conclave.runtime", "mesh", "status", "--node",
                           mesh.hosts["h0"].name], capture_output=True, text=True, env=env, timeout=30)
    assert text.returncode == 0 and "reason=debug_enabled" in text.stdout
