"""The head front's side of per-response receipts (format and checks: endpoint/receipt.py).

ReportArchive   keeps every signed run report a receipt pointed to (re-signed only when the
                report's content changes, so one report serves many receipts), bounded by count and
                bytes, oldest dropped first; served at GET /v1/report/<sha256> without an API key
                (the same public facts as /v1/report).
ReceiptIssuer   signs a receipt for one exchange with the head's report key (RunReportState).
ReceiptGuard    the front's ApiGuard: for every exchange that carries a receipt
                (endpoint.receipt.receipt_expected) it buffers a non-streamed body to put the receipt
                in the `Conclave-Receipt` header, and relays a stream event by event, holding back
                `data: [DONE]` to send the receipt event right before it. Everything else is
                forwarded exactly as ApiGuard does. When no receipt can be made (the run report is
                incomplete) the completion is refused (503 / a final SSE error event): fail closed.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import threading
from collections import OrderedDict

import aiohttp
from aiohttp import web

from conclave.runtime.endpoint.receipt import (RECEIPT_HEADER, header_value, make_receipt,
                                               receipt_expected, sse_event)
from conclave.runtime.serving.api_guard import (HOP_BY_HOP, SSE_MAX_PENDING, UPSTREAM_ERROR_TYPE,
                                                UPSTREAM_LOST, ApiGuard, openai_error,
                                                split_complete_events, sse_error_event)
from conclave.runtime.serving.front_report import ReportIncomplete, RunReportState

log = logging.getLogger("conclave.front")

ARCHIVE_PATH_PREFIX = "/v1/report/"
MAX_ARCHIVED_REPORTS = 512
MAX_ARCHIVED_BYTES = 64 * 1024 * 1024
_BODY_KEY = web.RequestKey("conclave_request_body", bytes)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# the [DONE] event at the start of `out` or right after an event separator
_DONE = re.compile(rb"(?:\A|(?<=\n\n)|(?<=\r\r)|(?<=\r\n\r\n))data: ?\[DONE\]")


def _done_event(out: bytes):
    """_DONE.search(out), without running the lookbehind pattern over every byte of every relayed
    chunk (that cost ~1 ms per 100 events): a match contains "[DONE]", so it starts at most 6 bytes
    ("data: ") before the first one."""
    i = out.find(b"[DONE]")
    return None if i < 0 else _DONE.search(out, max(0, i - 6))


class ReportArchive:
    """Signed run reports by SHA-256 of their bytes; current() signs a new one only on change."""

    def __init__(self, report: RunReportState, *, max_reports: int = MAX_ARCHIVED_REPORTS,
                 max_bytes: int = MAX_ARCHIVED_BYTES):
        self.report = report
        self.max_reports, self.max_bytes = int(max_reports), int(max_bytes)
        self._reports: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._content = None
        self._current: str | None = None
        self._lock = threading.Lock()

    def current(self) -> str:
        """Digest of the signed report for the state right now (raises ReportIncomplete)."""
        content = dataclasses.replace(self.report.snapshot(), issued_at="")
        with self._lock:
            if content == self._content and self._current in self._reports:
                return self._current
        data = self.report.signed()
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest not in self._reports:
                self._reports[digest] = data
                self._size += len(data)
                while len(self._reports) > 1 and (len(self._reports) > self.max_reports
                                                  or self._size > self.max_bytes):
                    _, old = self._reports.popitem(last=False)
                    self._size -= len(old)
            self._content, self._current = content, digest
        return digest

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            return self._reports.get(digest)

    def __len__(self) -> int:
        with self._lock:
            return len(self._reports)


class ReceiptIssuer:
    """Receipts signed by the head's report key over one exchange and the current report."""

    def __init__(self, report: RunReportState, archive: ReportArchive | None = None):
        self.report = report
        self.archive = archive or ReportArchive(report)

    def issue(self, request_body: bytes, response_sha256: str) -> dict:
        """Receipt for the exact request body and the SHA-256 hex of the response bytes it covers."""
        return make_receipt(self.report, request_sha256=hashlib.sha256(request_body).hexdigest(),
                            response_sha256=response_sha256,
                            model_digest=self.report.manifest.model_digest,
                            report_sha256=self.archive.current())


