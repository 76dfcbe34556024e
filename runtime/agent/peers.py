"""The agent's view of every peer it has heard of: admission state, keys, reasons, history."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from conclave.overlay.admission import AdmittedPeer
from conclave.overlay.identity import Announcement
from conclave.overlay.keys import PresharedKey, WgPublicKey
from conclave.overlay.liveness import PeerLiveness

MAX_EVENTS = 8


class PeerState(StrEnum):
    DISCOVERED = "discovered"   # seen via rendezvous, not yet attested
    ADMITTED = "admitted"       # we admitted it; waiting for its confirmation / PSK
    MESHED = "meshed"           # both sides admitted, PSK agreed: on the device
    REJECTED = "rejected"       # admission failed (reason kept)
    EVICTED = "evicted"         # was admitted, then re-attestation failed / expired / policy


# Which peer-state changes the agent makes (a pure table; PeerRecord.move enforces it). Admission can
# start again from any state (a retry, a re-attestation, a re-admission after eviction); a pairing is
# MESHED only once admitted; a re-key drops MESHED back to ADMITTED; only an admitted peer is evicted.
PEER_TRANSITIONS: dict[PeerState, frozenset[PeerState]] = {
    PeerState.DISCOVERED: frozenset({PeerState.ADMITTED, PeerState.REJECTED}),
    PeerState.ADMITTED: frozenset({PeerState.ADMITTED, PeerState.MESHED, PeerState.REJECTED, PeerState.EVICTED}),
    PeerState.MESHED: frozenset({PeerState.MESHED, PeerState.ADMITTED, PeerState.REJECTED, PeerState.EVICTED}),
    PeerState.REJECTED: frozenset({PeerState.ADMITTED, PeerState.REJECTED}),
    PeerState.EVICTED: frozenset({PeerState.ADMITTED, PeerState.REJECTED, PeerState.EVICTED}),
}


class InvalidPeerTransition(RuntimeError):
    pass


def check_peer_transition(old: PeerState, new: PeerState) -> None:
    if new not in PEER_TRANSITIONS[old]:
        raise InvalidPeerTransition(f"peer {old} -> {new} is not a valid transition")


def _summary(admitted, key: str):
    """One value of an admitted peer's claims summary (overlay/admission.py), None when absent."""
    if admitted is None:
        return None
    return (getattr(admitted, "claims_summary", None) or {}).get(key)


@dataclass
class PeerRecord:
    announcement: Announcement
    state: PeerState = PeerState.DISCOVERED
    admitted: AdmittedPeer | None = None
    last_verified_mono: float | None = None     # monotonic time of the last successful attestation
    last_verified_wall: float | None = None
    reason: str | None = None                   # of the last rejection / eviction
    reasons: list[str] = field(default_factory=list)
    psk: PresharedKey | None = None             # agreed (confirmed) PSK
    pending_psk: PresharedKey | None = None     # leader: issued, not yet confirmed
    admitted_me: bool = False                   # the peer confirmed it admitted us
    next_attempt_mono: float = 0.0
    in_flight: bool = False
    last_seen_mono: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (wall, event, reason)
    secrets_fetched: bool = False
    reattestations: int = 0
    last_admission_s: float | None = None      # challenge sent -> admitted decision
    liveness: PeerLiveness | None = None        # while admitted: Ping bookkeeping (fresh per admission)
    stage_statement: dict | None = None         # the peer's latest verified stage statement (Ping replies)
    stage_statement_error: str | None = None
    stage_statement_signed: tuple[bytes, bytes] | None = None   # (body, signature) for the run report

    @property
    def key(self) -> WgPublicKey:
        return self.announcement.wg_public_key

    @property
    def node_id(self) -> str:
        return self.announcement.node_id

    def move(self, new: PeerState) -> None:
        """Change state along PEER_TRANSITIONS only (raises InvalidPeerTransition otherwise)."""
        check_peer_transition(self.state, new)
        self.state = new

    def event(self, what: str, reason: str = "") -> None:
        self.events.append((time.time(), what, reason))
        del self.events[:-MAX_EVENTS]

    def forget_keys(self) -> None:
        self.psk = None
        self.pending_psk = None
        self.admitted_me = False
        self.secrets_fetched = False

    def to_json(self, now_mono: float, observed=None) -> dict:
        ann = self.announcement
        out = {
            "node_id": ann.node_id, "owner": ann.owner, "role": str(ann.role),
            "wg_public_key": ann.wg_public_key.to_base64(), "overlay_address": str(ann.overlay_address),
            "endpoint": ann.wireguard_endpoint, "state": str(self.state),
            "admitted_by_us": self.state in (PeerState.ADMITTED, PeerState.MESHED),
            "admitted_us": self.admitted_me,
            "evidence_age_s": None if self.last_verified_mono is None else round(now_mono - self.last_verified_mono, 3),
            "reason": self.reason, "reasons": list(self.reasons),
            "reattestations": self.reattestations,
            "admission_ms": None if self.last_admission_s is None else round(self.last_admission_s * 1000, 1),
            "tee": str(self.admitted.tee) if self.admitted else None,
            "simulated": self.admitted.simulated if self.admitted else None,
            # what this node's own verifier found in the evidence it admitted (None: not admitted)
            "tcb_status": _summary(self.admitted, "tcb_status"),
            "tcb_grace_until": _summary(self.admitted, "tcb_grace_until"),   # kept OutOfDate under the policy's grace
            "revocation_checked": _summary(self.admitted, "revocation_checked"),
            "collateral_age_s": _summary(self.admitted, "collateral_age_s"),
            # the owner its enrolment proves (None: not admitted, or admitted without a manifest)
            "owner_proven": (self.admitted.stage_proof.owner if self.admitted and self.admitted.stage_proof
                             else None),
            "events": [{"at": round(t, 3), "event": e, "reason": r} for t, e, r in self.events],
            "on_device": observed is not None,
            "latest_handshake": None, "rx_bytes": None, "tx_bytes": None,
            "alive_age_s": None, "ping_failures": None, "ping_rtt_ms": None,
            "stage_statement": self.stage_statement, "stage_statement_error": self.stage_statement_error,
        }
        if self.liveness is not None:
            out.update(self.liveness.to_json(now_mono))
        if observed is not None:
            out["latest_handshake"] = observed.latest_handshake
            out["rx_bytes"] = observed.rx_bytes
            out["tx_bytes"] = observed.tx_bytes
        return out
