"""Per-pair WireGuard pre-shared key agreement after mutual admission.

The pair's leader is the node with the lower WireGuard public key. The follower, once it has
admitted the leader, asks for the PSK; the leader answers only if it has admitted the follower,
sealing a fresh PSK to the follower's attested HPKE key. The follower then proves it opened it
(HMAC under the PSK): that proof is its admission confirmation, and only then does the leader
configure the peer. So a tunnel exists only when both sides admitted each other, and the PSK is
known only to the two attested nodes.
"""
from __future__ import annotations

import hashlib
import hmac

from conclave.overlay.keys import PresharedKey, WgPublicKey
from conclave.runtime.keys.hpke import context_info

PSK_PURPOSE = "conclave/psk/v1"
CONFIRM_LABEL = b"conclave/psk-confirm/v1"


def is_leader(me: WgPublicKey, peer: WgPublicKey) -> bool:
    return me.raw < peer.raw


def psk_info(leader: WgPublicKey, follower: WgPublicKey) -> bytes:
    return context_info(PSK_PURPOSE, leader.raw, follower.raw)


def confirmation(psk: PresharedKey, leader: WgPublicKey, follower: WgPublicKey) -> bytes:
    return hmac.new(psk.secret_bytes(), CONFIRM_LABEL + leader.raw + follower.raw, hashlib.sha256).digest()


def check_confirmation(psk: PresharedKey, leader: WgPublicKey, follower: WgPublicKey, proof: bytes) -> bool:
    return hmac.compare_digest(confirmation(psk, leader, follower), bytes(proof))
