"""Helpers for the confidential-serving units (fixtures in conftest.py): an owner key, a simulated two-stage deployment,
a signed manifest, a head bundle builder, and an in-process HTTPS head (aiohttp on 127.0.0.1).

Everything is real cryptography (simulated TEE root and attesters from conclave.runtime.attestation.sim,
Ed25519 owner/report keys, a self-signed TLS certificate); nothing is mocked.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.endpoint.binding import node_report_data, spki_sha256
from conclave.runtime.endpoint.bundle import BundleBuilder
from conclave.runtime.manifest import Stage, build_content, sign_content, verify_bytes
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.report import ReportSigner

GOOD_MEASUREMENT = bytes.fromhex("11" * 48)
BAD_MEASUREMENT = bytes.fromhex("22" * 48)
MODEL_DIGEST = "ab" * 32
ENGINE_DIGEST = "cd" * 32


def sim_policy(measurement: bytes = GOOD_MEASUREMENT) -> dict:
    return {"production": False, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
            "sim": {"measurement": [measurement.hex()]}}


STAGES = (Stage("node-0", "alice", "head", 0, 15), Stage("node-1", "bob", "worker", 15, 30))


def make_manifest_bytes(owner_key, *, model_digest: str = MODEL_DIGEST,
                        stages=STAGES, policy: dict | None = None) -> bytes:
    content = build_content(owner_public_key=keys.public_key_bytes(owner_key),
                            policy=policy or sim_policy(), model_digest=model_digest,
                            engine_digest=ENGINE_DIGEST, stages=stages,
                            rendezvous=["198.18.0.1:7000"])
    return sign_content(content, owner_key)


def self_signed_tls(tmp: Path, name: str) -> tuple[Path, Path, bytes]:
    """(cert PEM path, key PEM path 0600, SPKI SHA-256) for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.close(fd)
    return cert_path, key_path, spki_sha256(cert)


@dataclass
class Deployment:
    root: SimulatedRoot
    owner_key: object
    manifest_bytes: bytes
    manifest: object                       # VerifiedManifest (pinned)
    head_attester: object
    worker_attester: object
    report_signer: ReportSigner
    wg: dict = field(default_factory=dict)
    hpke: dict = field(default_factory=dict)
    worker_nonce: bytes = b""
    worker_evidence: bytes = b""

    def builder(self, tls_spki: bytes, *, head_attester=None, include_worker: bool = True) -> BundleBuilder:
        att = head_attester or self.head_attester
        b = BundleBuilder(manifest=self.manifest, head_node="node-0", tee="sim",
                          attest=att.evidence, wg_public_key=self.wg["node-0"],
                          hpke_public_key=self.hpke["node-0"], tls_spki_sha256=tls_spki,
                          report_key=self.report_signer.public_key)
        if include_worker:
            b.set_peer("node-1", tee="sim", evidence=self.worker_evidence,
                       wg_public_key=self.wg["node-1"], hpke_public_key=self.hpke["node-1"],
                       nonce=self.worker_nonce, collected_at=datetime.now(timezone.utc))
        return b


class HttpsHead:
    """A small HTTPS head on 127.0.0.1: /v1/attestation from a swappable BundleBuilder, plus
    /v1/models and /v1/chat/completions (JSON or SSE stream) so the proxy has something to forward."""

    def __init__(self, cert: Path, key: Path, builder: BundleBuilder):
        self.builder = builder
        self.requests: list[str] = []
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(cert), str(key))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _attestation(self, request: web.Request) -> web.Response:
        nonce = bytes.fromhex(request.query["nonce"])
        return web.json_response(self.builder.build(nonce))

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append("models")
        return web.json_response({"object": "list", "data": [{"id": "smollm2", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append("chat")
        words = ["The", " capital", " is", " Paris."]
        if body.get("slow"):  # a long stream, for cutting it mid-way
            words = [f" w{i}" for i in range(40)]
        if not body.get("stream"):
            return web.json_response({"object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(words)}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for w in words:
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": w}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.05 if body.get("slow") else 0.01)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/v1/attestation", self._attestation)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
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


