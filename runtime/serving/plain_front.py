"""The public endpoint of the plain network modes: an HTTP guard in the supervisor's root namespace
in front of the head's vLLM OpenAI server (127.0.0.1:PORT -> head cluster address:8000).

Why not a TCP forwarder: vLLM 0.32 checks its API key only under /v1 (and /v2, /inference,
/cohere), so a byte pipe exposes /invocations (unauthenticated completions), /tokenize,
/scale_elastic_ep, /metrics, /openapi.json... and accepts bodies of any size. PlainFront applies
the same guard as the head's TLS front (runtime/serving/api_guard.py): the API key on every route
but /health (401 invalid_api_key), the route allowlist (/v1/*, /health, /metrics, /version; else
404), a 4 MiB body limit (413 request_too_large), and a final SSE error event (code upstream_lost)
when the engine connection breaks mid-stream. Plain HTTP: these modes are for development on one
machine and listen on loopback by default.

    front = PlainFront(upstream="10.0.0.1:8000", listen_port=port, api_key=key_or_None)
    front.start_in_thread()     # -> (host, port), returns once listening; own event-loop thread
    ...
    front.end_in_flight("stage_lost", "stage n1 lost: ray_node_lost")   # any thread: before the
                                # supervisor stops the engine, end every in-flight request with its reason
    front.stop_thread()         # idempotent

With api_key=None (`conclave up --no-api-key`) nothing is checked on /v1 (vLLM has no key either)
and /metrics, /version are not served: the guard fails closed on what it cannot check.
"""
from __future__ import annotations

import logging

from aiohttp import web

from conclave.runtime.serving.api_guard import DEFAULT_MAX_BODY, UPSTREAM_ERROR_TYPE, Abort, ApiGuard
from conclave.runtime.serving.loop_server import LoopServer

log = logging.getLogger("conclave.plain_front")


class PlainFront(LoopServer):
    """The guarded plain-HTTP endpoint (see the module docstring)."""

    _thread_name = "conclave-plain-front"

    def __init__(self, *, upstream: str, listen_host: str = "127.0.0.1", listen_port: int = 0,
                 api_key: str | None = None, max_body: int = DEFAULT_MAX_BODY, connect_timeout: float = 10.0):
        self.guard = ApiGuard(upstream=upstream, api_key=api_key, max_body=max_body,
                              connect_timeout=connect_timeout)
        self.listen_host, self.listen_port = listen_host, int(listen_port)
        self.bound: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"PlainFront(bound={self.bound}, guard={self.guard!r})"

    def end_in_flight(self, code: str, message: str, *, status: int = 503,
                      type_: str = UPSTREAM_ERROR_TYPE) -> None:
        """From any thread: end every in-flight request at once. Streaming responses get a final
        SSE error event with `code`; requests not answered yet get `status` with `code`. Lets the
        supervisor say why (e.g. stage_lost) before it stops the engine, instead of upstream_lost."""
        self.guard.abort_all_threadsafe(Abort(status=status, code=code, stream_code=code, message=message,
                                              type_=type_))

    async def _route(self, request: web.Request) -> web.StreamResponse:
        return await self.guard.handle(request)

    async def start(self) -> tuple[str, int]:
        await self.guard.open()
        app = web.Application(client_max_size=self.guard.max_body)
        app.router.add_route("*", "/{tail:.*}", self._route)
        self.bound = await self._listen(app, self.listen_host, self.listen_port)
        log.info("plain front: http://%s:%d -> %s (api key %s)", self.bound[0], self.bound[1],
                 self.guard.upstream, "required" if self.guard.api_key else "none")
        return self.bound  # type: ignore[return-value]

    async def _release(self) -> None:
        await self.guard.close()
