"""Desired WireGuard device state: a pure function of this node and its admitted peers.

Nothing here touches the device. `desired_device` is deterministic in its inputs, which is what
the unit tests check; the reconcile loop (reconcile.py) turns desired vs observed into actions.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from conclave.overlay.keys import PresharedKey, WgPublicKey

DEFAULT_KEEPALIVE = 15


@dataclass(frozen=True)
class AdmittedPeerConfig:
    """What the device needs about a peer that both sides admitted and keyed."""

    public_key: WgPublicKey
    overlay_address: ipaddress.IPv4Address
    endpoint: str                 # "host:port" on the underlay
    psk: PresharedKey


@dataclass(frozen=True)
class DesiredPeer:
    public_key: WgPublicKey
    allowed_ips: tuple[str, ...]  # exactly (overlay_address/32,)
    endpoint: str
    psk_fingerprint: str
    keepalive: int
    psk: PresharedKey              # needed to apply; compared via fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DesiredPeer):
            return NotImplemented
        return (self.public_key, self.allowed_ips, self.endpoint, self.psk_fingerprint, self.keepalive) == \
               (other.public_key, other.allowed_ips, other.endpoint, other.psk_fingerprint, other.keepalive)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class DesiredDevice:
    interface: str
    listen_port: int
    peers: dict  # WgPublicKey -> DesiredPeer


def desired_device(*, interface: str, listen_port: int, self_key: WgPublicKey,
                   self_address: ipaddress.IPv4Address, overlay: ipaddress.IPv4Network,
                   admitted: Iterable[AdmittedPeerConfig], keepalive: int = DEFAULT_KEEPALIVE) -> DesiredDevice:
    """The device config implied by `admitted`: each peer gets exactly its /32, PSK and endpoint.

    Peers outside the overlay CIDR, duplicates of our own key or address, and address conflicts
    between peers are dropped (fail closed: a conflicting address is given to nobody).
    """
    by_addr: dict[ipaddress.IPv4Address, list[AdmittedPeerConfig]] = {}
    for peer in admitted:
        if peer.public_key == self_key or peer.overlay_address == self_address:
            continue
        if peer.overlay_address not in overlay:
            continue
        by_addr.setdefault(peer.overlay_address, []).append(peer)
    peers: dict[WgPublicKey, DesiredPeer] = {}
    for addr, group in sorted(by_addr.items()):
        if len({p.public_key for p in group}) != 1:
            continue  # two keys claim one address: neither gets it
        p = group[0]
        peers[p.public_key] = DesiredPeer(public_key=p.public_key, allowed_ips=(f"{addr}/32",),
                                          endpoint=p.endpoint, psk_fingerprint=p.psk.fingerprint(),
                                          keepalive=keepalive, psk=p.psk)
    return DesiredDevice(interface=interface, listen_port=listen_port, peers=peers)