async def archived_report(archive: ReportArchive, request: web.Request) -> web.Response:
    """GET /v1/report/<sha256>: a report some receipt points to (404 report_not_found)."""
    if request.method not in ("GET", "HEAD"):
        return openai_error(405, "method_not_allowed", f"{request.path} answers GET only",
                            type_="invalid_request_error", headers={"Allow": "GET"})
    digest = request.path[len(ARCHIVE_PATH_PREFIX):]
    data = archive.get(digest) if _HEX64.match(digest) else None
    if data is None:
        return openai_error(404, "report_not_found", "no run report with that SHA-256 is kept here",
                            type_="invalid_request_error")
    return web.Response(body=data, content_type="application/json",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})


def _copy_headers(up: aiohttp.ClientResponse, resp: web.StreamResponse) -> None:
    for k, v in up.headers.items():
        if k.lower() not in HOP_BY_HOP and k.lower() != RECEIPT_HEADER.lower():
            resp.headers.add(k, v)


class ReceiptGuard(ApiGuard):
    """ApiGuard that attaches a receipt to every exchange that should carry one."""

    def __init__(self, *, receipts: ReceiptIssuer, **kw):
        super().__init__(**kw)
        self.receipts = receipts

    async def _read_body(self, request: web.Request) -> bytes:
        body = await super()._read_body(request)
        request[_BODY_KEY] = body          # the exact bytes forwarded: what the receipt signs
        return body

    async def _stream_back(self, request, up, flight):
        if not receipt_expected(request.method, request.path, up.status):
            return await super()._stream_back(request, up, flight)
        if up.headers.get("Content-Type", "").lower().startswith("text/event-stream"):
            return await self._stream_with_receipt(request, up, flight)
        return await self._whole_with_receipt(request, up, flight)

    async def _whole_with_receipt(self, request, up, flight) -> web.StreamResponse:
        try:
            data = await up.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("front: upstream lost before the response was complete: %s", type(exc).__name__)
            return openai_error(502, UPSTREAM_LOST, "the inference engine connection was lost mid-response",
                                type_=UPSTREAM_ERROR_TYPE)
        try:
            receipt = self.receipts.issue(request.get(_BODY_KEY, b""), hashlib.sha256(data).hexdigest())
        except ReportIncomplete as exc:
            return openai_error(503, exc.reason, f"no receipt can be signed: {exc.message}")
        resp = web.Response(status=up.status, reason=up.reason, body=data)
        _copy_headers(up, resp)
        resp.headers[RECEIPT_HEADER] = header_value(receipt)
        flight.finished = True
        return resp

    async def _stream_with_receipt(self, request, up, flight) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        _copy_headers(up, resp)
        flight.sse, flight.response = True, resp
        signed = hashlib.sha256()
        sent = False

        async def relay(out: bytes) -> None:
            nonlocal sent
            if not sent and (m := _done_event(out)) is not None:
                before, rest = out[:m.start()], out[m.start():]
                signed.update(before)
                await resp.write(before + receipt_event())
                sent = True
                out = rest
            elif not sent:
                signed.update(out)
            if out:
                await resp.write(out)

        def receipt_event() -> bytes:
            return sse_event(self.receipts.issue(request.get(_BODY_KEY, b""), signed.hexdigest()))

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
                out, flight.pending = split_complete_events(flight.pending + chunk)
                if len(flight.pending) > SSE_MAX_PENDING:
                    out, flight.pending = out + flight.pending, b""
                if out:
                    await relay(out)
            if flight.pending:
                out, flight.pending = flight.pending, b""
                await relay(out)
            if not sent:                      # no [DONE] from upstream: the receipt ends the stream
                await resp.write(receipt_event())
            await resp.write_eof()
            flight.finished = True
        except ReportIncomplete as exc:
            return await self._end_started(request, flight, exc.reason,
                                           f"no receipt can be signed: {exc.message}", "conclave_error")
        except ConnectionError:
            pass                               # the client went away; leaving closes the upstream
        return resp
