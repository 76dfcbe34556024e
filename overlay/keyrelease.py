"""Per-pair WireGuard pre-shared key agreement after mutual admission.

The pair's leader is the node with the lower WireGuard public key. The follower, once it has
admitted the leader, asks for the PSK; the leader answers only if it has admitted the follower,
sealing a fresh PSK to the follower's attested HPKE key. The follower then proves it opened it
(HMAC under the PSK): that proof is its admission confirmation, and only then does the leader
configure the peer. So a tunnel exists only when both sides admitted each other, and the PSK is
known only to the two attested nodes.

The leader signs every sealed PSK with its statement key (bound into its evidence): HPKE base mode
alone would let anyone on the path seal a PSK of their choice to the follower's public key. The
follower checks that signature under the key of the leader it ADMITTED before opening
(psk_not_authenticated otherwise).
"""
from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.overlay.keys import PresharedKey, WgPublicKey
from conclave.runtime.keys.hpke import HpkePrivateKey, HpkePublicKey, context_info, seal
from conclave.runtime.keys.sender_auth import sign_release, verify_release

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


def seal_signed_psk(psk: PresharedKey, *, follower_hpke: HpkePublicKey, leader: WgPublicKey,
                    follower: WgPublicKey, signer: ed25519.Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """Leader side: (sealed PSK, the leader's statement-key signature over its context and bytes)."""
    info = psk_info(leader, follower)
    sealed = seal(follower_hpke, psk.secret_bytes(), info=info)
    return sealed, sign_release(signer, info=info, sealed=sealed)


def open_signed_psk(key: HpkePrivateKey, sealed: bytes, signature: bytes, *, leader: WgPublicKey,
                    follower: WgPublicKey, leader_statement_key: bytes) -> PresharedKey:
    """Follower side: the PSK, only if the admitted leader's statement key signed it.

    Raises sender_auth.ReleaseNotAuthenticated (not the leader's: psk_not_authenticated) before
    any opening, or SealError / ValueError if the blob does not open as a PSK."""
    info = psk_info(leader, follower)
    verify_release(leader_statement_key, info=info, sealed=sealed, signature=signature)
    return PresharedKey(key.open(sealed, info=info))
