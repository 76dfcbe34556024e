"""The node agent: attest itself, announce, admit peers mutually, agree PSKs, keep the device
in line with the admitted set, re-attest on a schedule, and evict whoever stops passing.

Threads: one main loop (discovery, scheduling, evidence-age checks, liveness, reconcile), a
small pool for per-peer network work (challenge, key release, secrets), gRPC's server pool, the
status socket. The peer table is guarded by one lock; no network call happens while holding it.

Liveness (overlay/liveness.py): every Timing.liveness_interval the main loop sends each admitted
peer an asynchronous Ping (a gRPC future: no thread waits on it, its callback only records the
outcome); silence for Timing.liveness_timeout evicts (peer_unreachable), a reply naming another
WireGuard key evicts at once (identity_changed). Liveness only ever evicts. An evicted peer that
is alive again is re-admitted by the ordinary retry path (fresh challenge, new PSK). A dead
WireGuard device (daemon killed, interface gone) is recreated on the next reconcile with the
same keys, and every meshed peer re-applied: no re-admission.

Metrics: one runtime.metrics.ConclaveMetrics per agent, served on the overlay address only
(the head appends vLLM's /metrics, cfg.metrics_upstream). Every verifier decision counts as an
admission (join or re-attestation; a failed re-attestation is a rejection AND an eviction).
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import grpc

from conclave.overlay import keyrelease, rpc
from conclave.overlay.admission import AdmissionRejected, Verifier, answer_challenge
from conclave.runtime.agent.verifier import build_verifier
from conclave.overlay.desired import AdmittedPeerConfig, desired_device
from conclave.overlay.device import WgDevice
from conclave.overlay.firewall import Firewall, ruleset
from conclave.overlay.identity import Announcement, NodeIdentity, Role
from conclave.overlay.keys import PresharedKey, WgPublicKey
from conclave.overlay.liveness import (PeerLiveness, PingOutcome, judge_reply, new_token, ping_proof,
                                       proof_matches)
from conclave.overlay.nonces import NonceCache
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from conclave.overlay.reasons import OverlayReason
from conclave.overlay import stage_statement
from conclave.overlay.reconcile import Reconciler, RemovePeer
from conclave.overlay.rendezvous import RendezvousClient, RendezvousService, announcement_key
from conclave.runtime.agent.config import NodeConfig
from conclave.runtime.agent.launcher import Launcher
from conclave.runtime.agent.peers import PeerRecord, PeerState
from conclave.runtime.agent.state import AgentState, check_transition
from conclave.runtime.agent.status import StatusServer
from conclave.runtime.attestation.core import TeeType
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.keys.broker import (SecretRefused, SecretsBroker, open_signed_secret, secret_purpose,
                                          sign_secret)
from conclave.runtime.keys.hpke import SealError, seal
from conclave.runtime.keys.sender_auth import ReleaseNotAuthenticated, sign_release
from conclave.runtime.keys.secret import SecretValue
from conclave.runtime.metrics import ConclaveMetrics, MetricsServer, serve_metrics

log = logging.getLogger("conclave.agent")
MAX_RECORDS = 512
STALE_AFTER = 120.0   # seconds without an announcement before a non-admitted peer is left alone


class NodeAgent:
    def __init__(self, cfg: NodeConfig, *, identity: NodeIdentity | None = None):
        self.cfg = cfg
        self.identity = identity or NodeIdentity.generate()
        self.me = Announcement(
            node_id=cfg.node_name, owner=cfg.owner, role=cfg.role, underlay_host=cfg.underlay_host,
            admission_port=cfg.admission_port, wireguard_port=cfg.wireguard_port,
            wg_public_key=self.identity.wg_public, hpke_public_key=self.identity.hpke_public,
            overlay_address=cfg.overlay_address, statement_key=self.identity.statement_public)
        self.verifier = build_verifier(cfg)
        if cfg.manifest is not None:   # every peer's stage claim: a stage, its role, its owner's enrolment
            self.verifier.bind_manifest(cfg.manifest)
        self.enrolment = b""      # our owner's enrolment of this boot's keys (status command `enroll`)
        self.stage_proof = None   # what that enrolment proves (enrolment.ProvenStage)
        self.nonces = NonceCache(ttl=cfg.timing.nonce_ttl)
        self.broker = SecretsBroker(cfg.secrets, cfg.allowed_roles) if cfg.secrets else None
        self.received_secrets: dict[str, tuple[SecretValue, str]] = {}
        self.secret_errors: dict[str, str] = {}
        self.peers: dict[tuple[str, bytes, bytes, bytes], PeerRecord] = {}   # announcement_key: node, wg, hpke, statement
        self.state = AgentState.BOOT
        self.metrics = ConclaveMetrics()   # this agent's own registry, served on the overlay address
        self._metrics_server: MetricsServer | None = None
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._dirty = threading.Event()   # the admitted set changed: reconcile on the next wake-up
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="conclave-peer")
        self._channels: dict[str, grpc.Channel] = {}
        self._channel_lock = threading.Lock()
        self._device = None
        self._reconciler: Reconciler | None = None
        self._device_lock = threading.Lock()
        self._firewall: Firewall | None = None
        self._server: grpc.Server | None = None
        self._rdv_server: grpc.Server | None = None
        self._status: StatusServer | None = None
        self._rendezvous: RendezvousClient | None = None
        self._loop_thread: threading.Thread | None = None
        self._discovery_thread: threading.Thread | None = None
        self._last_reconcile = 0.0
        self._last_announce = 0.0
        self._reconcile_error: str | None = None
        self.device_restarts = 0                      # the WireGuard device died and was recreated
        self.device_restart_reason: str | None = None
        self.device_restarted_at: float | None = None
        self.started_wall = time.time()
        self.own_evidence_ok_wall: float | None = None
        self.first_announce_wall: float | None = None
        self._removed_at: dict[WgPublicKey, float] = {}   # when the device last dropped a peer
        self.own_evidence_error: str | None = None
        self._last_self_check = time.monotonic()
        self.launcher = Launcher(self.ray_token) if cfg.allow_launch else None
        self._statement: tuple[bytes, bytes] | None = None   # our signed stage statement (Ping replies)
        self.stage_extra: dict = {}   # the serving layer's own status (node lifecycle), shown in status()
        self.admission_hooks: list = []   # objects with on_admitted(ann, reply, nonce) / on_evicted(node_id)

    # ------------------------------------------------------------------ lifecycle
    def _transition(self, new: AgentState) -> None:
        check_transition(self.state, new)
        log.info("agent state %s -> %s", self.state, new)
        self.state = new

    def self_attest(self) -> None:
        """Collect our own evidence for a fresh nonce and admit ourselves under our own policy:
        a misconfigured node (wrong measurement, sim under production) stops here, loudly."""
        nonce = self.nonces.issue(self.me.node_id)
        try:
            reply = answer_challenge(me=self.me, source=self.cfg.evidence_source,
                                     manifest_digest=self.cfg.manifest_digest, nonce=nonce,
                                     enrolment=self.enrolment)
            self.verifier.admit(challenged=self.me, reply=reply, nonces=self.nonces, enrolment_optional=True)
        except AdmissionRejected as exc:
            raise ConclaveError("self_attestation_failed", f"own evidence is not admissible: [{exc.reason}]",
                                exit_code=ExitCode.VERIFICATION_FAILED) from None
        finally:
            self.nonces.retire(nonce)
        self.own_evidence_ok_wall = time.time()

    def start(self) -> None:
        """boot -> attested -> meshed: evidence, device, firewall, servers, loop."""
        self.self_attest()
        self._transition(AgentState.ATTESTED)
        try:
            self._start_device()
            self._start_firewall()
            self._start_servers()
            self._transition(AgentState.MESHED)
        except Exception:
            self.stop()
            raise
        self._loop_thread = threading.Thread(target=self._loop, name="conclave-agent", daemon=True)
        self._loop_thread.start()
        if self._rendezvous is not None and self._rendezvous.targets:
            self._discovery_thread = threading.Thread(target=self._discovery_loop, name="conclave-discovery",
                                                      daemon=True)
            self._discovery_thread.start()

    def _start_device(self) -> None:
        cfg = self.cfg
        if cfg.device_factory is not None:
            self._device = cfg.device_factory(cfg, self.identity, cfg.overlay_address)
        else:
            self._device = WgDevice(cfg.interface, private_key=self.identity.wg_private,
                                    listen_port=cfg.wireguard_port, address=cfg.overlay_address,
                                    overlay=cfg.overlay_cidr)
        self._reconciler = Reconciler(self._device)

    def _start_firewall(self) -> None:
        mode = self.cfg.firewall
        if mode == "none" or self.cfg.device_factory is not None:
            return
        if not Firewall.available():
            if mode == "nft":
                raise ConclaveError("nft_unavailable", "nftables requested but `nft` is not usable here")
            log.warning("nftables not available: relying on overlay-only binding")
            return
        ports = [self.cfg.admission_port] + ([self.cfg.serve_rendezvous_port] if self.cfg.serve_rendezvous_port else [])
        ports += list(self.cfg.public_tcp_ports)
        self._firewall = Firewall(self.cfg.interface)
        self._firewall.apply(ruleset(interface=self.cfg.interface, wireguard_port=self.cfg.wireguard_port,
                                     tcp_ports=ports, overlay=self.cfg.overlay_cidr))

    def _start_servers(self) -> None:
        from conclave.runtime.agent.service import NodeService
        cfg = self.cfg
        self._server = rpc.server()
        pb_grpc.add_NodeServicer_to_server(NodeService(self), self._server)
        rpc.bind(self._server, cfg.listen_host, cfg.admission_port)
        if cfg.serve_rendezvous_port:
            self._rdv_server = rpc.server(workers=4)
            pb_grpc.add_RendezvousServicer_to_server(RendezvousService(), self._rdv_server)
            rpc.bind(self._rdv_server, cfg.listen_host, cfg.serve_rendezvous_port)
            self._rdv_server.start()
        self._server.start()
        targets = list(cfg.rendezvous)
        self._rendezvous = RendezvousClient(targets)
        if cfg.metrics_port and cfg.device_factory is None:
            # default: the overlay address only (the operator's scraper is inside the deployment, never on
            # the underlay); --metrics-host names another specific address (e.g. the pod IP), never a wildcard
            host = cfg.metrics_host or str(cfg.overlay_address)
            self._metrics_server = serve_metrics(self.metrics.registry, host,
                                                 cfg.metrics_port, upstream_url=cfg.metrics_upstream)
        self._status = StatusServer(cfg.status_socket, self.handle_status_command)
        self._status.start()

    def run_forever(self, *, on_started=None, on_stopping=None) -> None:
        """on_started / on_stopping: the head's TLS front server starts after the agent and stops first."""
        self.start()
        try:
            if on_started is not None:
                on_started()
            while not self._stop.wait(0.5):
                pass
        finally:
            try:
                if on_stopping is not None:
                    on_stopping()
            finally:
                self.stop()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def stop(self) -> None:
        """draining -> stopped: remove every peer, close servers and the device."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            if self.state not in (AgentState.DRAINING, AgentState.STOPPED):
                self._transition(AgentState.DRAINING)
        for thread in (self._loop_thread, self._discovery_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for closer in (lambda: self._server and self._server.stop(0.5),
                       lambda: self._rdv_server and self._rdv_server.stop(0.5),
                       lambda: self._status and self._status.close(),
                       lambda: self._metrics_server and self._metrics_server.close(),
                       lambda: self._rendezvous and self._rendezvous.close(),
                       lambda: self._firewall and self._firewall.remove(),
                       lambda: self._device is not None and hasattr(self._device, "close") and self._device.close()):
            try:
                closer()
            except Exception as exc:  # keep tearing down the rest
                log.warning("teardown step failed: %s", exc)
        for ch in list(self._channels.values()):
            ch.close()
        with self._lock:
            if self.state == AgentState.DRAINING:
                self._transition(AgentState.STOPPED)

    def ray_token(self) -> bytes | None:
        """The Ray cluster token: our own (the head generated it) or the one the head released to us."""
        own = self.cfg.secrets.get("ray_token")
        if own is not None:
            return own.reveal()
        got = self.received_secrets.get("ray_token")
        return got[0].reveal() if got else None

    def mark_serving(self, serving: bool = True) -> None:
        with self._lock:
            self._transition(AgentState.SERVING if serving else AgentState.MESHED)

    # ------------------------------------------------------------------ main loop
    def _loop(self) -> None:
        t = self.cfg.timing
        while not self._stop.is_set():
            try:
                self._tick()
                if self.launcher is not None:
                    self.launcher.reap()
            except Exception:
                log.exception("agent tick failed")
            now = time.monotonic()
            if self._dirty.is_set() or now - self._last_reconcile >= t.reconcile_interval:
                self._dirty.clear()
                try:
                    self.reconcile()
                except Exception:   # e.g. a hung `wg` (TimeoutExpired): the loop must survive it
                    log.exception("reconcile failed")
            self._wake.wait(t.tick)
            self._wake.clear()

    def _stub(self, target: str) -> pb_grpc.NodeStub:
        with self._channel_lock:
            ch = self._channels.get(target)
            if ch is None:
                ch = self._channels[target] = rpc.channel(target)
        return pb_grpc.NodeStub(ch)

    def _reset_channel(self, target: str) -> None:
        """Drop the cached channel after a timeout: its TCP connection may be dead without knowing it
        (a partition drops packets, no RST), and would otherwise stall recovery for a TCP retransmit
        backoff. The next RPC opens a fresh connection. Never call from a gRPC callback."""
        with self._channel_lock:
            ch = self._channels.pop(target, None)
        if ch is not None:
            ch.close()

    def _note_rpc_failure(self, target: str, exc: grpc.RpcError) -> None:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            self._reset_channel(target)

    def _tick(self) -> None:
        t = self.cfg.timing
        now = time.monotonic()
        if now - self._last_self_check >= t.reattest_interval:
            self._last_self_check = now
            self._submit_self_check()
        age_limit = t.evidence_age_limit()
        pings: list[tuple[PeerRecord, PeerLiveness]] = []
        stale_channels: list[str] = []
        with self._lock:
            for rec in list(self.peers.values()):
                if rec.state in (PeerState.ADMITTED, PeerState.MESHED) and t.liveness_enabled \
                        and self._check_liveness(rec, now, pings, stale_channels):
                    continue   # evicted (even with a task in flight: that task's result is then dropped)
                if rec.in_flight:
                    continue
                if rec.state in (PeerState.ADMITTED, PeerState.MESHED):
                    age = now - (rec.last_verified_mono or 0)
                    if age > age_limit:
                        self._evict(rec, OverlayReason.EVIDENCE_EXPIRED, "evidence_expired")
                        continue
                    if age >= t.reattest_interval:
                        self._submit(rec, self._attest_peer, True)
                    elif not rec.admitted_me and keyrelease.is_leader(rec.key, self.identity.wg_public) \
                            and now >= rec.next_attempt_mono:
                        self._submit(rec, self._request_key)
                    elif self._pairing_lost(rec, now):
                        rec.liveness.peer_not_meshed_since = None   # act at most once per grace period
                        rec.event("pairing_check", "peer_not_meshed")
                        self._submit(rec, self._reconfirm_key)
                    elif rec.state == PeerState.MESHED and self._wants_secrets_from(rec) \
                            and now >= rec.next_attempt_mono:
                        self._submit(rec, self._fetch_secrets)
                elif now - rec.last_seen_mono > STALE_AFTER:
                    continue  # no longer announced anywhere: stop knocking (kept for status until pruned)
                elif now >= rec.next_attempt_mono and self.state in (AgentState.MESHED, AgentState.SERVING):
                    self._submit(rec, self._attest_peer, False)
        for target in stale_channels:
            self._reset_channel(target)
        for rec, lv in pings:
            self._send_ping(rec, lv)

    # ------------------------------------------------------------------ liveness (see overlay/liveness.py)
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

    # ------------------------------------------------------------------ stage statements
    def publish_statement(self, statement: dict) -> None:
        """Sign our stage statement (shard verified, Ray state) with the key our evidence binds;
        every Ping reply carries the latest one."""
        signed = stage_statement.sign(self.identity.statement_private,
                                      {**statement, "node_id": self.cfg.node_name,
                                       "wg_public_key": self.identity.wg_public.to_base64()})
        with self._lock:
            self._statement = signed

    def own_statement(self) -> tuple[bytes, bytes] | None:
        with self._lock:
            return self._statement

    def _record_statement(self, rec: PeerRecord, body: bytes, signature: bytes) -> None:
        try:
            value = stage_statement.verify(rec.announcement.statement_key, body, signature)
        except stage_statement.StatementInvalid as exc:
            with self._lock:
                rec.stage_statement, rec.stage_statement_error = None, str(exc)
            return
        if value.get("node_id") != rec.node_id or value.get("wg_public_key") != rec.key.to_base64():
            with self._lock:
                rec.stage_statement, rec.stage_statement_error = None, "statement names another node"
            return
        with self._lock:
            rec.stage_statement, rec.stage_statement_error = value, None
            rec.stage_statement_signed = (body, signature)

    def peer_statements(self) -> dict[str, dict]:
        """node id -> the latest verified stage statement of each MESHED peer."""
        with self._lock:
            return {rec.node_id: dict(rec.stage_statement) for rec in self.peers.values()
                    if rec.state == PeerState.MESHED and rec.stage_statement is not None}

    def _discovery_loop(self) -> None:
        """Announce and list on its own thread: a slow or black-holed rendezvous must never delay
        evictions or reconciles in the main loop."""
        t = self.cfg.timing
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now - self._last_announce >= t.announce_interval:
                    if self._rendezvous.announce(self.me, self.identity.statement_private) \
                            and self.first_announce_wall is None:
                        self.first_announce_wall = time.time()
                    self._last_announce = now
                before = len(self.peers)
                self._merge(self._rendezvous.list())
                if len(self.peers) != before:
                    self._wake.set()
            except Exception:
                log.exception("discovery failed")
            self._stop.wait(t.tick)

    def _merge(self, announcements: list[Announcement]) -> None:
        now = time.monotonic()
        with self._lock:
            for ann in announcements:
                if ann.wg_public_key == self.identity.wg_public or ann.node_id == self.me.node_id:
                    continue
                key = announcement_key(ann)   # a forgery beside the real announcement is a record of its own
                rec = self.peers.get(key)
                if rec is None:
                    if len(self.peers) >= MAX_RECORDS:
                        self._prune()
                        if len(self.peers) >= MAX_RECORDS:
                            continue
                    rec = self.peers[key] = PeerRecord(announcement=ann)
                    rec.event("discovered")
                elif rec.state == PeerState.DISCOVERED or rec.state == PeerState.REJECTED:
                    rec.announcement = ann  # endpoints may move; keys are the record's identity
                rec.last_seen_mono = now

    def _prune(self) -> None:
        stale = sorted((r for r in self.peers.values() if r.state not in (PeerState.ADMITTED, PeerState.MESHED)),
                       key=lambda r: r.last_seen_mono)
        for rec in stale[: max(1, len(stale) // 4)]:
            self.peers.pop(announcement_key(rec.announcement), None)

    def _submit(self, rec: PeerRecord, fn, *args) -> None:
        rec.in_flight = True

        def run() -> None:
            try:
                fn(rec, *args)
            except Exception:
                log.exception("peer task failed for %s", rec.node_id)
            finally:
                with self._lock:
                    rec.in_flight = False
                self._wake.set()
        try:
            self._pool.submit(run)
        except RuntimeError:  # pool shut down while stopping
            rec.in_flight = False

    def _submit_self_check(self) -> None:
        """Re-check our own evidence on the re-attestation schedule: peers will evict us if it
        fails, and the operator should see why here first (status `own_evidence_error`)."""
        def run() -> None:
            try:
                self.self_attest()
                self.own_evidence_error = None
            except ConclaveError as exc:
                self.own_evidence_error = exc.message
                log.error("own evidence no longer admissible: %s", exc.message)
        try:
            self._pool.submit(run)
        except RuntimeError:
            pass

    # ------------------------------------------------------------------ admission (we verify them)
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
                rec.state = PeerState.ADMITTED
            if reattest:
                rec.reattestations += 1
            else:
                rec.event("admitted")
            self.metrics.record_admission("admitted", "ok")
            self.metrics.record_evidence_verified(rec.node_id)
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
            rec.state = PeerState.REJECTED
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
        rec.state = PeerState.EVICTED
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

    # ------------------------------------------------------------------ key release (follower side)
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
            rec.state = PeerState.MESHED
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
                    rec.state = PeerState.ADMITTED
                rec.event("rekey", conf.reason)
            self._request_key(rec)

    def _retry_soon(self, rec: PeerRecord) -> None:
        with self._lock:
            rec.next_attempt_mono = time.monotonic() + min(self.cfg.timing.tick * 2, 1.0)

    # ------------------------------------------------------------------ secrets (consumer side)
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

    # ------------------------------------------------------------------ served RPCs (they ask us)
    def handle_attest(self, nonce: bytes) -> pb.AttestReply:
        return answer_challenge(me=self.me, source=self.cfg.evidence_source,
                                manifest_digest=self.cfg.manifest_digest, nonce=nonce,
                                enrolment=self.enrolment)

    def _admitted_by_key(self, key: WgPublicKey) -> PeerRecord | None:
        for rec in self.peers.values():
            if rec.key == key and rec.state in (PeerState.ADMITTED, PeerState.MESHED):
                return rec
        return None

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
            rec.state = PeerState.MESHED
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

    # ------------------------------------------------------------------ device
    def desired(self):
        with self._lock:
            admitted = [AdmittedPeerConfig(public_key=r.key, overlay_address=r.announcement.overlay_address,
                                           endpoint=r.announcement.wireguard_endpoint, psk=r.psk)
                        for r in self.peers.values() if r.state == PeerState.MESHED and r.psk is not None]
        return desired_device(interface=self.cfg.interface, listen_port=self.cfg.wireguard_port,
                              self_key=self.identity.wg_public, self_address=self.cfg.overlay_address,
                              overlay=self.cfg.overlay_cidr, admitted=admitted)

    def reconcile(self) -> None:
        if self._reconciler is None:
            return
        with self._device_lock:
            self._last_reconcile = time.monotonic()
            try:
                self._heal_device()
                actions, observed = self._reconciler.step(self.desired())
                self._reconcile_error = None
                self.metrics.update_wireguard_from_device(observed, self._peer_names())
                now = time.time()
                for action in actions:
                    if isinstance(action, RemovePeer):
                        self._removed_at[action.public_key] = now
            except ConclaveError as exc:
                self._reconcile_error = exc.reason
                log.error("reconcile failed: %s", exc)

    def _heal_device(self) -> None:
        """The WireGuard daemon died (killed, crashed) or its interface vanished: recreate it with
        the same private key, port and address; the step that follows re-applies every meshed
        peer with its PSK. Peers stay admitted: nothing about their evidence changed."""
        why = self._reconciler.heal()
        if why is None:
            return
        self.device_restarts += 1
        self.device_restart_reason = why
        self.device_restarted_at = time.time()
        self.metrics.record_device_restart(why)
        log.warning("wireguard device %s recreated (%s), restart %d", self.cfg.interface, why,
                    self.device_restarts, extra={"reason": why})

    def _peer_names(self) -> dict[WgPublicKey, str]:
        """WireGuard public key -> node name of every admitted peer (metric labels)."""
        with self._lock:
            return {r.key: r.node_id for r in self.peers.values()
                    if r.state in (PeerState.ADMITTED, PeerState.MESHED)}

    def reattest_now(self) -> None:
        """On-demand re-attestation of every admitted peer (next tick)."""
        with self._lock:
            for rec in self.peers.values():
                if rec.state in (PeerState.ADMITTED, PeerState.MESHED) and rec.last_verified_mono is not None:
                    rec.last_verified_mono -= self.cfg.timing.reattest_interval
        self._wake.set()

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        now = time.monotonic()
        observed = self._reconciler.last_observed if self._reconciler else None
        with self._lock:
            peers = []
            for rec in sorted(self.peers.values(), key=lambda r: (r.node_id, r.key.raw)):
                obs = observed.peers.get(rec.key) if observed else None
                entry = rec.to_json(now, obs)
                entry["device_removed_at"] = self._removed_at.get(rec.key)
                peers.append(entry)
        return {
            "ok": True, "node": self.cfg.node_name, "role": str(self.cfg.role), "owner": self.cfg.owner,
            "enrolment": self.stage_proof.to_json() if self.stage_proof is not None else None,
            "state": str(self.state), "wg_public_key": self.identity.wg_public.to_base64(),
            "overlay_address": str(self.cfg.overlay_address), "overlay_cidr": str(self.cfg.overlay_cidr),
            "interface": self.cfg.interface,
            "device": getattr(self._device, "implementation", "fake"),
            "firewall": "nft" if self._firewall is not None and self._firewall.applied else "none",
            "underlay": self.me.admission_target, "wireguard_port": self.cfg.wireguard_port,
            "started_at": self.started_wall, "announced_at": self.first_announce_wall,
            "reconcile_interval_s": self.cfg.timing.reconcile_interval,
            "reattest_interval_s": self.cfg.timing.reattest_interval,
            "reconcile_error": self._reconcile_error,
            "liveness_interval_s": self.cfg.timing.liveness_interval,
            "liveness_timeout_s": self.cfg.timing.liveness_timeout,
            "device_restarts": self.device_restarts,
            "device_pid": getattr(self._device, "pid", None),   # wireguard-go (our child); None: kernel/fake
            "device_restart_reason": self.device_restart_reason,
            "device_restarted_at": self.device_restarted_at,
            "own_evidence_error": self.own_evidence_error,
            "device_peers": sorted(k.to_base64() for k in observed.peers) if observed else [],
            "rendezvous_errors": dict(self._rendezvous.errors) if self._rendezvous else {},
            "secrets_received": {n: {"fingerprint": v.fingerprint(), "from": src}
                                 for n, (v, src) in sorted(self.received_secrets.items())},
            "secret_errors": dict(self.secret_errors),
            "secrets_served": self.broker.fingerprints() if self.broker else {},
            "peers": peers,
            "lifecycle": dict(self.stage_extra),
            "at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        }

    def enroll(self, enrolment: bytes) -> dict:
        """Take our owner's enrolment of this boot's keys, after checking it the way every peer
        will (stage, role, signed by the stage's owner over exactly our keys, unexpired)."""
        from conclave.overlay.admission import node_keys_of
        from conclave.runtime.manifest import enrolment as enrolment_mod
        if self.cfg.manifest is None:
            return {"ok": False, "reason": "manifest_required"}
        try:
            proof = enrolment_mod.check_enrolment(enrolment, manifest=self.cfg.manifest, node_id=self.me.node_id,
                                                  role=str(self.me.role), node_keys=node_keys_of(self.me),
                                                  at=datetime.now(timezone.utc))
        except enrolment_mod.EnrolmentRejected as exc:
            return {"ok": False, "reason": exc.reason, "error": exc.message}
        with self._lock:
            self.enrolment, self.stage_proof = bytes(enrolment), proof
        log.info("enrolled for stage %s by owner %s until %s", proof.stage, proof.owner, proof.expires)
        self.reattest_now()   # peers that refused us (owner_not_enrolled) retry on their own schedule
        return {"ok": True, **proof.to_json()}

    def handle_status_command(self, request: dict) -> dict:
        cmd = request.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "identity":
            return {"ok": True, "node": self.me.node_id, "role": str(self.me.role),
                    "manifest_digest": self.cfg.manifest_digest.hex(),
                    "admission_target": self.me.admission_target,
                    "wg_public_key": base64.b64encode(self.me.wg_public_key.raw).decode(),
                    "hpke_public_key": base64.b64encode(self.me.hpke_public_key.raw).decode(),
                    "statement_key": base64.b64encode(self.me.statement_key).decode()}
        if cmd == "enroll":
            try:
                blob = base64.b64decode(request.get("enrolment") or "", validate=True)
            except (ValueError, TypeError):
                return {"ok": False, "reason": "malformed_request"}
            return self.enroll(blob)
        if cmd == "reattest":
            self.reattest_now()
            return {"ok": True}
        if cmd == "launch" and self.launcher is not None:
            return self.launcher.launch(request)
        if cmd == "exit_code" and self.launcher is not None:
            self.launcher.reap()
            pid = request.get("pid")
            return {"ok": True, "exit_code": self.launcher.exit_code(pid) if isinstance(pid, int) else None}
        return {"ok": False, "reason": "unknown_command"}


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
