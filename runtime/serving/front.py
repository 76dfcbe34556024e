"""The head's public API server: TLS with the attested key, evidence, run report, then vLLM.

Why a front server instead of exposing vLLM: clients must be able to check, before sending a
prompt, that the TLS key they talk to is the one the head's hardware evidence binds (together with
the run-report key, purpose conclave/head/v1), and that every pipeline stage was admitted with
evidence that satisfies the deployment manifest. The front terminates TLS with that key (made in
memory inside the CVM), answers the public evidence endpoints itself, and passes everything else
to the vLLM OpenAI server on the head's loopback, byte for byte and stream chunk by stream chunk.

Routes
    GET /v1/attestation?nonce=HEX  fresh head evidence for the client's nonce + every admitted
                                   stage's admission evidence (endpoint.bundle.respond). No API key.
    GET /v1/report                 the signed run report (RunReportState.signed()). No API key.
                                   503 report_incomplete until every stage has evidence and a shard.
    GET /v1/report/<sha256>        a run report a receipt points to (serving/receipts.py). No API key.
    GET /status                    the live status page (serving/status_page/: HTML, script, stylesheet
                                   from the package, strict CSP). No API key.
    GET /v1/status.json            the public summary the page polls (serving/status_view.py): stages
                                   with node, owner, TEE, GPUs, layers, evidence age, TCB status,
                                   lifecycle state and last events; the front's own serving figures
                                   (requests, tokens/s, TTFT: serving_stats.py). No API key.
                                   Every successful POST /v1/* carries a receipt signed by the report
                                   key: header Conclave-Receipt, or a final SSE event before [DONE].
    /v1/*, /health                 forwarded to the upstream vLLM server through the shared guard
    /metrics, /version             (runtime/serving/api_guard.py): method, path+query, headers
                                   (Authorization included: vLLM enforces its own API key), body up
                                   to max_body (4 MiB), status, response headers; SSE streamed chunk
                                   by chunk. Upstream errors pass through unchanged.
                                   /metrics and /version only when the front holds the API key
                                   (api_key=...): it then requires the key itself on every route but
                                   /health, /v1/attestation and /v1/report. Without a key they are 404
                                   (vLLM would serve them to anyone); vLLM's metrics still reach
                                   operators through the head AGENT's /metrics on the overlay.
    anything else                  404, OpenAI-style error (401 first when the front holds a key).
While a manifest stage has no admitted evidence (not yet admitted, or evicted), forwarded requests
get 503 {"error": {"code": "stage_not_attested", "missing": [stages]}} (except /metrics): serving
stops with a clear error rather than running with an unverified stage. When a stage is evicted,
every in-flight forwarded request ends at once: streaming responses get a final SSE event
data: {"error": {..., "type": "conclave_attestation_error", "code": "stage_lost"}} and close,
requests not answered yet get the 503 above. An upstream lost mid-stream ends an SSE response with
an event of code upstream_lost (api_guard.py). Errors made here have the OpenAI shape
{"error": {"message", "type", "param", "code"}}: 413 request_too_large (body over max_body),
401 invalid_api_key, 503 engine_unavailable (upstream refuses connections), 502 upstream_error,
404 not_found, 400 invalid_path, 503 attestation_unavailable (head evidence collection failed or
timed out).

API for the head's agent (`conclave node` builds it in runtime/cli/node.py)

    from conclave.runtime.serving.front import head_front_for_agent
    front = head_front_for_agent(
        agent,                        # NodeAgent, constructed but BEFORE agent.start()
        manifest=verified_manifest,   # require_manifest(...) result (VerifiedManifest)
        upstream="127.0.0.1:8000",    # vLLM OpenAI server inside the head's namespace ("http://..." ok)
        listen_host=underlay_ip, listen_port=8443,
        tls_names=[underlay_ip, "127.0.0.1", "localhost"],   # certificate SANs clients connect by
        model_manifest=json.load(...) or None,               # model manifest dict -> shard digests
        api_key=None or "sk-...",     # the deployment's API key (from the agent's stdin bundle, never argv)
    )                                 # also appends front.agent_hook() to agent.admission_hooks
    front.write_public_cert(path)     # 0644 PEM; clients use it as verify=/--cacert (ca_cert)
    agent.run_forever(on_started=front.start_in_thread, on_stopping=front.stop_thread)
        # start_in_thread() -> (host, port): own event-loop thread, returns once listening (it first
        # collects the head's own evidence for the run report); stop_thread() is idempotent

  head_front_for_agent reads only agent.cfg.node_name (must be the manifest's head stage name),
  agent.cfg.evidence_source, agent.identity.wg_public.raw / .hpke_public.raw / .statement_public,
  agent.enrolment (each bundle and report: the head's owner enrolment), and appends to
  agent.admission_hooks. Agent node names must equal manifest stage names: clients check the
  admission-bound node_id against the stage.

  Hooks (thread-safe; call from any thread; the agent_hook() adapter calls them for you):
    front.on_peer_admitted(name, evidence_items, wg_public_key, hpke_public_key, nonce, extra=None,
                           enrolment=None)
        evidence_items: objects with .tee/.data/.certs/.collateral (pb.AttestReply.evidence or
        overlay EvidenceItemData); keys raw bytes; nonce = the head's admission nonce; extra = the
        admission binding extra (Announcement.binding_extra()); enrolment = the stage owner's
        enrolment the peer presented (AttestReply.enrolment): the bundle serves it (clients check
        it, verify step <node>.07.enrolment) and the run report carries it as the stage's owner
        proof. The head's own enrolment is read from agent.enrolment. First admission registers the
        stage; later calls (re-attestation, re-admission) replace it and log an "ok" event.
    front.on_peer_evicted(name, reason)       drops the stage (clients then fail node_missing,
        forwarding answers 503 stage_not_attested), ends every in-flight forwarded request (SSE:
        stage_lost event) and logs an "evicted" event.
    front.on_reattested(name, result="ok", reason=None, evidence_sha256=None)
        appends an event only (e.g. result="failed" for a failed round that did not evict).
    front.agent_hook() -> object with on_admitted(ann, reply, nonce) and on_evicted(node_id,
        reason=None), the NodeAgent.admission_hooks protocol. The agent calls on_admitted for both
        admissions and re-attestations. Passing reason= to on_evicted puts it in the report
        (NodeAgent._evict could call hook.on_evicted(rec.node_id, reason=str(reason))).
    on_peer_admitted raises ValueError for a name that is not a worker stage of the manifest (the
    adapter skips such peers with a warning instead).

  Lower level (tests, other embeddings):
    HeadFront(*, builder: BundleBuilder, report: RunReportState, upstream: str,
              identity: HeadTlsIdentity, listen_host="127.0.0.1", listen_port=0,
              max_body=4 MiB, require_all_stages=True, api_key=None)
    await front.start() -> (host, port); await front.stop(); front.serve_forever(stop_event)
    front.url -> "https://host:port" once started; front.missing_stages() -> [stage names]
    front.node_facts = callable -> {node: {"tcb_status", "lifecycle"}} for /v1/status.json
                                   (head_front_for_agent sets it from the agent: status_view.agent_facts)
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from aiohttp import web

from conclave.runtime.atomic_write import write_atomic
from conclave.runtime.endpoint.bundle import BundleBuilder, NodeEvidence, respond
from conclave.runtime.endpoint.tls import HeadTlsIdentity, generate_head_identity
from conclave.runtime.manifest.document import VerifiedManifest
from conclave.runtime.report import ReportSigner
from conclave.runtime.serving.api_guard import (DEFAULT_MAX_BODY, Abort, ApiGuard, bad_path as _bad_path,  # noqa: F401
                                                 openai_error, parse_upstream)
from conclave.runtime.serving.front_report import ReportIncomplete, RunReportState
from conclave.runtime.serving.loop_server import LoopServer
from conclave.runtime.serving.observed_guard import ObservedGuard
from conclave.runtime.serving.receipts import ARCHIVE_PATH_PREFIX, ReceiptIssuer, archived_report
from conclave.runtime.serving.serving_stats import ServingStats
from conclave.runtime.serving.status_page import StatusAssets
from conclave.runtime.serving.status_view import NodeFacts, StatusBoard, agent_facts, build_status

log = logging.getLogger("conclave.front")

ATTESTATION_PATH = "/v1/attestation"
REPORT_PATH = "/v1/report"
STATUS_JSON_PATH = "/v1/status.json"
UNGATED = frozenset({"/metrics"})           # operators still see metrics while a stage is missing
ATTESTATION_ERROR_TYPE = "conclave_attestation_error"
ATTESTATION_TIMEOUT = 60.0
MAX_CONCURRENT_ATTESTATIONS = 4


class HeadFront(LoopServer):
    """The head's public HTTPS server (see the module docstring for routes and hooks)."""

    _thread_name = "conclave-front"
    _scheme = "https"

    def __init__(self, *, builder: BundleBuilder, report: RunReportState, upstream: str,
                 identity: HeadTlsIdentity, listen_host: str = "127.0.0.1", listen_port: int = 0,
                 max_body: int = DEFAULT_MAX_BODY, require_all_stages: bool = True,
                 connect_timeout: float = 10.0, attestation_timeout: float = ATTESTATION_TIMEOUT,
                 api_key: str | None = None):
        if report.manifest.digest != builder.manifest.digest:
            raise ValueError("the run report and the attestation bundle are for different manifests")
        report.owner_proof_source(builder.head_node, builder.head_enrolment)   # the head's own owner proof
        self.receipts = ReceiptIssuer(report)    # every completion carries a signed receipt
        self.stats = ServingStats()              # public figures for /status (no per-request data)
        self.guard = ObservedGuard(stats=self.stats, receipts=self.receipts, upstream=upstream,
                                   api_key=api_key, max_body=max_body, connect_timeout=connect_timeout)
        self.status_board = StatusBoard(report.manifest)
        self.status_assets = StatusAssets()
        self.node_facts: NodeFacts | None = None   # head agent's TCB/lifecycle view (head_front_for_agent)
        self.builder = builder
        self.report = report
        self.identity = identity
        self.upstream = self.guard.upstream
        self.listen_host, self.listen_port = listen_host, int(listen_port)
        self.max_body = self.guard.max_body
        self.require_all_stages = require_all_stages
        self.attestation_timeout = float(attestation_timeout)
        self.bound: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None
        self._attest_slots: asyncio.Semaphore | None = None
        self._hook_lock = threading.Lock()
        self._registered: set[str] = set()      # worker stages admitted at least once

    def __repr__(self) -> str:
        return (f"HeadFront(head={self.builder.head_node}, upstream={self.upstream}, "
                f"bound={self.bound}, api_key={'<redacted>' if self.guard.api_key else None}, "
                f"tls={self.identity!r})")

    # ------------------------------------------------------------------ hooks (agent threads)
    def on_peer_admitted(self, name: str, evidence_items: Iterable[Any], wg_public_key: bytes,
                         hpke_public_key: bytes, nonce: bytes, extra: Mapping[str, bytes] | None = None,
                         *, collected_at=None, enrolment: bytes | None = None) -> None:
        """A worker stage was admitted (or re-attested) by the head with this evidence, binding and
        owner enrolment."""
        evidence = NodeEvidence.from_items(evidence_items)
        was_admitted = name in self.builder.peer_names()
        self.builder.set_peer(name, evidence=evidence, wg_public_key=bytes(wg_public_key),
                              hpke_public_key=bytes(hpke_public_key), nonce=bytes(nonce),
                              extra=dict(extra or {}), collected_at=collected_at, enrolment=enrolment)
        digest = self.report.record_evidence(name, tee=evidence.tee, evidence=evidence.cpu.data)
        self.report.set_owner_proof(name, enrolment)
        with self._hook_lock:
            again = name in self._registered
            self._registered.add(name)
        self.status_board.note_evidence(name, tee=evidence.tee, gpus=len(evidence.gpus), evidence_sha256=digest,
                                        event="reattested" if was_admitted else "admitted", at=collected_at)
        if again:
            self.report.add_event(name, "ok", evidence_sha256=digest)
        log.info("front: stage %s %s", name, "re-attested" if again else "admitted")

    def on_peer_evicted(self, name: str, reason: str | None) -> None:
        """A worker stage lost its admission: clients and forwarded requests stop at once, in-flight
        ones included (streams end with a stage_lost event, unanswered requests get 503)."""
        self.builder.drop_peer(name)
        is_stage = self.report.manifest.stage_for(name) is not None
        if is_stage:
            self.report.add_event(name, "evicted", reason=str(reason) if reason else "evicted")
            self.status_board.note_event(name, "evicted", str(reason) if reason else "evicted")
        log.warning("front: stage %s evicted (%s); serving refuses until it is re-admitted", name, reason)
        if self.require_all_stages and is_stage:
            why = str(reason) if reason else "evicted"
            self.guard.abort_all_threadsafe(Abort(
                status=503, code="stage_not_attested", stream_code="stage_lost", type_=ATTESTATION_ERROR_TYPE,
                message=f"serving stopped: stage {name} lost its attestation ({why}); the response is incomplete",
                extra={"missing": self.builder.missing_stages()}))

    def on_reattested(self, name: str, result: str = "ok", reason: str | None = None,
                      evidence_sha256: str | None = None) -> None:
        """Record a re-attestation round's outcome (no change to the served evidence)."""
        self.report.add_event(name, result, reason=reason, evidence_sha256=evidence_sha256)
        if result != "ok":
            self.status_board.note_event(name, result, reason)

    def agent_hook(self) -> "AgentAdmissionHook":
        return AgentAdmissionHook(self)

    def missing_stages(self) -> list[str]:
        return self.builder.missing_stages()

    # ------------------------------------------------------------------ files
    def write_public_cert(self, path: str | os.PathLike) -> Path:
        """Write the TLS certificate (public, PEM, 0644) atomically: clients pass it as their CA."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, self.identity.cert_pem, mode=0o644, prefix=".conclave-cert-")

    # ------------------------------------------------------------------ handlers
    async def _attestation(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _get_only(request.path)
        assert self._attest_slots is not None
        loop = asyncio.get_running_loop()
        try:
            async with self._attest_slots:
                status, body = await asyncio.wait_for(
                    loop.run_in_executor(None, respond, self.builder, request.query.get("nonce")),
                    self.attestation_timeout)
        except asyncio.TimeoutError:
            return openai_error(503, "attestation_unavailable", "head evidence collection timed out")
        except Exception as exc:  # evidence collection failed: say so, never serve a partial bundle
            log.error("front: head evidence collection failed: %s", type(exc).__name__)
            return openai_error(503, "attestation_unavailable",
                                f"head evidence collection failed ({type(exc).__name__})")
        return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})

    async def _report(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _get_only(request.path)
        try:
            data = self.report.signed()
        except ReportIncomplete as exc:
            return openai_error(503, exc.reason, exc.message, headers={"Cache-Control": "no-store"})
        return web.Response(body=data, content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def _status_json(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _get_only(request.path)
        facts = None
        if self.node_facts is not None:
            try:
                facts = self.node_facts()
            except Exception as exc:  # the agent's view is optional: the page shows "-" without it
                log.warning("front: node facts for /status unavailable: %s", type(exc).__name__)
        body = build_status(manifest=self.report.manifest, head=self.builder.head_node, board=self.status_board,
                            admitted=self.builder.peer_names(), missing=self.builder.missing_stages(),
                            figures=self.stats.snapshot(), facts=facts)
        return web.json_response(body, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    def _stage_gate(self, path: str) -> web.Response | None:
        """Serving stops with a clear error while any manifest stage lacks admitted evidence."""
        if not self.require_all_stages or path in UNGATED:
            return None
        missing = self.builder.missing_stages()
        if not missing:
            return None
        return openai_error(503, "stage_not_attested",
                            "serving stopped: no admitted evidence for stage(s) " + ", ".join(missing),
                            type_=ATTESTATION_ERROR_TYPE, extra={"missing": missing})

    async def _route(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(ARCHIVE_PATH_PREFIX) and not _bad_path(request.rel_url.raw_path):
            return await archived_report(self.receipts.archive, request)   # keyless, like /v1/report
        local = {ATTESTATION_PATH: self._attestation, REPORT_PATH: self._report, STATUS_JSON_PATH: self._status_json}
        local.update({path: self.status_assets.handle for path in self.status_assets.paths})
        return await self.guard.handle(request, gate=self._stage_gate, local=local)

    # ------------------------------------------------------------------ lifecycle
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{tail:.*}", self._route)
        return app

    async def start(self) -> tuple[str, int]:
        """Record the head's own evidence for the run report, then listen (TLS) and return the address."""
        head = self.builder.head_node
        if not self.report.has_evidence(head):
            loop = asyncio.get_running_loop()
            evidence = await loop.run_in_executor(None, self.builder.attest_head, secrets.token_bytes(32))
            digest = self.report.record_evidence(head, tee=evidence.tee, evidence=evidence.cpu.data)
            self.status_board.note_evidence(head, tee=evidence.tee, gpus=len(evidence.gpus),
                                            evidence_sha256=digest, event=None)
        self._attest_slots = asyncio.Semaphore(MAX_CONCURRENT_ATTESTATIONS)
        await self.guard.open()
        ssl_ctx = self.identity.server_context()
        self.bound = await self._listen(self.make_app(), self.listen_host, self.listen_port, ssl_ctx)
        log.info("front: https://%s:%d -> %s (tls spki %s)", self.bound[0], self.bound[1], self.upstream,
                 self.identity.spki_sha256.hex()[:16])
        return self.bound  # type: ignore[return-value]

    async def _release(self) -> None:
        await self.guard.close()


