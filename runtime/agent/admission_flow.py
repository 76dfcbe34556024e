"""Admission flow: challenge a peer, verify its evidence and stage claim, admit, reject or evict it.

A mixin of NodeAgent (runtime/agent/agent.py): it uses the agent's peer table, lock, config and pool."""
from __future__ import annotations

import logging
import time
from datetime import datetime

import grpc

from conclave.overlay import keyrelease, rpc
from conclave.overlay.admission import AdmissionRejected
from conclave.overlay.liveness import PeerLiveness
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.reasons import OverlayReason
from conclave.runtime.agent.peers import PeerRecord, PeerState
from conclave.runtime.attestation.core import TeeType

log = logging.getLogger("conclave.agent")


def enrolment_is_newer(new, old) -> bool:
    """Whether admission `new` may replace `old` for the same stage: both proven stage claims
    (hence both signed by the stage's one owner) and `new`'s enrolment issued later. Without a
    manifest (no stage claims checked) the newer admission replaces, as before."""
    new_proof = getattr(new, "stage_proof", None)
    old_proof = getattr(old, "stage_proof", None)
    if new_proof is None and old_proof is None:
        return True
    if new_proof is None or old_proof is None:
        return False
    return new_proof.owner == old_proof.owner and new_proof.issued > old_proof.issued


def claimed_tee(reply: pb.AttestReply) -> str:
    """The CPU TEE a rejected reply claimed, as a bounded label value ("unknown" if none parses):
    a peer's free-form string must never become a metric label."""
    for item in reply.evidence:
        try:
            tee = TeeType(item.tee)
        except ValueError:
            continue
        if tee != TeeType.NVGPU:
            return str(tee)
    return "unknown"


def _grace_epoch(admitted) -> float | None:
    """Unix time of the policy's TCB grace end when the peer was admitted only under it, else None."""
    text = (getattr(admitted, "claims_summary", None) or {}).get("tcb_grace_until")
    if not text:
        return None
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


