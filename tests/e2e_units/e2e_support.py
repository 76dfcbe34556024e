"""Helpers for the confidential-serving units (fixtures live in conftest.py): a simulated
two-stage deployment, a signed manifest, and an in-process HTTPS head (aiohttp on 127.0.0.1).

Everything is real cryptography (simulated TEE root and attesters from attestation.sim, Ed25519
owner/report keys, a self-signed TLS identity); nothing is mocked.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

from aiohttp import web

import sim_deployment
from conclave.runtime.endpoint.binding import node_report_data
from conclave.runtime.endpoint.bundle import BundleBuilder, nonce_from_query
from conclave.runtime.endpoint.tls import HeadTlsIdentity
from conclave.runtime.manifest import Stage
from conclave.runtime.report import ReportSigner
from conclave.runtime.endpoint.receipt import RECEIPT_HEADER, header_value, sse_event
from conclave.runtime.serving.front_report import RunReportState
from conclave.runtime.serving.receipts import ARCHIVE_PATH_PREFIX, ReceiptIssuer, archived_report
from sim_deployment import SimDeployment

GOOD_MEASUREMENT = bytes.fromhex("11" * 48)
BAD_MEASUREMENT = bytes.fromhex("22" * 48)
MODEL_DIGEST = "ab" * 32
ENGINE_DIGEST = sim_deployment.ENGINE_DIGEST


def sim_policy(measurement: bytes = GOOD_MEASUREMENT) -> dict:
    return sim_deployment.sim_policy(measurement)


STAGES = (Stage("node-0", "alice", "head", 0, 15), Stage("node-1", "bob", "worker", 15, 30))
# the node owners of STAGES (each signs its stage's enrolments); in memory only
NODE_OWNER_KEYS = sim_deployment.owner_keys("alice", "bob", "carol")
NODE_OWNERS = sim_deployment.public_keys(NODE_OWNER_KEYS)


def make_manifest_bytes(owner_key, *, model_digest: str = MODEL_DIGEST,
                        stages=STAGES, policy: dict | None = None) -> bytes:
    return sim_deployment.sign_manifest(owner_key, stages=stages, node_owners=NODE_OWNERS,
                                        policy=policy or sim_policy(), model_digest=model_digest,
                                        engine_digest=ENGINE_DIGEST)


@dataclass
class Deployment(SimDeployment):
    """tests/sim_deployment.py's deployment, with node-1 admitted (its evidence for a nonce) and a
    report signer: what the bundle, proxy and receipt units need."""

    report_signer: ReportSigner = field(default_factory=ReportSigner.generate)
    worker_nonce: bytes = b""
    worker_evidence: bytes = b""

    @classmethod
    def create(cls) -> "Deployment":
        d = cls.build(root_name="e2e-units-sim", stages=STAGES, node_owner_keys=NODE_OWNER_KEYS,
                      measurement=GOOD_MEASUREMENT, model_digest=MODEL_DIGEST)
        d.worker_nonce = secrets.token_bytes(32)
        d.worker_evidence = d.worker_attester.evidence(node_report_data(
            manifest_digest=d.manifest.digest, wg_public_key=d.wg["node-1"],
            hpke_public_key=d.hpke["node-1"], nonce=d.worker_nonce, extra=d.worker_extra()))
        return d

    def worker_extra(self) -> dict:
        """node-1's admission binding extra, its statement key included (as a real agent binds it)."""
        return self.admission_extra("node-1", statement_key=self.statement_key("node-1"))

    def builder(self, tls_spki: bytes, *, head_attester=None, include_worker: bool = True) -> BundleBuilder:
        att = head_attester or self.head_attester
        b = BundleBuilder(manifest=self.manifest, head_node="node-0", tee="sim",
                          attest=att.evidence, wg_public_key=self.wg["node-0"],
                          hpke_public_key=self.hpke["node-0"], tls_spki_sha256=tls_spki,
                          report_key=self.report_signer.public_key,
                          statement_key=self.statement_key("node-0"),
                          head_enrolment=lambda: self.enrolment("node-0"))
        if include_worker:
            b.set_peer("node-1", tee="sim", evidence=self.worker_evidence, extra=self.worker_extra(),
                       wg_public_key=self.wg["node-1"], hpke_public_key=self.hpke["node-1"],
                       nonce=self.worker_nonce, collected_at=datetime.now(timezone.utc),
                       enrolment=self.enrolment("node-1"))
        return b

    def receipt_issuer(self) -> ReceiptIssuer:
        """Receipts as the real head front signs them: this deployment's report key, a complete run report."""
        state = RunReportState(manifest=self.manifest, signer=self.report_signer)
        state.record_evidence("node-0", tee="sim", evidence=b"head evidence")
        state.record_evidence("node-1", tee="sim", evidence=self.worker_evidence)
        for stage in STAGES:
            state.set_shard(stage.node, "ee" * 32)
            state.set_owner_proof(stage.node, self.enrolment(stage.node))
        return ReceiptIssuer(state)


class HttpsHead:
    """A small HTTPS head on 127.0.0.1: /v1/attestation from a swappable BundleBuilder, plus
    /v1/models and /v1/chat/completions (JSON or SSE stream) so the proxy has something to forward."""

    def __init__(self, identity: HeadTlsIdentity, builder: BundleBuilder, receipts: ReceiptIssuer):
        self.builder = builder
        self.receipts = receipts      # completions carry receipts, as from the real front
        self.requests: list[str] = []
        self._ctx = identity.server_context()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _attestation(self, request: web.Request) -> web.Response:
        try:
            nonce = nonce_from_query(request.query.get("nonce"))
        except ValueError:
            return web.json_response({"error": "bad nonce"}, status=400)
        return web.json_response(self.builder.build(nonce))

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append("models")
        return web.json_response({"object": "list", "data": [{"id": "smollm2", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        self.requests.append("chat")
        words = ["The", " capital", " is", " Paris."]
        if body.get("slow"):  # a long stream, for cutting it mid-way
            words = [f" w{i}" for i in range(40)]
        if not body.get("stream"):
            data = json.dumps({"object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(words)}}]}).encode()
            receipt = self.receipts.issue(raw, hashlib.sha256(data).hexdigest())
            return web.Response(body=data, content_type="application/json",
                                headers={RECEIPT_HEADER: header_value(receipt)})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        sent = hashlib.sha256()
        for w in words:
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": w}}]}
            event = f"data: {json.dumps(chunk)}\n\n".encode()
            sent.update(event)
            await resp.write(event)
            await asyncio.sleep(0.05 if body.get("slow") else 0.01)
        await resp.write(sse_event(self.receipts.issue(raw, sent.hexdigest())) + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _archived(self, request: web.Request) -> web.Response:
        return await archived_report(self.receipts.archive, request)

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/v1/attestation", self._attestation)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get(ARCHIVE_PATH_PREFIX + "{digest}", self._archived)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ctx)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    def __enter__(self) -> "HttpsHead":
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(20)
        self.url = f"https://127.0.0.1:{self.port}"
        return self

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(20)
        self._loop.close()


