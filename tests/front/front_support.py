"""Helpers for the head front tests: a fake vLLM OpenAI server, a simulated two-stage deployment
with a signed manifest and a matching model manifest, and small process helpers.

Real cryptography throughout (simulated TEE root and attesters, Ed25519 owner and report keys,
self-signed TLS identities); the only stand-in is the upstream engine, an aiohttp server on
127.0.0.1 that speaks the slice of vLLM's OpenAI API the tests need (including its API-key check).
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

import sim_deployment
from conclave.runtime.endpoint.binding import node_report_data
from conclave.runtime.endpoint.bundle import BundleBuilder
from conclave.runtime.manifest import Stage
from conclave.runtime.model.manifest import SCHEMA, overall_digest
from conclave.runtime.report import ReportSigner
from sim_deployment import SimDeployment

MEASUREMENT = bytes.fromhex("11" * 48)
OTHER_MEASUREMENT = bytes.fromhex("22" * 48)
ENGINE_DIGEST = sim_deployment.ENGINE_DIGEST
API_KEY = "sk-front-test"
STAGES = (Stage("node-0", "alice", "head", 0, 3), Stage("node-1", "bob", "worker", 3, 6))
# the node owners of STAGES (each signs its stage's enrolments); in memory only
NODE_OWNER_KEYS = sim_deployment.owner_keys("alice", "bob")
NODE_OWNERS = sim_deployment.public_keys(NODE_OWNER_KEYS)
CONCLAVE = Path(sys.executable).with_name("conclave")


def sim_policy() -> dict:
    return sim_deployment.sim_policy(MEASUREMENT)


def model_manifest(num_layers: int = 6, *, tweak: str | None = None) -> dict:
    """A structurally valid model manifest (what runtime.model.manifest.build_manifest writes)."""
    groups = {f"layer.{i}": {"digest": f"{i:02x}" * 32, "tensors": [f"model.layers.{i}.w"]}
              for i in range(num_layers)}
    groups["embeddings"] = {"digest": "e0" * 32, "tensors": ["model.embed_tokens.weight"]}
    groups["final_norm"] = {"digest": "f0" * 32, "tensors": ["model.norm.weight"]}
    if tweak:
        groups[tweak] = dict(groups[tweak], digest="99" * 32)
    m = {"schema": SCHEMA, "name": "tiny", "source": {}, "dtype": "float32", "architecture": "LlamaForCausalLM",
         "num_layers": num_layers, "tie_word_embeddings": True,
         "files": {"config.json": "c0" * 32, "model.safetensors": "5a" * 32, "tokenizer.json": "70" * 32},
         "groups": groups}
    m["digest"] = overall_digest(m)
    return m


admission_extra = SimDeployment.admission_extra


@dataclass
class EvidenceItem:
    """Shaped like overlay EvidenceItemData / pb.EvidenceItem (what the agent hands over)."""
    tee: str
    data: bytes
    certs: tuple = ()
    collateral: bytes = b""


@dataclass
class Deployment(SimDeployment):
    """tests/sim_deployment.py's deployment, with a matching model manifest and the enrolment the
    head's agent holds: what the front tests need."""

    model_manifest: dict = field(default_factory=dict)
    head_enrolment: bytes | None = None                   # what the head's agent holds (None: not enrolled)

    @classmethod
    def create(cls, stages=STAGES) -> "Deployment":
        mm = model_manifest()
        return cls.build(root_name="front-tests-sim", stages=stages, node_owner_keys=NODE_OWNER_KEYS,
                         measurement=MEASUREMENT, model_digest=mm["digest"], model_manifest=mm)

    def init_keys(self) -> "Deployment":
        """Fresh per-boot keys for every node, and the head owner's enrolment of the head's."""
        super().init_keys()
        self.head_enrolment = self.enrolment("node-0")
        return self

    def builder(self, tls_spki: bytes, report_key: bytes, *, cls=BundleBuilder) -> BundleBuilder:
        return cls(manifest=self.manifest, head_node="node-0", tee="sim", attest=self.head_attester.evidence,
                   wg_public_key=self.wg["node-0"], hpke_public_key=self.hpke["node-0"],
                   tls_spki_sha256=tls_spki, report_key=report_key, statement_key=self.statement_key("node-0"),
                   head_enrolment=lambda: self.head_enrolment)

    def worker_admission(self, attester=None, *, enrolment: bytes | None | str = "enrolled") -> dict:
        """What the head's agent sees when it admits node-1: kwargs for HeadFront.on_peer_admitted
        (enrolment: its owner's enrolment by default; None for none, or other bytes)."""
        nonce = secrets.token_bytes(32)
        extra = admission_extra("node-1", statement_key=self.statement_key("node-1"))
        rd = node_report_data(manifest_digest=self.manifest.digest, wg_public_key=self.wg["node-1"],
                              hpke_public_key=self.hpke["node-1"], nonce=nonce, extra=extra)
        evidence = (attester or self.worker_attester).evidence(rd)
        return {"name": "node-1", "evidence_items": [EvidenceItem("sim", evidence)],
                "wg_public_key": self.wg["node-1"], "hpke_public_key": self.hpke["node-1"],
                "nonce": nonce, "extra": extra,
                "enrolment": self.enrolment("node-1") if enrolment == "enrolled" else enrolment}


