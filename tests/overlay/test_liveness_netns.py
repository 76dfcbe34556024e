"""Faults on a real overlay (network namespaces, wireguard-go, `conclave node`): a WireGuard
daemon killed, then one host partitioned (its veth down) and healed, then one host restarted
(a new boot its owner enrols again). No operator acts beyond that enrolment.

h0 head (hosts the rendezvous), h1 and h2 workers; liveness every LIVENESS_INTERVAL seconds,
eviction after LIVENESS_TIMEOUT seconds of silence. Measured timings are printed (pytest -s).
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from overlay_hosts import LocalHosts, meshed_with, peer

pytestmark = pytest.mark.netns  # builds hosts in network namespaces with wireguard-go

HOSTS = ("h0", "h1", "h2")
LIVENESS_INTERVAL, LIVENESS_TIMEOUT = 1.0, 5.0
RECONCILE = 1.0


@pytest.fixture(scope="module")
def trio(overlay_tools, tmp_path_factory):
    lh = LocalHosts(tmp_path_factory.mktemp("liveness"))
    try:
        for short, role in (("h0", "head"), ("h1", "worker"), ("h2", "worker")):
            lh.add_host(short, role)
        flags = ["--liveness-interval", str(LIVENESS_INTERVAL), "--liveness-timeout", str(LIVENESS_TIMEOUT)]
        lh.start("h0", serve_rendezvous=True, reconcile_interval=RECONCILE, extra=flags)
        for short in ("h1", "h2"):
            lh.start(short, reconcile_interval=RECONCILE, extra=flags)
        for short in HOSTS:
            lh.wait_status(short)
        lh.wait_for(lambda: _all_meshed(lh), 40, "three hosts to mesh")
        yield lh
    finally:
        lh.teardown()


def _all_meshed(lh: LocalHosts) -> bool:
    return all(meshed_with(lh, a, b) for a in HOSTS for b in HOSTS if a != b)


def _events(lh: LocalHosts, a: str, b: str, kind: str) -> int:
    return sum(e["event"] == kind for e in peer(lh.status(a), lh.hosts[b].name)["events"])


def test_killed_wireguard_daemon_is_recreated_without_readmission(trio):
    lh = trio
    st = lh.status("h1")
    assert st["device"] == "wireguard-go" and st["device_restarts"] == 0
    assert (st["liveness_interval_s"], st["liveness_timeout_s"]) == (LIVENESS_INTERVAL, LIVENESS_TIMEOUT)
    admitted = {(a, b): _events(lh, a, b, "admitted") for a in ("h0", "h1") for b in ("h0", "h1") if a != b}
    pids = lh.wireguard_go_pids("h1")
    assert pids == [st["device_pid"]], (pids, st["device_pid"])
    os.kill(pids[0], signal.SIGKILL)        # a process our test's agent started
    killed = time.monotonic()
    lh.wait_for(lambda: lh.status("h1")["device_restarts"] == 1, RECONCILE + 5, "device recreated")
    detected = time.monotonic() - killed
    st = lh.status("h1")
    assert st["device_restart_reason"] in ("wireguard_daemon_exited", "wireguard_socket_missing",
                                           "wireguard_interface_missing")
    new_pids = lh.wireguard_go_pids("h1")
    assert new_pids == [st["device_pid"]] and new_pids != pids
    h0_ip, h1_ip = lh.hosts["h0"].overlay_ip, lh.hosts["h1"].overlay_ip
    lh.wait_for(lambda: lh.overlay_ping("h1", h0_ip) and lh.overlay_ping("h0", h1_ip), 10,
                "overlay ping over the recreated device")
    recovered = time.monotonic() - killed
    print(f"\nwireguard-go killed: recreated after {detected:.1f}s, overlay ping back after {recovered:.1f}s")
    # the same identity, the same admission: nobody re-attested or re-keyed
    assert lh.status("h1")["wg_public_key"] == st["wg_public_key"]
    for (a, b), count in admitted.items():
        assert _events(lh, a, b, "admitted") == count and meshed_with(lh, a, b)
    dump = lh.exec("h1", ["wg", "show", lh.hosts["h1"].interface, "preshared-keys"]).stdout
    assert dump.count("\t") == 2 and "(none)" not in dump


def test_partitioned_host_is_evicted_then_meshes_again_when_healed(trio):
    lh = trio
    victim = lh.hosts["h2"]
    lh.set_underlay("h2", up=False)
    cut = time.monotonic()
    try:
        def evicted_by_others():
            return all(peer(lh.status(a), victim.name)["state"] == "evicted" for a in ("h0", "h1"))
        lh.wait_for(evicted_by_others, LIVENESS_TIMEOUT + 5, "both others evict the partitioned host")
        detect = time.monotonic() - cut
        for a in ("h0", "h1"):
            st = lh.status(a)
            p = peer(st, victim.name)
            assert p["reason"] == "peer_unreachable" and p["events"][-1]["event"] == "unreachable"
            lh.wait_for(lambda: p["wg_public_key"] not in lh.status(a)["device_peers"], RECONCILE + 2,
                        f"{a} drops the partitioned host from its device")
        # the partitioned host evicts them too (nothing answers its pings either)
        lh.wait_for(lambda: all(peer(lh.status("h2"), lh.hosts[b].name)["reason"] == "peer_unreachable"
                                for b in ("h0", "h1")), 5, "the victim evicts the others")
        assert meshed_with(lh, "h0", "h1") and meshed_with(lh, "h1", "h0")
    finally:
        lh.set_underlay("h2", up=True)
    healed = time.monotonic()
    lh.wait_for(lambda: _all_meshed(lh), 30, "all meshed again after the partition healed")
    remeshed = time.monotonic() - healed
    for a in ("h0", "h1"):
        lh.wait_for(lambda: lh.overlay_ping(a, victim.overlay_ip) and lh.overlay_ping("h2", lh.hosts[a].overlay_ip),
                    15, f"overlay ping {a} <-> h2")
    back = time.monotonic() - healed
    print(f"\npartition: evicted by both others {detect:.1f}s after the cut (timeout {LIVENESS_TIMEOUT}s); "
          f"meshed again {remeshed:.1f}s and overlay ping {back:.1f}s after healing")
    for a in ("h0", "h1"):
        assert peer(lh.status(a), victim.name)["reason"] is None
        assert _events(lh, a, "h2", "meshed") >= 2
    assert detect <= LIVENESS_TIMEOUT + 4


def test_restarted_host_is_enrolled_again_and_replaces_its_old_boot(trio):
    """A restart is a new boot: new keys, so the old enrolment does not cover it. The owner
    enrols it again (LocalHosts does on wait_status) and the peers mesh with its new key. The old
    boot's announcement keeps a record of its own until the rendezvous forgets it; the new boot
    answers its challenges, so it stays refused and off every device."""
    lh = trio
    old_key = lh.status("h2")["wg_public_key"]
    old_proof = lh.status("h2")["enrolment"]
    time.sleep(1.1)   # enrolments are stamped to the second: the new one must be issued later
    lh.stop("h2")
    lh.start("h2", reconcile_interval=RECONCILE,
             extra=["--liveness-interval", str(LIVENESS_INTERVAL), "--liveness-timeout", str(LIVENESS_TIMEOUT)])
    restarted = time.monotonic()
    st = lh.wait_status("h2")
    new_key = st["wg_public_key"]
    assert new_key != old_key
    assert st["enrolment"]["proven"] and st["enrolment"]["issued"] > old_proof["issued"]
    lh.wait_for(lambda: _all_meshed(lh), 30, "the restarted host meshed again under its new key")
    for a in ("h0", "h1"):
        st = lh.status(a)
        assert peer(st, lh.hosts["h2"].name, new_key)["state"] == "meshed"
        lh.wait_for(lambda: old_key not in lh.status(a)["device_peers"], RECONCILE + 2,
                    f"{a} drops the old boot's key from its device")
        old_boot = peer(lh.status(a), lh.hosts["h2"].name, old_key)
        assert old_boot["state"] in ("evicted", "rejected") and not old_boot["on_device"]
        # gone one way or another: liveness saw the new key (identity_changed), the newer enrolment
        # replaced it (replaced), or it went silent (peer_unreachable); a retry then meets the new boot
        assert old_boot["reason"] in ("identity_changed", "replaced", "peer_unreachable", "identity_mismatch"), \
            old_boot["events"]
    print(f"\nrestart: re-enrolled and meshed again {time.monotonic() - restarted:.1f}s after the new boot")
