"""The head front's guard with serving figures: ReceiptGuard plus a tap on each completion.

Why a subclass: the figures (serving_stats.py) must come from the bytes the engine actually sent,
as they arrive, without changing what is relayed or signed. The tap wraps the upstream response's
body stream for completions only: it reads exactly what the guard reads and passes every byte
through unchanged, so forwarding, receipts and aborts behave as in ReceiptGuard.
"""
from __future__ import annotations

from aiohttp import web

from conclave.runtime.serving.receipts import ReceiptGuard
from conclave.runtime.serving.serving_stats import Exchange, ServingStats, counted

_EXCHANGE = web.RequestKey("conclave_serving_exchange", Exchange)
MAX_WHOLE_TAPPED = 4 * 1024 * 1024     # a non-streamed body larger than this is not parsed for usage


class _TappedContent:
    """Stands in for aiohttp's StreamReader of one upstream response: same bytes, counted."""

    def __init__(self, inner, exchange: Exchange, *, sse: bool):
        self._inner, self._exchange, self._sse = inner, exchange, sse
        self._whole = bytearray()
        self._whole_done = False

    async def readany(self) -> bytes:
        chunk = await self._inner.readany()
        if self._sse:
            if chunk:
                self._exchange.feed_stream(chunk)
        elif chunk:
            if len(self._whole) + len(chunk) <= MAX_WHOLE_TAPPED:
                self._whole += chunk
        else:
            self._whole_ended()
        return chunk

    async def read(self, n: int = -1) -> bytes:
        data = await self._inner.read(n)
        if n < 0 and not self._sse:
            self._whole = bytearray(data[:MAX_WHOLE_TAPPED])
            self._whole_ended()
        return data

    def _whole_ended(self) -> None:
        if not self._whole_done:
            self._whole_done = True
            self._exchange.feed_whole(bytes(self._whole))

    def __getattr__(self, name):
        return getattr(self._inner, name)


class ObservedGuard(ReceiptGuard):
    """ReceiptGuard that counts completions into `stats` (see the module docstring)."""

    def __init__(self, *, stats: ServingStats, **kw):
        super().__init__(**kw)
        self.stats = stats

    async def forward(self, request: web.Request, *, gate=None) -> web.StreamResponse:
        if not counted(request.method, request.path):
            return await super().forward(request, gate=gate)
        exchange = self.stats.begin()
        request[_EXCHANGE] = exchange
        status: int | None = None
        try:
            resp = await super().forward(request, gate=gate)
            status = resp.status
            return resp
        finally:
            exchange.finish(status)

    async def _stream_back(self, request, up, flight):
        exchange = request.get(_EXCHANGE)
        if exchange is not None and 200 <= up.status < 300:
            sse = up.headers.get("Content-Type", "").lower().startswith("text/event-stream")
            up.content = _TappedContent(up.content, exchange, sse=sse)
        return await super()._stream_back(request, up, flight)