def make_manifest_bytes(owner_key, *, model_digest: str) -> bytes:
    return sim_deployment.sign_manifest(owner_key, stages=STAGES, node_owners=NODE_OWNERS, policy=sim_policy(),
                                        model_digest=model_digest, engine_digest=ENGINE_DIGEST)


def new_report_signer() -> ReportSigner:
    return ReportSigner.generate()


# vLLM 0.32 routes outside /v1 that answer without its API key (tests/reliability/README.md findings)
OPEN_ROUTES = (("GET", "/ping"), ("GET", "/version"), ("GET", "/openapi.json"), ("GET", "/docs"),
               ("POST", "/invocations"), ("POST", "/tokenize"), ("POST", "/detokenize"),
               ("POST", "/scale_elastic_ep"), ("GET", "/load"))


class FakeVllm:
    """The slice of vLLM's OpenAI server the front forwards to, on 127.0.0.1 (own loop thread).

    Like vLLM: /v1/* needs `Authorization: Bearer API_KEY` (401 otherwise), unknown models are 404,
    a request with "bad" in the prompt is a 400 BadRequestError; every route outside /v1 is open
    (/health, /ping, /metrics, /version, /invocations, /tokenize, /openapi.json, /docs), as in
    vLLM 0.32. Streams send STREAM_WORDS with STREAM_GAP seconds between chunks.
    Faults, by a word in the prompt: "die" = the engine's connection breaks after two chunks (a
    streamed reply also leaves half an SSE event behind; a plain reply stops short of its
    Content-Length); "wait" = no response header for WAIT seconds.
    """

    STREAM_WORDS = ["The", " capital", " of", " France", " is", " Paris", "."]
    STREAM_GAP = 0.12
    WAIT = 5.0

    def __init__(self, api_key: str = API_KEY):
        self.api_key = api_key
        self.seen: list[dict] = []
        self.aborted = threading.Event()    # a stream's client went away mid-stream
        self.streamed = threading.Event()   # a stream chunk went out
        self.waiting = threading.Event()    # a "wait" request is holding its response header
        self.active = self.max_active = 0   # streams being generated now / at most at once
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @staticmethod
    def _error(status: int, message: str, type_: str) -> web.Response:
        return web.json_response({"error": {"message": message, "type": type_, "param": None, "code": status}},
                                 status=status)

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        self.seen.append({"method": request.method, "path": request.path_qs,
                          "authorization": request.headers.get("Authorization"),
                          "x_custom": request.headers.get("X-Custom"),
                          "expect": request.headers.get("Expect")})
        if request.path.startswith("/v1") and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "smollm2", "object": "model", "created": 0, "owned_by": "vllm"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen[-1]["body_len"] = len(await request.read())
        if body.get("model") != "smollm2":
            return self._error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        prompt = " ".join(m.get("content", "") for m in body.get("messages", []))
        if "bad" in prompt:
            return self._error(400, "This model's maximum context length is 8 tokens.", "BadRequestError")
        if "wait" in prompt:
            self.waiting.set()
            await asyncio.sleep(self.WAIT)
        base = {"id": "chatcmpl-1", "created": 0, "model": "smollm2"}
        if "die" in prompt and not body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b'{"id": "chatcmpl-1", "choices": [')
            await asyncio.sleep(self.STREAM_GAP)
            request.transport.abort()           # the engine process died: connection reset
            return resp
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "".join(self.STREAM_WORDS)}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        words = self.STREAM_WORDS * (20 if body.get("max_tokens", 0) > 100 else 1)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            for i, w in enumerate(words):
                chunk = {**base, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
                if "die" in prompt and i == 2:
                    await resp.write(b'data: {"id": "chatcmpl-1", "obj')   # half an event, then gone
                    await asyncio.sleep(self.STREAM_GAP)
                    request.transport.abort()
                    return resp
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.streamed.set()
                await asyncio.sleep(self.STREAM_GAP)
        except (ConnectionError, asyncio.CancelledError):
            self.aborted.set()              # vLLM aborts the request when its client disconnects
            raise
        finally:
            self.active -= 1
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _completions(self, request: web.Request) -> web.Response:
        """Legacy /v1/completions, non-streamed only (what the client-setup tests need)."""
        body = await request.json()
        if body.get("model") != "smollm2":
            return self._error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        return web.json_response({"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "smollm2",
                                  "choices": [{"index": 0, "text": " Paris.", "finish_reason": "stop",
                                               "logprobs": None}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text="vllm:num_requests_running 0\n", content_type="text/plain")

    async def _open_route(self, request: web.Request) -> web.Response:
        """vLLM's routes outside /v1 (no key check there): each answers 200 with its own name."""
        await request.read()
        return web.json_response({"route": request.path})

    async def _start(self) -> int:
        app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024 * 1024)   # vLLM has no limit
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        for method, path in OPEN_ROUTES:
            app.router.add_route(method, path, self._open_route)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    def __enter__(self) -> "FakeVllm":
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(20)
        self.address = f"127.0.0.1:{self.port}"
        return self

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def __exit__(self, *exc) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(20)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(20)
            self._loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, timeout: float = 60) -> tuple[int, dict | None, str]:
    """The real `conclave` console script in a subprocess: (exit code, parsed JSON stdout, stderr)."""
    assert CONCLAVE.exists(), f"conclave console script missing at {CONCLAVE}"
    proc = subprocess.run([str(CONCLAVE), *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        out = None
    return proc.returncode, out, proc.stderr


class CliProcess:
    """A long-running `conclave ...` subprocess (own process group), stopped by PID on exit."""

    def __init__(self, *args: str):
        assert CONCLAVE.exists(), f"conclave console script missing at {CONCLAVE}"
        self.proc = subprocess.Popen([str(CONCLAVE), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=dict(os.environ))

    def output(self) -> str:
        return self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def wait_until(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    return last


class FakeVllmProcess:
    """FakeVllm in its own process, so a test can kill the engine (SIGKILL, by PID) mid-stream."""

    # front_support imports tests/sim_deployment.py: both folders on the path
    _SCRIPT = ("import sys, time; sys.path[:0] = [sys.argv[1], sys.argv[2]]; from front_support import FakeVllm\n"
               "with FakeVllm() as v:\n"
               "    print(v.port, flush=True)\n"
               "    while True: time.sleep(1)\n")

    def __enter__(self) -> "FakeVllmProcess":
        self.proc = subprocess.Popen([sys.executable, "-c", self._SCRIPT, str(Path(__file__).parent),
                                      str(Path(__file__).parent.parent)],
                                     stdout=subprocess.PIPE, start_new_session=True)
        line = self.proc.stdout.readline().decode().strip()   # the port, once listening
        if not line.isdigit():
            self.kill()
            raise RuntimeError(f"the fake vLLM process did not start (said {line!r})")
        self.address = f"127.0.0.1:{int(line)}"
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def __exit__(self, *exc) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