class AdmissionFlow:
    def _attest_peer(self, rec: PeerRecord, reattest: bool) -> None:
        ann = rec.announcement
        nonce = self.nonces.issue(ann.node_id)
        started = time.monotonic()
        try:
            try:
                reply = self._stub(ann.admission_target).Attest(
                    pb.AttestRequest(nonce=nonce, verifier_wg_public_key=self.identity.wg_public.raw),
                    timeout=rpc.RPC_TIMEOUT)
            except grpc.RpcError as exc:
                self._note_rpc_failure(ann.admission_target, exc)
                with self._lock:
                    rec.next_attempt_mono = time.monotonic() + self.cfg.timing.retry_interval
                    # re-attestation: the peer stays until its evidence is too old (evidence_expired)
                    if not reattest:
                        rec.reason = str(OverlayReason.PEER_UNREACHABLE)
                        rec.reasons = [rec.reason]
                log.info("peer %s unreachable for %s: %s", ann.node_id,
                         "re-attestation" if reattest else "admission", exc.code().name)
                return
            verify_started = time.monotonic()
            try:
                admitted = self.verifier.admit(challenged=ann, reply=reply, nonces=self.nonces)
            except AdmissionRejected as exc:
                self.metrics.observe_verification(claimed_tee(reply), time.monotonic() - verify_started)
                self.metrics.record_admission("rejected", str(exc.reason))
                with self._lock:
                    if reattest:
                        if rec.state in (PeerState.ADMITTED, PeerState.MESHED):   # not evicted meanwhile
                            self._evict(rec, exc.reason, "reattestation_failed", exc.reasons)
                    else:
                        self._reject(rec, exc.reason, exc.reasons)
                return
            self.metrics.observe_verification(str(admitted.tee), time.monotonic() - verify_started)
        finally:
            self.nonces.retire(nonce)
        with self._lock:
            if reattest and rec.state not in (PeerState.ADMITTED, PeerState.MESHED):
                # liveness evicted it while this re-attestation was in the air: the retry path
                # re-admits it (with a fresh nonce) once it is reachable again
                return
            conflict = self._address_conflict(rec)
            if conflict is not None:
                self.metrics.record_admission("rejected", str(OverlayReason.ADDRESS_CONFLICT))
                self._reject(rec, OverlayReason.ADDRESS_CONFLICT, [str(OverlayReason.ADDRESS_CONFLICT)])
                return
            holders = [other for other in self.peers.values() if other is not rec and other.node_id == rec.node_id
                       and other.state in (PeerState.ADMITTED, PeerState.MESHED)]
            if any(not enrolment_is_newer(admitted, other.admitted) for other in holders):
                # `replaced` only for a newer enrolment by the stage's owner: the current holder stays
                self.metrics.record_admission("rejected", str(OverlayReason.ENROLMENT_NOT_NEWER))
                self._reject(rec, OverlayReason.ENROLMENT_NOT_NEWER, [str(OverlayReason.ENROLMENT_NOT_NEWER)])
                return
            for other in holders:
                self._evict(other, OverlayReason.REPLACED, "replaced")
            rec.admitted = admitted
            rec.last_admission_s = time.monotonic() - started
            rec.last_verified_mono = time.monotonic()
            rec.last_verified_wall = time.time()
            rec.reason, rec.reasons = None, []
            if rec.state not in (PeerState.ADMITTED, PeerState.MESHED) or rec.liveness is None:
                rec.liveness = PeerLiveness(last_alive_mono=rec.last_verified_mono)
            else:
                rec.liveness.last_alive_mono = rec.last_verified_mono   # it just answered a challenge
            if rec.state != PeerState.MESHED:
                rec.move(PeerState.ADMITTED)
            if reattest:
                rec.reattestations += 1
            else:
                rec.event("admitted")
            self.metrics.record_admission("admitted", "ok")
            self.metrics.record_evidence_verified(rec.node_id)
            self.metrics.record_tcb_grace(rec.node_id, _grace_epoch(admitted))
            self._refresh_peers_admitted()
        for hook in list(self.admission_hooks):
            try:
                hook.on_admitted(ann, reply, nonce)
            except Exception:  # a hook (the head's attestation bundle) must never break admission
                log.exception("admission hook failed for %s", ann.node_id)
        log.info("peer %s %s (tee=%s)", ann.node_id, "re-attested" if reattest else "admitted", admitted.tee)
        # follower: pull (or re-confirm) the PSK right away; leader: wait for the follower
        if not keyrelease.is_leader(self.identity.wg_public, rec.key):
            if reattest and rec.psk is not None:
                self._reconfirm_key(rec)
            else:
                self._request_key(rec)

    def _address_conflict(self, rec: PeerRecord) -> PeerRecord | None:
        addr = rec.announcement.overlay_address
        if addr == self.me.overlay_address:
            return rec
        for other in self.peers.values():
            if other is not rec and other.node_id != rec.node_id and other.announcement.overlay_address == addr \
                    and other.state in (PeerState.ADMITTED, PeerState.MESHED):
                return other
        return None

    def _reject(self, rec: PeerRecord, reason: str, reasons: list[str]) -> None:
        # an evicted peer that fails again stays "evicted" (with the newest reason)
        if rec.state != PeerState.EVICTED:
            rec.move(PeerState.REJECTED)
        rec.admitted = None
        rec.liveness = None
        rec.forget_keys()
        rec.reason, rec.reasons = str(reason), [str(r) for r in reasons]
        rec.next_attempt_mono = time.monotonic() + self.cfg.timing.retry_interval
        rec.event("rejected", str(reason))
        self._refresh_peers_admitted()
        log.warning("peer %s rejected: reason=%s", rec.node_id, reason, extra={"reason": str(reason), "peer": rec.node_id})

    def _refresh_peers_admitted(self) -> None:
        """Call with the lock held, after any peer state change that can admit or drop a peer."""
        self.metrics.set_peers_admitted(sum(1 for r in self.peers.values()
                                            if r.state in (PeerState.ADMITTED, PeerState.MESHED)))

    def _evict(self, rec: PeerRecord, reason: str, event: str, reasons: list[str] | None = None) -> None:
        rec.move(PeerState.EVICTED)
        rec.admitted = None
        rec.liveness = None   # a reply still in the air lands on the detached object
        rec.forget_keys()
        rec.reason = str(reason)
        rec.reasons = [str(r) for r in (reasons or [reason])]
        rec.last_verified_mono = None
        rec.next_attempt_mono = time.monotonic() + self.cfg.timing.retry_interval
        rec.event(event, str(reason))
        self.metrics.record_eviction(rec.node_id, str(reason))   # also drops its per-peer series
        self._refresh_peers_admitted()
        for hook in list(self.admission_hooks):
            try:
                hook.on_evicted(rec.node_id, reason=str(reason))
            except Exception:
                log.exception("eviction hook failed for %s", rec.node_id)
        log.warning("peer %s evicted (%s): reason=%s", rec.node_id, event, reason,
                    extra={"reason": str(reason), "peer": rec.node_id})
        self._dirty.set()
        self._wake.set()
