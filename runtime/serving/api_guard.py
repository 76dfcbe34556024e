"""The HTTP guard in front of vLLM's OpenAI server, shared by both public entry points: the head's
TLS front (attested mode, runtime/serving/front.py) and PlainFront (plain modes, plain_front.py).

Why a guard at all: vLLM 0.32 checks --api-key only on paths under /v1, /v2, /inference and
/cohere; /invocations (full completions), /tokenize, /detokenize, /generative_scoring,
/scale_elastic_ep, /metrics, /version, /openapi.json, /docs... answer anyone, and it has no request
size limit. The guard decides what reaches the engine; vLLM's own key check stays on behind it.

Checks, in order, for every request (ApiGuard.handle):
  1. a raw path with dot segments or encoded separators       -> 400 invalid_path
  2. the embedding server's own keyless routes (the front's /v1/attestation, /v1/report)
  3. when the guard holds an API key, every path except /health needs exactly one
     `Authorization: Bearer KEY` (constant-time compare)       -> 401 invalid_api_key
     (before routing, so a keyless caller learns nothing about which routes exist)
  4. allowlist: /v1/*, /health, and /metrics, /version only when the guard holds a key (it
     checks that key itself; without one those routes would be public)   -> 404 not_found
  5. the embedding server's gate (the front: every pipeline stage attested)
  6. forward: body capped at max_body (413 request_too_large), method, path+query as received,
     headers (Authorization too: vLLM checks its key again), response streamed back chunk by chunk.
Errors made here have the OpenAI shape {"error": {"message", "type", "param", "code"}}.

Failures after the response headers went out:
  - the upstream connection breaks: a text/event-stream response gets one final SSE event
      data: {"error": {"message": ..., "type": "conclave_upstream_error", "param": null, "code": "upstream_lost"}}
    and the connection closes; any other response is cut (the only honest signal left).
  - abort_all(Abort(...)) (the front calls it when a stage is evicted) ends every in-flight request
    at once: streaming responses get the same kind of event with Abort.stream_code, responses whose
    headers are out are cut, requests not answered yet get Abort.status / Abort.code.
SSE is relayed whole events at a time (an incomplete event is held until its blank line arrives),
so that final event never lands inside a half-relayed one.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

log = logging.getLogger("conclave.api_guard")

DEFAULT_MAX_BODY = 4 * 1024 * 1024       # vLLM's context here is a few thousand tokens: 4 MiB is plenty
KEYLESS = frozenset({"/health"})         # load balancers and readiness probes hold no key
KEY_ONLY = frozenset({"/metrics", "/version"})   # forwarded only when the guard can check the key itself
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
                        "host", "content-length"})
# request side only: the guard answers Expect: 100-continue itself and sends the whole body on
REQUEST_ONLY_STRIP = frozenset({"expect"})
READ_CHUNK = 64 * 1024
SSE_MAX_PENDING = 1024 * 1024            # an upstream event larger than this is relayed unaligned
_SSE_SEPARATORS = (b"\n\n", b"\r\n\r\n", b"\r\r")
_NO_AUTO = ("User-Agent", "Accept", "Accept-Encoding")   # forward only what the client sent

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def openai_error(status: int, code: str, message: str, *, type_: str = "conclave_error",
                 headers: Mapping[str, str] | None = None, extra: Mapping | None = None) -> web.Response:
    error = {"message": message, "type": type_, "param": None, "code": code, **(extra or {})}
    return web.json_response({"error": error}, status=status, headers=headers)


def sse_error_event(code: str, message: str, type_: str) -> bytes:
    """One SSE event carrying an OpenAI-shaped error (what the openai SDK raises as APIError)."""
    error = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return f"data: {json.dumps(error)}\n\n".encode()


def parse_upstream(upstream: str) -> str:
    """"127.0.0.1:8000" or "http://127.0.0.1:8000" -> "http://127.0.0.1:8000" (plain HTTP only:
    the upstream is vLLM on the head's loopback or the local cluster's private address), or
    "unix:/ABS/PATH" -> itself: vLLM on a unix socket (a head whose engine runs in its inner
    network namespace, unreachable over TCP from the front's)."""
    if upstream.startswith("unix:"):
        path = upstream[len("unix:"):]
        if not path.startswith("/") or "\0" in path or len(path.encode()) > 107:
            raise ValueError(f"a unix upstream needs an absolute socket path (at most 107 bytes), got {upstream!r}")
        return f"unix:{path}"
    text = upstream if "://" in upstream else f"http://{upstream}"
    parts = urlsplit(text)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"upstream must be HOST:PORT or http://HOST:PORT, got {upstream!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("upstream takes no path, query or fragment")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"http://{host}:{parts.port}"


def upstream_target(upstream: str) -> tuple[str, str | None]:
    """A parsed upstream -> (base URL for requests, unix socket path or None)."""
    if upstream.startswith("unix:"):
        return "http://localhost", upstream[len("unix:"):]
    return upstream, None


def bad_path(raw_path: str) -> bool:
    """Dot segments or encoded dots/slashes could make the path we route differ from the one the
    upstream resolves: refuse them instead of guessing."""
    lowered = raw_path.lower()
    if "%2e" in lowered or "%2f" in lowered or "%5c" in lowered or "\\" in raw_path:
        return True
    return any(seg in (".", "..") for seg in raw_path.split("/"))


def split_complete_events(buffer: bytes) -> tuple[bytes, bytes]:
    """(every complete SSE event in buffer, the incomplete tail after the last blank line)."""
    end = 0
    for sep in _SSE_SEPARATORS:
        i = buffer.rfind(sep)
        if i >= 0:
            end = max(end, i + len(sep))
    return buffer[:end], buffer[end:]


class ApiKey:
    """The API key the guard checks. Compared in constant time over SHA-256 digests (no length
    leak); never in repr, logs or error messages."""

    __slots__ = ("_digest",)

    def __init__(self, key: str):
        if not isinstance(key, str) or not key or any(c.isspace() for c in key):
            raise ValueError("the API key must be a non-empty string without whitespace")
        self._digest = hashlib.sha256(key.encode("utf-8")).digest()

    def matches(self, authorization: list[str]) -> bool:
        """True for exactly one `Authorization: Bearer <key>` header carrying this key."""
        if len(authorization) != 1:
            return False
        scheme, _, token = authorization[0].strip().partition(" ")
        presented = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        same = hmac.compare_digest(presented, self._digest)
        return same and scheme.lower() == "bearer"

    def __repr__(self) -> str:
        return "ApiKey(<redacted>)"

    def __reduce__(self):  # never pickled into a subprocess or a cache by accident
        raise TypeError("ApiKey is not picklable")


def unauthorized() -> web.Response:
    return openai_error(401, "invalid_api_key", "missing or invalid API key (Authorization: Bearer KEY)",
                        type_="invalid_request_error", headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class Abort:
    """How abort_all ends in-flight requests: `status`/`code` for requests not answered yet,
    `stream_code` for the final event of a streaming response; `extra` goes into the JSON error."""
    status: int
    code: str
    stream_code: str
    message: str
    type_: str = "conclave_error"
    extra: Mapping = field(default_factory=dict)


UPSTREAM_LOST = "upstream_lost"
UPSTREAM_ERROR_TYPE = "conclave_upstream_error"


@dataclass(eq=False)
class _Flight:
    """One forwarded request, from routing until its handler returns (loop thread only)."""
    task: asyncio.Task
    abort: Abort | None = None
    response: web.StreamResponse | None = None
    sse: bool = False
    pending: bytes = b""            # incomplete SSE event held back
    finished: bool = False          # write_eof done


class _BodyTooLarge(Exception):
    pass


class ApiGuard:
    """Route allowlist + API key + body limit + forwarding core (see the module docstring).

    Lives on one event loop: open() there, then handle(request) from aiohttp handlers, close() at
    the end. abort_all_threadsafe() may be called from any thread."""

    def __init__(self, *, upstream: str, api_key: str | None = None, max_body: int = DEFAULT_MAX_BODY,
                 connect_timeout: float = 10.0):
        if max_body <= 0:
            raise ValueError("max_body must be positive")
        self.upstream = parse_upstream(upstream)
        self._base_url, self._socket_path = upstream_target(self.upstream)
        self.api_key = ApiKey(api_key) if api_key is not None else None
        self.max_body = int(max_body)
        self.connect_timeout = float(connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flights: set[_Flight] = set()

    def __repr__(self) -> str:
        return (f"ApiGuard(upstream={self.upstream}, api_key={'<redacted>' if self.api_key else None}, "
                f"max_body={self.max_body})")

    # ------------------------------------------------------------------ lifecycle (loop thread)
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        # no pool limit (vLLM queues requests itself; aiohttp's default of 100 would hold the 101st
        # stream back and count that wait as a connect timeout): like the TCP forwarder it replaces
        connector = (aiohttp.UnixConnector(path=self._socket_path, limit=0) if self._socket_path
                     else aiohttp.TCPConnector(limit=0))
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=None))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ aborts
    @property
    def in_flight(self) -> int:
        return len(self._flights)

    def abort_all(self, abort: Abort) -> int:
        """End every in-flight forwarded request (loop thread only). Returns how many."""
        count = 0
        for flight in list(self._flights):
            if flight.abort is None and not flight.finished:
                flight.abort = abort
                flight.task.cancel()
                count += 1
        if count:
            log.warning("api guard: ended %d in-flight request(s): %s", count, abort.stream_code)
        return count

    def abort_all_threadsafe(self, abort: Abort) -> None:
        """abort_all from any thread (agent hooks); a no-op when the guard is not serving."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.abort_all, abort)
        except RuntimeError:        # the loop closed in between: nothing is in flight any more
            pass

    # ------------------------------------------------------------------ routing
    def routable(self, path: str) -> bool:
        if path.startswith("/v1/") or path in KEYLESS:
            return True
        return path in KEY_ONLY and self.api_key is not None

    def authorized(self, request: web.Request) -> bool:
        if self.api_key is None or request.path in KEYLESS:
            return True
        return self.api_key.matches(request.headers.getall("Authorization", []))

    async def handle(self, request: web.Request, *, local: Mapping[str, Handler] | None = None,
                     gate: Callable[[str], web.Response | None] | None = None) -> web.StreamResponse:
        """Checks 1-6 of the module docstring. `local`: keyless routes answered by the embedding
        server; `gate(path)`: a refusal response or None, run right before forwarding."""
        path = request.path
        if bad_path(request.rel_url.raw_path):
            return openai_error(400, "invalid_path", "path with dot segments or encoded separators",
                                type_="invalid_request_error")
        if local and path in local:
            return await local[path](request)
        if not self.authorized(request):
            return unauthorized()
        if not self.routable(path):
            return openai_error(404, "not_found", f"no route {path}", type_="invalid_request_error")
        return await self.forward(request, gate=(lambda: gate(path)) if gate else None)

    # ------------------------------------------------------------------ forwarding
    async def forward(self, request: web.Request, *,
                      gate: Callable[[], web.Response | None] | None = None) -> web.StreamResponse:
        """Relay one request to the upstream, abortable by abort_all until it returns."""
        task = asyncio.current_task()
        assert task is not None
        flight = _Flight(task)
        # registered and gated in one synchronous step: an abort scheduled after the gate's state
        # changed (a stage dropped) either finds this flight or the gate already refuses
        self._flights.add(flight)
        try:
            refused = gate() if gate is not None else None
            if refused is not None:
                return refused
            try:
                return await self._relay(request, flight)
            except asyncio.CancelledError:
                if flight.abort is None:
                    raise               # the client went away or the server is stopping
                task.uncancel()
                return await self._end_aborted(request, flight)
        finally:
            self._flights.discard(flight)

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body:
            raise _BodyTooLarge
        chunks, size = [], 0
        while True:
            chunk = await request.content.read(READ_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_body:
                raise _BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def _relay(self, request: web.Request, flight: _Flight) -> web.StreamResponse:
        assert self._session is not None, "ApiGuard.open() was not awaited"
        try:
            body = await self._read_body(request)
        except _BodyTooLarge:
            return openai_error(413, "request_too_large", f"request body larger than {self.max_body} bytes",
                                type_="invalid_request_error", headers={"Connection": "close"})
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in HOP_BY_HOP and k.lower() not in REQUEST_ONLY_STRIP)
        url = URL(self._base_url + request.rel_url.raw_path_qs, encoded=True)   # exactly what we routed
        try:
            async with self._session.request(request.method, url, headers=headers, data=body or None,
                                             allow_redirects=False, skip_auto_headers=_NO_AUTO) as up:
                return await self._stream_back(request, up, flight)
        except aiohttp.ClientConnectorError:
            return openai_error(503, "engine_unavailable", "the inference engine is not reachable",
                                type_=UPSTREAM_ERROR_TYPE)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:   # before any response header went out
            return openai_error(502, "upstream_error", f"upstream request failed: {type(exc).__name__}",
                                type_=UPSTREAM_ERROR_TYPE)

    async def _stream_back(self, request: web.Request, up: aiohttp.ClientResponse,
                           flight: _Flight) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for k, v in up.headers.items():
            if k.lower() not in HOP_BY_HOP:
                resp.headers.add(k, v)
        flight.sse = up.headers.get("Content-Type", "").lower().startswith("text/event-stream")
        flight.response = resp
        try:
            await resp.prepare(request)
            while True:
                try:
                    chunk = await up.content.readany()
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    log.warning("api guard: upstream lost mid-response: %s", type(exc).__name__)
                    return await self._end_started(request, flight, UPSTREAM_LOST,
                                                   "the inference engine connection was lost mid-response; "
                                                   "the response is incomplete", UPSTREAM_ERROR_TYPE)
                if not chunk:
                    break
                if flight.sse:
                    out, flight.pending = split_complete_events(flight.pending + chunk)
                    if len(flight.pending) > SSE_MAX_PENDING:
                        out, flight.pending = out + flight.pending, b""
                else:
                    out = chunk
                if out:
                    await resp.write(out)
            if flight.pending:
                await resp.write(flight.pending)
                flight.pending = b""
            await resp.write_eof()
            flight.finished = True
        except ConnectionError:
            # the client went away (aiohttp's ClientConnectionResetError is one): leaving the
            # upstream context closes that connection, so the engine aborts the request too
            pass
        return resp

    async def _end_aborted(self, request: web.Request, flight: _Flight) -> web.StreamResponse:
        abort = flight.abort
        assert abort is not None
        if flight.response is not None and flight.response.prepared:
            return await self._end_started(request, flight, abort.stream_code, abort.message, abort.type_)
        return openai_error(abort.status, abort.code, abort.message, type_=abort.type_, extra=abort.extra)

    async def _end_started(self, request: web.Request, flight: _Flight, code: str, message: str,
                           type_: str) -> web.StreamResponse:
        """Headers are out: SSE gets a final error event; then the connection closes either way."""
        resp = flight.response
        assert resp is not None
        if flight.finished:
            return resp
        if flight.sse:
            flight.pending = b""            # an incomplete event is dropped, never half-relayed
            try:
                await resp.write(sse_error_event(code, message, type_))
                await resp.write_eof()
                flight.finished = True
            except (ConnectionError, RuntimeError):   # client gone / eof already started
                pass
        if request.transport is not None:
            request.transport.close()       # flushes what was written, then closes
        return resp
