"""Desired config is a pure function of admitted peers; reconcile applies exactly the difference."""
from __future__ import annotations

import ipaddress

from conclave.overlay.desired import AdmittedPeerConfig, desired_device
from conclave.overlay.device import FakeDevice, ObservedDevice, ObservedPeer
from conclave.overlay.keys import PresharedKey, WgPrivateKey, WgPublicKey
from conclave.overlay.reconcile import Reconciler, RemovePeer, SetListenPort, SetPeer, plan

NET = ipaddress.IPv4Network("100.64.0.0/16")
ME = WgPrivateKey.generate().public_key()
MY_ADDR = ipaddress.IPv4Address("100.64.0.1")


def peer(n: int, psk: PresharedKey | None = None, addr: str | None = None) -> AdmittedPeerConfig:
    return AdmittedPeerConfig(public_key=WgPublicKey(bytes([n]) * 32),
                              overlay_address=ipaddress.IPv4Address(addr or f"100.64.0.{n + 10}"),
                              endpoint=f"198.19.0.{n}:51820", psk=psk or PresharedKey(bytes([n + 100]) * 32))


def desired(peers, port=51820):
    return desired_device(interface="wg0", listen_port=port, self_key=ME, self_address=MY_ADDR, overlay=NET,
                          admitted=peers)


def test_each_peer_gets_exactly_its_slash_32():
    d = desired([peer(1), peer(2)])
    assert {p.allowed_ips for p in d.peers.values()} == {("100.64.0.11/32",), ("100.64.0.12/32",)}
    assert d.peers[WgPublicKey(b"\x01" * 32)].endpoint == "198.19.0.1:51820"


def test_pure_and_order_independent():
    a = [peer(1), peer(2), peer(3)]
    assert desired(a).peers == desired(list(reversed(a))).peers == desired(a).peers


def test_excludes_self_outside_cidr_and_conflicting_addresses():
    me_again = AdmittedPeerConfig(public_key=ME, overlay_address=ipaddress.IPv4Address("100.64.0.50"),
                                  endpoint="x:1", psk=PresharedKey.generate())
    squatter = peer(4, addr=str(MY_ADDR))
    outside = peer(5, addr="10.0.0.5")
    clash_a, clash_b = peer(6, addr="100.64.0.99"), peer(7, addr="100.64.0.99")
    d = desired([me_again, squatter, outside, clash_a, clash_b, peer(1)])
    assert list(d.peers) == [WgPublicKey(b"\x01" * 32)]


def test_plan_against_empty_device_adds_everything():
    actions = plan(desired([peer(1), peer(2)]), ObservedDevice("wg0", 51820, {}))
    assert [type(a) for a in actions] == [SetPeer, SetPeer] and all(a.why == "add" for a in actions)


def test_reconcile_diff_against_fake_device():
    dev = FakeDevice("wg0", 51820)
    rec = Reconciler(dev)
    rec.step(desired([peer(1), peer(2)]))
    assert sorted(op for op, _ in dev.ops) == ["set", "set"]
    dev.ops.clear()
    # no change -> no operations
    actions, _ = rec.step(desired([peer(1), peer(2)]))
    assert actions == [] and dev.ops == []
    # peer 2 evicted, peer 3 admitted, peer 1 re-keyed
    new_psk = PresharedKey(b"\x55" * 32)
    actions, observed = rec.step(desired([peer(1, psk=new_psk), peer(3)]))
    assert isinstance(actions[0], RemovePeer) and actions[0].public_key == WgPublicKey(b"\x02" * 32)
    kinds = [(type(a).__name__, getattr(a, "why", None)) for a in actions]
    assert kinds == [("RemovePeer", None), ("SetPeer", "update"), ("SetPeer", "add")]
    assert set(observed.peers) == {WgPublicKey(b"\x01" * 32), WgPublicKey(b"\x03" * 32)}
    assert observed.peers[WgPublicKey(b"\x01" * 32)].psk_fingerprint == new_psk.fingerprint()


def test_drift_on_device_is_repaired():
    dev = FakeDevice("wg0", 51820)
    rec = Reconciler(dev)
    rec.step(desired([peer(1)]))
    key = WgPublicKey(b"\x01" * 32)
    old = dev.peers[key]
    # someone widened AllowedIPs and added an unknown peer behind our back
    dev.peers[key] = ObservedPeer(key, ("100.64.0.0/16",), old.endpoint, old.psk_fingerprint, old.keepalive,
                                  None, 0, 0)
    intruder = WgPublicKey(b"\x09" * 32)
    dev.peers[intruder] = ObservedPeer(intruder, ("0.0.0.0/0",), None, None, 0, None, 0, 0)
    dev.listen_port = 1
    actions, observed = rec.step(desired([peer(1)]))
    assert RemovePeer(intruder) in actions and SetListenPort(51820) in actions
    assert observed.peers[key].allowed_ips == ("100.64.0.11/32",) and intruder not in observed.peers


def test_observed_state_is_a_different_type():
    d = desired([peer(1)])
    dev = FakeDevice("wg0", 51820)
    _, observed = Reconciler(dev).step(d)
    assert type(observed) is not type(d)
    assert type(next(iter(observed.peers.values()))) is not type(next(iter(d.peers.values())))
