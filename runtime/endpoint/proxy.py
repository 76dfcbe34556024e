"""A local plain-HTTP OpenAI endpoint that forwards only while the remote head verifies.

Why: applications (any OpenAI client) should not each implement attestation. The proxy verifies
the head (fresh nonce, evidence of every stage, TLS key binding), pins the exact certificate it
verified for every forwarded connection, re-verifies on a schedule, and answers 503 with an
OpenAI-style error naming the reason as soon as verification fails or goes stale. Streams (SSE)
pass through chunk by chunk; a stream in flight is cut when verification stops holding.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import aiohttp
from aiohttp import web
from cryptography import x509

from conclave.runtime.endpoint.client import EndpointVerification, Upstream, verify_endpoint
from conclave.runtime.endpoint.receipt import receipt_expected
from conclave.runtime.endpoint.receipt_relay import ReceiptRelay
from conclave.runtime.endpoint.verify import EndpointReason, require_pinned_owner
from conclave.runtime.manifest.document import VerifiedManifest

log = logging.getLogger("conclave.proxy")

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host",
                        "content-length"})
STATUS_PATH = "/conclave/status"
MAX_REQUEST_BODY = 32 * 1024 * 1024


@dataclass(frozen=True)
class VerificationState:
    ok: bool
    reason: str | None
    message: str | None
    cert_sha256: bytes | None = None
    spki_sha256: bytes | None = None
    verified_at: float | None = None       # time.monotonic() of the last success
    checked_at: float | None = None
    detail: dict | None = None

    def to_json(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "error": self.message,
                "tls_spki_sha256": self.spki_sha256.hex() if self.spki_sha256 else None,
                "seconds_since_verified": (round(time.monotonic() - self.verified_at, 3)
                                           if self.verified_at else None),
                "verification": self.detail}


def openai_error(status: int, reason: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "conclave_attestation_error",
                                        "param": None, "code": reason}}, status=status)


class AttestedProxy:
    def __init__(self, upstream_url: str, manifest: VerifiedManifest, *,
                 trusted_roots: Sequence[x509.Certificate] | None = None, ca: Path | None = None,
                 reverify_interval: float = 60.0, timeout: float = 30.0,
                 verifier: Callable[[], EndpointVerification] | None = None,
                 unsafe_unpinned: bool = False, collateral_for: Callable | None = None):
        if reverify_interval <= 0:
            raise ValueError("reverify_interval must be positive")
        require_pinned_owner(manifest, unsafe_unpinned=unsafe_unpinned)  # before any connection
        self.owner_pinned = manifest.owner_pinned
        self.upstream = Upstream.parse(upstream_url)
        self.reverify_interval = float(reverify_interval)
        self.timeout = float(timeout)
        self._verifier = verifier or functools.partial(
            verify_endpoint, upstream_url, manifest=manifest, trusted_roots=trusted_roots, ca=ca,
            timeout=timeout, unsafe_unpinned=unsafe_unpinned, collateral_for=collateral_for)
        self.state = VerificationState(False, "not_verified", "no verification yet")
        self._session: aiohttp.ClientSession | None = None
        self.receipts = ReceiptRelay(manifest, self.upstream.base, lambda: self._session)  # every completion's receipt
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task | None = None
        self._verify_lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()
        self.bound: tuple[str, int] | None = None

    # -- verification ---------------------------------------------------------------------------
    def usable(self, state: VerificationState | None = None) -> bool:
        """Verified, pinned, and not older than two periods plus a timeout (fail closed on a stuck loop)."""
        st = state or self.state
        return bool(st.ok and st.cert_sha256 and st.verified_at is not None
                    and time.monotonic() - st.verified_at <= 2 * self.reverify_interval + self.timeout)

    async def verify_now(self) -> VerificationState:
        async with self._verify_lock:
            loop = asyncio.get_running_loop()
            try:
                outcome = await loop.run_in_executor(None, self._verifier)
            except Exception as exc:  # a verifier crash is a failure, never a pass
                log.exception("verification crashed")
                new = VerificationState(False, "verification_error", type(exc).__name__,
                                        checked_at=time.monotonic())
            else:
                now = time.monotonic()
                if outcome.ok and outcome.fetched is not None:
                    new = VerificationState(True, None, None, outcome.fetched.cert_sha256,
                                            outcome.fetched.tls_spki_sha256, now, now, outcome.to_json())
                else:
                    new = VerificationState(False, outcome.result.reason, outcome.result.message,
                                            checked_at=now, detail=outcome.to_json())
            if new.ok != self.state.ok or new.reason != self.state.reason:
                log.log(logging.INFO if new.ok else logging.WARNING, "upstream verification: %s",
                        "ok" if new.ok else f"FAILED [{new.reason}]", extra={"reason": new.reason or "ok"})
            self.state = new
            return new

    def _fail(self, reason: str, message: str) -> None:
        self.state = VerificationState(False, reason, message, checked_at=time.monotonic())

    async def _reverify_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reverify_interval)
            await self.verify_now()

    # -- HTTP -----------------------------------------------------------------------------------
    async def _status(self, request: web.Request) -> web.Response:
        body = self.state.to_json()
        body["ok"] = self.usable()
        if not self.owner_pinned:
            body["unsafe_unpinned"] = True
        return web.json_response(body, status=200 if body["ok"] else 503)

    def _refusal(self) -> web.Response:
        st = self.state
        if st.ok and not self.usable(st):
            return openai_error(503, "verification_stale", "upstream verification is out of date")
        return openai_error(503, st.reason or "not_verified",
                            f"refusing to forward: upstream attestation failed ({st.reason}): {st.message}")

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        pinned = self.state
        if not self.usable(pinned):
            return self._refusal()
        assert self._session is not None and pinned.cert_sha256 is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        if not self.usable() or self.state.cert_sha256 != pinned.cert_sha256:
            return self._refusal()  # verification changed while the request body arrived
        url = self.upstream.base + request.rel_url.path_qs
        try:
            async with self._session.request(request.method, url, headers=headers, data=body,
                                             ssl=aiohttp.Fingerprint(pinned.cert_sha256),
                                             allow_redirects=False) as up:
                if receipt_expected(request.method, request.path, up.status):
                    return await self.receipts.relay(
                        request, up, body, pinned,
                        [(k, v) for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP],
                        lambda: self.usable() and self.state.cert_sha256 == pinned.cert_sha256)
                resp = web.StreamResponse(status=up.status, reason=up.reason)
                for k, v in up.headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        resp.headers.add(k, v)
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    if not self.usable() or self.state.cert_sha256 != pinned.cert_sha256:
                        log.warning("verification stopped holding mid-stream; cutting the response")
                        if request.transport is not None:
                            request.transport.close()
                        return resp
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except aiohttp.ServerFingerprintMismatch:
            self._fail(EndpointReason.TLS_KEY_MISMATCH, "upstream presented another TLS certificate")
            task = asyncio.get_running_loop().create_task(self.verify_now())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return self._refusal()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return openai_error(502, "upstream_error", f"upstream request failed: {type(exc).__name__}")

    # -- lifecycle ------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BODY)
        app.router.add_get(STATUS_PATH, self._status)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=None))
        await self.verify_now()  # nothing is forwarded before the first verification
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.bound = sock.getsockname()[:2]
        self._task = asyncio.get_running_loop().create_task(self._reverify_loop())
        return self.bound

    async def stop(self) -> None:
        for task in [t for t in (self._task, *self._background) if t is not None]:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("--listen must be HOST:PORT, e.g. 127.0.0.1:8088")
    return host.strip("[]"), int(port)


async def serve_forever(proxy: AttestedProxy, host: str, port: int) -> None:
    bound = await proxy.start(host, port)
    log.warning("conclave proxy listening on http://%s:%d -> %s (re-verify every %ss)",
                bound[0], bound[1], proxy.upstream.base, proxy.reverify_interval)
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.stop()


class ThreadedProxy:
    """Run an AttestedProxy on its own event loop thread (embedding in tests or sync programs)."""

    def __init__(self, proxy: AttestedProxy, host: str = "127.0.0.1", port: int = 0):
        self.proxy, self._host, self._port = proxy, host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="conclave-proxy", daemon=True)

    def __enter__(self) -> "ThreadedProxy":
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.proxy.start(self._host, self._port), self._loop)
        try:
            self.address = fut.result(timeout=self.proxy.timeout + 30)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def verify_now(self) -> VerificationState:
        return asyncio.run_coroutine_threadsafe(self.proxy.verify_now(), self._loop).result(60)

    async def _shutdown(self) -> None:
        await self.proxy.stop()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(30)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(30)
        self._loop.close()