def _get_only(path: str) -> web.Response:
    return openai_error(405, "method_not_allowed", f"{path} answers GET only",
                        type_="invalid_request_error", headers={"Allow": "GET"})


class AgentAdmissionHook:
    """Adapter for NodeAgent.admission_hooks: on_admitted(ann, reply, nonce) / on_evicted(node_id)."""

    def __init__(self, front: HeadFront):
        self.front = front

    def on_admitted(self, ann, reply, nonce: bytes) -> None:
        stage = self.front.report.manifest.stage_for(ann.node_id)
        if stage is None or stage.role == "head":
            log.warning("front: admitted peer %s is not a worker stage of the manifest; not served",
                        ann.node_id)
            return
        self.front.on_peer_admitted(ann.node_id, list(reply.evidence), ann.wg_public_key.raw,
                                    ann.hpke_public_key.raw, bytes(nonce), ann.binding_extra(),
                                    collected_at=datetime.now(timezone.utc),
                                    enrolment=bytes(getattr(reply, "enrolment", b"") or b"") or None)

    def on_statement(self, node_id: str, body: bytes, signature: bytes) -> None:
        """A stage's signed statement (verified by the agent under the key its evidence binds, or the
        head's own): the run report carries it and lists the shard digest that stage signed."""
        if self.front.report.manifest.stage_for(node_id) is None:
            return
        try:
            self.front.report.set_shard_statement(node_id, body, signature)
        except (ValueError, KeyError) as exc:
            log.warning("front: stage statement of %s not usable: %s", node_id, exc)

    def on_evicted(self, node_id: str, reason: str | None = None) -> None:
        stage = self.front.report.manifest.stage_for(node_id)
        if stage is None or stage.role == "head":
            return
        self.front.on_peer_evicted(node_id, reason)


