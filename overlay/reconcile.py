"""Reconcile: the difference between desired and observed device state, and applying it.

`plan` is pure (desired, observed) -> actions; `Reconciler.step` reads the device, plans,
applies and reports what it did. Removals come first so an evicted peer loses its tunnel
before anything else happens in the period. `Reconciler.heal` recreates a device whose daemon
died (same key, port, address) and forgets the old observation, so the next step re-applies
every admitted peer with its PSK: no re-admission, no new keys.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from conclave.overlay.desired import DesiredDevice, DesiredPeer
from conclave.overlay.device import Device, ObservedDevice, ObservedPeer, PeerSpec
from conclave.overlay.keys import WgPublicKey

log = logging.getLogger("conclave.overlay.reconcile")


@dataclass(frozen=True)
class RemovePeer:
    public_key: WgPublicKey


@dataclass(frozen=True)
class SetPeer:
    peer: DesiredPeer
    why: str   # "add" | "update"


@dataclass(frozen=True)
class SetListenPort:
    port: int


Action = RemovePeer | SetPeer | SetListenPort


def _differs(want: DesiredPeer, have: ObservedPeer) -> bool:
    return (tuple(sorted(want.allowed_ips)) != tuple(sorted(have.allowed_ips))
            or want.psk_fingerprint != have.psk_fingerprint
            or want.keepalive != have.keepalive
            or (have.endpoint is None)  # roaming is fine; a missing endpoint is not
            )


def plan(desired: DesiredDevice, observed: ObservedDevice) -> list[Action]:
    """Actions that make `observed` match `desired` (removals first, then adds, then updates)."""
    actions: list[Action] = []
    for key in sorted(observed.peers, key=lambda k: k.raw):
        if key not in desired.peers:
            actions.append(RemovePeer(key))
    if desired.listen_port and observed.listen_port != desired.listen_port:
        actions.append(SetListenPort(desired.listen_port))
    for key in sorted(desired.peers, key=lambda k: k.raw):
        want = desired.peers[key]
        have = observed.peers.get(key)
        if have is None:
            actions.append(SetPeer(want, "add"))
        elif _differs(want, have):
            actions.append(SetPeer(want, "update"))
    return actions


def apply(device: Device, actions: list[Action]) -> None:
    for action in actions:
        if isinstance(action, RemovePeer):
            device.remove_peer(action.public_key)
        elif isinstance(action, SetListenPort):
            device.set_listen_port(action.port)
        else:
            p = action.peer
            device.set_peer(PeerSpec(public_key=p.public_key, allowed_ips=p.allowed_ips, endpoint=p.endpoint,
                                     psk=p.psk, keepalive=p.keepalive))


class Reconciler:
    """Owns one device; `step(desired)` applies the difference and returns the new observation."""

    def __init__(self, device: Device):
        self.device = device
        self.last_observed: ObservedDevice | None = None

    def heal(self) -> str | None:
        """If the device reports itself dead (`check()`), recreate it and return why; else None.
        Devices without `check`/`recreate` (a plain Device) are assumed healthy. A failed
        recreation raises (ConclaveError) and is retried on the next reconcile."""
        check = getattr(self.device, "check", None)
        why = check() if check is not None else None
        if why is None:
            return None
        self.last_observed = None
        self.device.recreate()
        return str(why)

    def step(self, desired: DesiredDevice) -> tuple[list[Action], ObservedDevice]:
        observed = self.device.read()
        actions = plan(desired, observed)
        if actions:
            apply(self.device, actions)
            for a in actions:
                if isinstance(a, RemovePeer):
                    log.info("wireguard peer removed %s", a.public_key.to_base64())
                elif isinstance(a, SetPeer):
                    log.info("wireguard peer %s %s allowed-ips %s", a.why, a.peer.public_key.to_base64(),
                             ",".join(a.peer.allowed_ips))
            observed = self.device.read()
        self.last_observed = observed
        return actions, observed
