"""Liveness of admitted peers: judging one Ping reply, and when silence means eviction.

Why a separate probe: re-attestation runs every ten minutes and tolerates an unreachable peer
until its evidence expires (2 x interval + 30 s), so a host whose processes died or whose link
went down would stay "meshed" for ~20 minutes. A cheap Ping every `interval` seconds closes
that gap: no successful reply for `timeout` seconds evicts the peer (peer_unreachable); a reply
naming another WireGuard key than the admitted one evicts it at once (identity_changed: the
host restarted with new keys, or someone else now answers at that address).

Security: liveness ONLY EVER EVICTS. Ping travels in plaintext on the underlay and proves
nothing, so nothing here admits, re-keys on its own authority or extends evidence validity. A
forged reply can at most keep an unreachable peer listed until its evidence expires (the
re-attestation deadline still applies), or make us evict a peer (which an on-path attacker can
do anyway by dropping packets). The reply's `meshed` bit is a hint of the same strength: it can
only make a follower re-check its PSK with the leader (which then needs attested HPKE keys).
And it is told only to the admitted peer itself: the request carries ping_proof, an HMAC under
the PSK the two agreed, so a caller that merely names a meshed peer's public key gets
meshed=false, the same reply as for an unknown key.

Everything here is pure (the clock is an argument); the agent does the RPCs.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

from conclave.overlay.keys import KEY_LEN, WgPublicKey

TOKEN_LEN = 16
PROOF_LEN = 32
_PROOF_DOMAIN = b"conclave/ping-proof/v1\0"


def ping_proof(psk_secret: bytes, token: bytes, caller: WgPublicKey, callee: WgPublicKey) -> bytes:
    """HMAC-SHA256 under the pair's agreed PSK over (domain, token, caller key, callee key): proves
    that the caller holds our pairing, so only the admitted peer learns whether it is meshed."""
    return hmac.new(psk_secret, _PROOF_DOMAIN + token + caller.raw + callee.raw, hashlib.sha256).digest()


def proof_matches(psk_secret: bytes | None, token: bytes, caller: WgPublicKey, callee: WgPublicKey,
                  proof: bytes) -> bool:
    """Constant-time check of a Ping proof; no PSK or a wrong-length proof never matches."""
    if psk_secret is None or len(proof) != PROOF_LEN:
        return False
    return hmac.compare_digest(ping_proof(psk_secret, token, caller, callee), proof)


class PingOutcome(StrEnum):
    ALIVE = "alive"                        # the admitted key answered, token echoed
    IDENTITY_CHANGED = "identity_changed"  # a well-formed reply from another WireGuard key
    BAD_REPLY = "bad_reply"                # token not echoed / malformed key: counts as no reply
    NO_REPLY = "no_reply"                  # RPC error or timeout


def new_token() -> bytes:
    return secrets.token_bytes(TOKEN_LEN)


def judge_reply(expected: WgPublicKey, token: bytes, reply_key: bytes, reply_token: bytes) -> PingOutcome:
    """Classify a Ping reply. The token is checked first: a reply to another request (or a
    garbled one) says nothing about who answers now, so it can never evict by itself."""
    if len(reply_token) != TOKEN_LEN or reply_token != token or len(reply_key) != KEY_LEN:
        return PingOutcome.BAD_REPLY
    if WgPublicKey(reply_key) != expected:
        return PingOutcome.IDENTITY_CHANGED
    return PingOutcome.ALIVE


@dataclass
class PeerLiveness:
    """Liveness of one admitted peer. A fresh object per admission, so a reply to a ping sent
    before an eviction lands on a detached object and changes nothing."""

    last_alive_mono: float                 # last successful ping (or the admission itself)
    last_sent_mono: float = 0.0
    in_flight: bool = False
    failures: int = 0                      # consecutive pings without a good reply
    rtt_s: float | None = None             # of the last good reply
    identity_changed: bool = False         # a reply named another key: evict on the next tick
    peer_not_meshed_since: float | None = None   # replies say the peer lost our pairing (hint)
    reset_channel: bool = False            # a ping timed out: the TCP connection may be dead

    def silent_for(self, now: float) -> float:
        return now - self.last_alive_mono

    def overdue(self, now: float, timeout: float) -> bool:
        """No good reply for longer than `timeout` seconds: the peer is unreachable."""
        return self.silent_for(now) > timeout

    def due(self, now: float, interval: float) -> bool:
        return not self.in_flight and now - self.last_sent_mono >= interval

    def record(self, outcome: PingOutcome, now: float, *, sent: float, peer_meshed: bool | None,
               timed_out: bool = False) -> None:
        """Apply one ping's outcome (the caller holds the agent lock)."""
        self.in_flight = False
        if outcome == PingOutcome.ALIVE:
            self.last_alive_mono = max(self.last_alive_mono, now)
            self.failures = 0
            self.rtt_s = now - sent
            if peer_meshed is False:
                if self.peer_not_meshed_since is None:
                    self.peer_not_meshed_since = now
            else:
                self.peer_not_meshed_since = None
            return
        if outcome == PingOutcome.IDENTITY_CHANGED:
            self.identity_changed = True
            return
        self.failures += 1
        if timed_out:
            self.reset_channel = True

    def pairing_lost(self, now: float, grace: float) -> bool:
        """The peer has said for at least `grace` seconds that it does not hold our pairing."""
        return self.peer_not_meshed_since is not None and now - self.peer_not_meshed_since >= grace

    def to_json(self, now: float) -> dict:
        return {"alive_age_s": round(self.silent_for(now), 3), "ping_failures": self.failures,
                "ping_rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 1)}
