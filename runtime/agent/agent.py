"""The node agent: attest itself, announce, admit peers mutually, agree PSKs, keep the device
in line with the admitted set, re-attest on a schedule, and evict whoever stops passing.

This module holds the lifecycle, the main loop, discovery, the device and status; the rest
lives in mixins of its own: admission_flow.py (challenge, verify, admit, reject, evict),
key_exchange.py (PSKs and brokered secrets), liveness_flow.py (Pings) and statements.py (signed
stage statements). Peer states and their transitions: peers.py.

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
from conclave.overlay.admission import AdmissionRejected
from conclave.overlay.prover import answer_challenge
from conclave.overlay.desired import AdmittedPeerConfig, desired_device
from conclave.overlay.device import WgDevice
from conclave.overlay.firewall import Firewall, ruleset
from conclave.overlay.identity import Announcement, NodeIdentity
from conclave.overlay.keys import WgPublicKey
from conclave.overlay.liveness import PeerLiveness
from conclave.overlay.nonces import NonceCache
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from conclave.overlay.reasons import OverlayReason
from conclave.overlay.reconcile import Reconciler, RemovePeer
from conclave.overlay.rendezvous import RendezvousClient, RendezvousService, announcement_key
from conclave.runtime.agent.admission_flow import AdmissionFlow
from conclave.runtime.agent.admission_flow import claimed_tee, enrolment_is_newer  # noqa: F401  (callers import them here)
from conclave.runtime.agent.config import NodeConfig
from conclave.runtime.agent.key_exchange import KeyExchange
from conclave.runtime.agent.launcher import Launcher
from conclave.runtime.agent.liveness_flow import LivenessFlow
from conclave.runtime.agent.peers import PeerRecord, PeerState
from conclave.runtime.agent.state import AgentState, check_transition
from conclave.runtime.agent.statements import StageStatements
from conclave.runtime.agent.status import StatusServer
from conclave.runtime.agent.verifier import build_verifier
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.keys.broker import SecretsBroker
from conclave.runtime.keys.secret import SecretValue
from conclave.runtime.metrics import ConclaveMetrics, MetricsServer, serve_metrics

log = logging.getLogger("conclave.agent")
MAX_RECORDS = 512
STALE_AFTER = 120.0   # seconds without an announcement before a non-admitted peer is left alone


class NodeAgent(AdmissionFlow, KeyExchange, LivenessFlow, StageStatements):
    def __init__(self, cfg: NodeConfig, *, identity: NodeIdentity | None = None):
        self.cfg = cfg
        self.identity = identity or NodeIdentity.generate()
        self.me = Announcement(
            node_id=cfg.node_name, owner=cfg.owner, role=cfg.role, underlay_host=cfg.underlay_host,
            admission_port=cfg.admission_port, wireguard_port=cfg.wireguard_port,
            wg_public_key=self.identity.wg_public, hpke_public_key=self.identity.hpke_public,
            overlay_address=cfg.overlay_address, statement_key=self.identity.statement_public)
        self.verifier = build_verifier(cfg)
        share = getattr(cfg.evidence_source, "share_collateral", None)
        if share is not None:   # our own vendor-signed collateral travels with our evidence (peers' fallback)
            share(self.verifier.collateral_for)
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
        self._discover_now = threading.Event()   # list the rendezvous at once (an inbound challenge)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="conclave-peer")
        self._channels: dict[str, grpc.Channel] = {}
        self._channel_lock = threading.Lock()
        self._device = None
        self.inner = None            # runtime.node.inner_netns.InnerNetns of a serving node (cfg.inner_netns)
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
            if cfg.inner_netns:
                # Ray and vLLM live in a namespace that has no underlay: only lo and this device
                from conclave.runtime.node.inner_netns import InnerNetns
                self.inner = InnerNetns.for_node(cfg.node_name, cfg.interface).create()
            self._device = WgDevice(cfg.interface, private_key=self.identity.wg_private,
                                    listen_port=cfg.wireguard_port, address=cfg.overlay_address,
                                    overlay=cfg.overlay_cidr, netns=self.inner.name if self.inner else None)
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
            if self.inner is not None and cfg.metrics_host is None:
                # the overlay address exists only in the inner namespace: bind (and serve) there
                self._metrics_server = self.inner.call(lambda: serve_metrics(
                    self.metrics.registry, host, cfg.metrics_port, upstream_url=cfg.metrics_upstream))
            else:
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
                       lambda: self._device is not None and hasattr(self._device, "close") and self._device.close(),
                       lambda: self.inner is not None and self.inner.close()):
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


    # ------------------------------------------------------------------ stage statements


    def _discovery_loop(self) -> None:
        """Announce and list on its own thread: a slow or black-holed rendezvous must never delay
        evictions or reconciles in the main loop.

        Announcing keeps its interval. Listing backs off while nothing changes (issue 18: a List
        every tick was most of an idle agent's CPU and all of the rendezvous'): every tick at first
        and after any change in the announced set, then doubling up to the announce interval; an
        inbound challenge (a node that found us and may be new: handle_attest) lists at once."""
        t = self.cfg.timing
        every, next_list, known = t.tick, 0.0, None
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now - self._last_announce >= t.announce_interval:
                    if self._rendezvous.announce(self.me, self.identity.statement_private) \
                            and self.first_announce_wall is None:
                        self.first_announce_wall = time.time()
                    self._last_announce = now
                if now >= next_list or self._discover_now.is_set():
                    self._discover_now.clear()
                    before = len(self.peers)
                    announcements = self._rendezvous.list()
                    self._merge(announcements)
                    if len(self.peers) != before:
                        self._wake.set()
                    seen = frozenset(announcement_key(a) for a in announcements)
                    calm = seen == known and not self._rendezvous.errors
                    every = min(every * 2, max(t.tick, t.announce_interval)) if calm else t.tick
                    known, next_list = seen, time.monotonic() + every
            except Exception:
                log.exception("discovery failed")
                every, next_list = t.tick, time.monotonic() + t.tick
            self._discover_now.wait(t.tick)

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


    # ------------------------------------------------------------------ key release (follower side)


    # ------------------------------------------------------------------ secrets (consumer side)


    # ------------------------------------------------------------------ served RPCs (they ask us)
    def handle_attest(self, nonce: bytes) -> pb.AttestReply:
        self._discover_now.set()     # whoever challenges us found us: it may be new to us
        return answer_challenge(me=self.me, source=self.cfg.evidence_source,
                                manifest_digest=self.cfg.manifest_digest, nonce=nonce,
                                enrolment=self.enrolment)

    def _admitted_by_key(self, key: WgPublicKey) -> PeerRecord | None:
        for rec in self.peers.values():
            if rec.key == key and rec.state in (PeerState.ADMITTED, PeerState.MESHED):
                return rec
        return None


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
            # Ray and vLLM's namespace (lo + the device): its name, nsfs inode, and a path any root
            # process here can enter (`nsenter --net=PATH`); None: they share this node's namespace
            "inner_netns": None if self.inner is None else {"name": self.inner.name, "inode": self.inner.inode,
                                                            "enter": self.inner.enter_path},
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