def head_front_for_agent(agent, *, manifest: VerifiedManifest, upstream: str, listen_host: str,
                         listen_port: int, tls_names: Sequence[str],
                         model_manifest: Mapping | None = None, max_body: int = DEFAULT_MAX_BODY,
                         require_all_stages: bool = True, api_key: str | None = None) -> HeadFront:
    """Everything the head's agent needs: TLS identity and report key made in memory, the bundle
    builder over the agent's own evidence source and keys, the report state, and the admission
    hook registered on the agent. Call after NodeAgent(...) and before agent.start()."""
    cfg = agent.cfg
    stage = manifest.stage_for(cfg.node_name)
    if stage is None or stage.role != "head":
        raise ValueError(f"{cfg.node_name!r} is not the head stage of the manifest")
    if manifest.digest != cfg.manifest_digest:
        raise ValueError("the agent binds another manifest digest than the front would serve")
    identity = generate_head_identity(list(tls_names))
    signer = ReportSigner.generate()
    source = cfg.evidence_source
    builder = BundleBuilder(manifest=manifest, head_node=cfg.node_name, tee=None,
                            attest=lambda rd: NodeEvidence.from_items(source.collect(rd)),
                            wg_public_key=agent.identity.wg_public.raw,
                            hpke_public_key=agent.identity.hpke_public.raw,
                            tls_spki_sha256=identity.spki_sha256, report_key=signer.public_key,
                            statement_key=agent.identity.statement_public,
                            head_enrolment=lambda: agent.enrolment)   # set once its owner enrols it
    report = RunReportState(manifest=manifest, signer=signer)
    if model_manifest is not None:
        report.set_shards_from_model_manifest(model_manifest)
    front = HeadFront(builder=builder, report=report, upstream=upstream, identity=identity,
                      listen_host=listen_host, listen_port=listen_port, max_body=max_body,
                      require_all_stages=require_all_stages, api_key=api_key)
    agent.admission_hooks.append(front.agent_hook())
    front.node_facts = lambda: agent_facts(agent)
    report.grace_source = lambda: {node: f["tcb_grace_until"] for node, f in agent_facts(agent).items()
                                   if f.get("tcb_grace_until")}
    builder.lifecycle_source = lambda: stage_lifecycles(agent)
    return front


def stage_lifecycles(agent) -> dict[str, dict]:
    """Each stage's lifecycle state as /v1/attestation shows it: the head's own, and every meshed
    worker's from its verified signed statement (runtime/node/stage_runner.py)."""
    own = dict(getattr(agent, "stage_extra", {}) or {})
    statements = agent.peer_statements() if hasattr(agent, "peer_statements") else {}
    out = {name: {"state": st.get("state"), "reasons": []} for name, st in statements.items()}
    if own.get("state"):
        out[agent.cfg.node_name] = {"state": own["state"], "reasons": [r.get("reason") for r in own.get("reasons") or []]}
    return out
