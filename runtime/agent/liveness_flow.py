"""Liveness: asynchronous Pings to admitted peers (overlay/liveness.py); silence or a re-keyed reply evicts.

A mixin of NodeAgent (runtime/agent/agent.py): it uses the agent's peer table, lock, config and pool."""
from __future__ import annotations

import time

import grpc

from conclave.overlay import keyrelease
from conclave.overlay import stage_statement
from conclave.overlay.keys import WgPublicKey
from conclave.overlay.liveness import PeerLiveness, PingOutcome, judge_reply, new_token, ping_proof, proof_matches
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.reasons import OverlayReason
from conclave.runtime.agent.peers import PeerRecord, PeerState

class LivenessFlow:
    def _check_liveness(self, rec: PeerRecord, now: float, pings: list, stale_channels: list) -> bool:
        """With the lock held: evict a silent or re-keyed peer (True), else queue a ping if one is due.
        Liveness only ever evicts; admission and re-keying stay with attested evidence."""
        t = self.cfg.timing
        lv = rec.liveness
        if lv is None:   # admitted before liveness existed for it (should not happen): start now
            lv = rec.liveness = PeerLiveness(last_alive_mono=now)
        if lv.identity_changed:
            self._evict(rec, OverlayReason.IDENTITY_CHANGED, "identity_changed")
            return True
        if lv.overdue(now, t.liveness_timeout):
            self._evict(rec, OverlayReason.PEER_UNREACHABLE, "unreachable")
            return True
        if lv.reset_channel:
            lv.reset_channel = False
            stale_channels.append(rec.announcement.admission_target)
        if lv.due(now, t.liveness_interval):
            lv.in_flight = True
            lv.last_sent_mono = now
            pings.append((rec, lv))
        return False

    def _pairing_lost(self, rec: PeerRecord, now: float) -> bool:
        """Follower only: the leader keeps answering that it does not hold our pairing (it evicted
        us and re-admitted us while we stayed meshed), so re-confirm the PSK with it, which re-keys.
        The leader never acts on the hint: the follower drives every key agreement."""
        lv = rec.liveness
        return (lv is not None and rec.state == PeerState.MESHED and rec.psk is not None
                and keyrelease.is_leader(rec.key, self.identity.wg_public)
                and lv.pairing_lost(now, 2 * self.cfg.timing.liveness_interval))

    def _send_ping(self, rec: PeerRecord, lv: PeerLiveness) -> None:
        """Start one asynchronous Ping (no lock held, no thread used while it is in the air)."""
        token = new_token()
        sent = time.monotonic()
        psk = rec.psk   # proves our pairing to the peer; without it the peer answers meshed=false
        proof = ping_proof(psk.secret_bytes(), token, self.identity.wg_public, rec.key) if psk else b""
        request = pb.PingRequest(verifier_wg_public_key=self.identity.wg_public.raw, token=token,
                                 proof=proof)
        try:
            call = self._stub(rec.announcement.admission_target).Ping.future(
                request, timeout=self.cfg.timing.ping_deadline())
        except Exception:   # channel closed while stopping
            with self._lock:
                lv.record(PingOutcome.NO_REPLY, time.monotonic(), sent=sent, peer_meshed=None)
            return
        call.add_done_callback(lambda fut: self._on_ping_done(rec, lv, token, sent, fut))

    def _on_ping_done(self, rec: PeerRecord, lv: PeerLiveness, token: bytes, sent: float, fut) -> None:
        """gRPC callback thread: record the outcome only (no RPC, no eviction here; the main loop
        acts on it at its next tick). A stage statement in the reply is kept only when it verifies
        under the statement key bound into the peer's admitted evidence."""
        timed_out, meshed = False, None
        try:
            reply = fut.result()
            outcome = judge_reply(rec.key, token, bytes(reply.wg_public_key), bytes(reply.token))
            meshed = bool(reply.meshed)
            if outcome == PingOutcome.ALIVE and reply.stage_statement:
                self._record_statement(rec, bytes(reply.stage_statement), bytes(reply.statement_signature))
        except grpc.RpcError as exc:
            outcome = PingOutcome.NO_REPLY
            timed_out = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        except Exception:   # cancelled (channel closed) or anything unexpected: just no reply
            outcome = PingOutcome.NO_REPLY
        with self._lock:
            lv.record(outcome, time.monotonic(), sent=sent, peer_meshed=meshed, timed_out=timed_out)
        if outcome == PingOutcome.IDENTITY_CHANGED:
            self._wake.set()

    def handle_ping(self, caller: WgPublicKey, token: bytes = b"",
                    proof: bytes = b"") -> tuple[WgPublicKey, bool]:
        """Our key, and whether we hold a meshed pairing (agreed PSK) with the caller's key, told
        only to a caller that proves that PSK (anyone else gets meshed=false, as for an unknown key)."""
        with self._lock:
            rec = self._admitted_by_key(caller)
            psk = rec.psk if rec is not None and rec.state == PeerState.MESHED else None
        meshed = proof_matches(psk.secret_bytes() if psk else None, token, caller,
                               self.identity.wg_public, proof)
        return self.identity.wg_public, meshed
