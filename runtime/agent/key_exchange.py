"""Key exchange: per-pair WireGuard PSKs (follower asks, leader releases) and brokered secrets, each signed by its attested sender.

A mixin of NodeAgent (runtime/agent/agent.py): it uses the agent's peer table, lock, config and pool."""
from __future__ import annotations

import logging
import time

import grpc

from conclave.overlay import keyrelease, rpc
from conclave.overlay.identity import Role
from conclave.overlay.keys import PresharedKey, WgPublicKey
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.reasons import OverlayReason
from conclave.runtime.agent.peers import PeerRecord, PeerState
from conclave.runtime.keys.broker import SecretRefused, open_signed_secret, secret_purpose, sign_secret
from conclave.runtime.keys.hpke import SealError, seal
from conclave.runtime.keys.sender_auth import ReleaseNotAuthenticated, sign_release

log = logging.getLogger("conclave.agent")


class KeyExchange:
    def _request_key(self, rec: PeerRecord) -> None:
        leader = rec.key
        me = self.identity.wg_public
        stub = self._stub(rec.announcement.admission_target)
        try:
            reply = stub.ReleaseKey(pb.KeyReleaseRequest(requester_wg_public_key=me.raw,
                                                         leader_wg_public_key=leader.raw), timeout=rpc.RPC_TIMEOUT)
        except grpc.RpcError:
            self._retry_soon(rec)
            return
        if reply.status != pb.OK:
            self._retry_soon(rec)  # typically NOT_ADMITTED: the leader has not admitted us yet
            return
        try:
            psk = keyrelease.open_signed_psk(self.identity.hpke_private, bytes(reply.sealed_psk),
                                             bytes(reply.sender_signature), leader=leader, follower=me,
                                             leader_statement_key=self._admitted_statement_key(rec))
        except ReleaseNotAuthenticated:
            with self._lock:
                rec.event("key_release_failed", str(OverlayReason.PSK_NOT_AUTHENTICATED))
            log.warning("peer %s: sealed PSK not signed by its attested statement key; refused", rec.node_id,
                        extra={"reason": str(OverlayReason.PSK_NOT_AUTHENTICATED), "peer": rec.node_id})
            self._retry_soon(rec)
            return
        except (SealError, ValueError):
            with self._lock:
                rec.event("key_release_failed", "unseal_failed")
            self._retry_soon(rec)
            return
        try:
            conf = stub.ConfirmKey(pb.KeyConfirmRequest(
                requester_wg_public_key=me.raw, leader_wg_public_key=leader.raw,
                confirmation=keyrelease.confirmation(psk, leader, me)), timeout=rpc.RPC_TIMEOUT)
        except grpc.RpcError:
            self._retry_soon(rec)
            return
        if conf.status != pb.OK:
            self._retry_soon(rec)
            return
        with self._lock:
            if rec.state not in (PeerState.ADMITTED, PeerState.MESHED):
                return  # evicted meanwhile
            rec.psk = psk
            rec.admitted_me = True
            rec.move(PeerState.MESHED)
            rec.event("meshed")
        self._dirty.set()
        self._wake.set()

    def _reconfirm_key(self, rec: PeerRecord) -> None:
        """After a re-attestation, or when the leader's pings say it lost our pairing: check the
        leader still holds our PSK; if not, agree a new one."""
        leader, me = rec.key, self.identity.wg_public
        with self._lock:
            psk = rec.psk
            if psk is None or rec.state not in (PeerState.ADMITTED, PeerState.MESHED):
                return
        try:
            conf = self._stub(rec.announcement.admission_target).ConfirmKey(pb.KeyConfirmRequest(
                requester_wg_public_key=me.raw, leader_wg_public_key=leader.raw,
                confirmation=keyrelease.confirmation(psk, leader, me)), timeout=rpc.RPC_TIMEOUT)
        except grpc.RpcError:
            return
        if conf.status != pb.OK:
            with self._lock:
                if rec.state not in (PeerState.ADMITTED, PeerState.MESHED):
                    return   # evicted meanwhile
                rec.forget_keys()
                if rec.state == PeerState.MESHED:
                    rec.move(PeerState.ADMITTED)
                rec.event("rekey", conf.reason)
            self._request_key(rec)

    def _retry_soon(self, rec: PeerRecord) -> None:
        with self._lock:
            rec.next_attempt_mono = time.monotonic() + min(self.cfg.timing.tick * 2, 1.0)

    def _wants_secrets_from(self, rec: PeerRecord) -> bool:
        return (self._is_secret_source(rec) and not rec.secrets_fetched
                and any(n not in self.received_secrets for n in self.cfg.want_secrets))

    def _is_secret_source(self, rec: PeerRecord) -> bool:
        """Secrets come only from the head: the manifest's head stage (by node id, admitted with
        role head) when the node booted from a manifest, else (bare test agents) any head."""
        if rec.announcement.role != Role.HEAD:
            return False
        manifest = self.cfg.manifest
        return manifest is None or rec.node_id == manifest.head.node

    def _admitted_statement_key(self, rec: PeerRecord) -> bytes:
        """The statement key bound into the peer's ADMITTED evidence (empty: none, or not admitted):
        the only key whose signature makes a sealed PSK or secret from this peer acceptable."""
        with self._lock:
            admitted = rec.admitted
            return admitted.announcement.statement_key if admitted is not None else b""

    def _fetch_secrets(self, rec: PeerRecord) -> None:
        me = self.identity.wg_public
        complete = True   # False: a forged reply was refused; ask again soon instead of giving up
        for name in self.cfg.want_secrets:
            if name in self.received_secrets:
                continue
            try:
                reply = self._stub(rec.announcement.admission_target).GetSecret(
                    pb.SecretRequest(requester_wg_public_key=me.raw, name=name), timeout=rpc.RPC_TIMEOUT)
            except grpc.RpcError:
                return
            if reply.status == pb.NOT_ADMITTED:
                # the head may not have finished its side of the key exchange yet: try later
                self.secret_errors[name] = reply.reason or "not_admitted"
                self._retry_soon(rec)
                return
            if reply.status != pb.OK:
                self.secret_errors[name] = reply.reason or pb.Status.Name(reply.status).lower()
                continue
            try:
                value = open_signed_secret(self.identity.hpke_private, bytes(reply.sealed_secret),
                                           bytes(reply.sender_signature), name=name, broker_wg=rec.key.raw,
                                           requester_wg=me.raw, sender_key=self._admitted_statement_key(rec))
            except ReleaseNotAuthenticated:
                self.secret_errors[name] = str(OverlayReason.SECRET_NOT_AUTHENTICATED)
                log.warning("secret %s from %s not signed by its attested statement key; refused", name,
                            rec.node_id, extra={"reason": str(OverlayReason.SECRET_NOT_AUTHENTICATED),
                                                "peer": rec.node_id})
                complete = False
                continue
            except (SealError, ValueError):
                self.secret_errors[name] = "unseal_failed"
                continue
            self.received_secrets[name] = (value, rec.node_id)
            self.secret_errors.pop(name, None)
            log.info("secret %s received from %s", name, rec.node_id)
        if not complete:
            self._retry_soon(rec)
            return
        with self._lock:
            if rec.state == PeerState.MESHED:
                rec.secrets_fetched = True

    def handle_release_key(self, requester: WgPublicKey, leader: WgPublicKey) -> tuple[int, bytes, str]:
        me = self.identity.wg_public
        if leader != me or not keyrelease.is_leader(me, requester):
            return pb.REFUSED, b"", "wrong_leader"
        with self._lock:
            rec = self._admitted_by_key(requester)
            if rec is None:
                return pb.NOT_ADMITTED, b"", str(OverlayReason.NOT_ADMITTED)
            if rec.pending_psk is None:
                rec.pending_psk = PresharedKey.generate()
            psk = rec.pending_psk
            hpke = rec.announcement.hpke_public_key   # the attested key (same_identity checked)
        sealed = seal(hpke, psk.secret_bytes(), info=keyrelease.psk_info(me, requester))
        return pb.OK, sealed, ""

    def handle_confirm_key(self, requester: WgPublicKey, leader: WgPublicKey, proof: bytes) -> tuple[int, str]:
        me = self.identity.wg_public
        if leader != me:
            return pb.REFUSED, "wrong_leader"
        with self._lock:
            rec = self._admitted_by_key(requester)
            if rec is None:
                return pb.NOT_ADMITTED, str(OverlayReason.NOT_ADMITTED)
            if rec.pending_psk is not None and keyrelease.check_confirmation(rec.pending_psk, me, requester, proof):
                rec.psk, rec.pending_psk = rec.pending_psk, None
            elif not (rec.psk is not None and keyrelease.check_confirmation(rec.psk, me, requester, proof)):
                return pb.REFUSED, str(OverlayReason.KEY_CONFIRMATION_FAILED)
            changed = rec.state != PeerState.MESHED
            rec.admitted_me = True
            rec.move(PeerState.MESHED)
            if changed:
                rec.event("meshed")
        if changed:
            # Configure our side BEFORE answering: the follower adds us when it gets OK, and its
            # first handshake then finds us ready (otherwise WireGuard waits a 5 s rekey timeout).
            self.reconcile()
            self._wake.set()
        return pb.OK, ""

    def handle_get_secret(self, requester: WgPublicKey, name: str) -> tuple[int, bytes, str]:
        if self.broker is None:
            return pb.REFUSED, b"", str(OverlayReason.UNKNOWN_SECRET)
        with self._lock:
            rec = self._admitted_by_key(requester)
            if rec is None or rec.state != PeerState.MESHED:
                return pb.NOT_ADMITTED, b"", str(OverlayReason.NOT_ADMITTED)
            role, hpke = str(rec.announcement.role), rec.announcement.hpke_public_key
        try:
            sealed = self.broker.release(name, requester_role=role, requester_hpke=hpke,
                                         requester_wg=requester.raw, broker_wg=self.identity.wg_public.raw,
                                         requester_node_id=rec.node_id)
        except SecretRefused as exc:
            return pb.REFUSED, b"", exc.reason
        log.info("secret %s released to %s", name, rec.node_id)
        try:
            self.metrics.record_secret_released(secret_purpose(name))   # the purpose, never the value
        except ValueError:
            log.warning("secret name %r is not a metric label; release not counted", name)
        return pb.OK, sealed, ""

    def sign_psk_release(self, requester: WgPublicKey, sealed: bytes) -> bytes:
        """Our statement-key signature over a PSK we sealed for `requester` (we lead the pair): the
        follower opens only a PSK its admitted leader signed (keyrelease.open_signed_psk)."""
        return sign_release(self.identity.statement_private,
                            info=keyrelease.psk_info(self.identity.wg_public, requester), sealed=sealed)

    def sign_secret_release(self, requester: WgPublicKey, name: str, sealed: bytes) -> bytes:
        """Our statement-key signature over secret `name` sealed for `requester` (broker.sign_secret)."""
        return sign_secret(self.identity.statement_private, sealed, name=name,
                           broker_wg=self.identity.wg_public.raw, requester_wg=requester.raw)
