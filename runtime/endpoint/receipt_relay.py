"""`conclave proxy`'s receipt check: a completion is passed on only with a receipt that verifies.

Why in the proxy: applications behind it should not each check receipts, and a response the
attested head did not sign (a receipt missing, forged, for other bytes, or pointing to a run report
of another deployment) must not reach them as if it were attested.

For every exchange that carries a receipt (endpoint.receipt.receipt_expected) the relay checks it
against the exact request body forwarded, the exact response bytes received, the head's report
key from the verification the connection is pinned to, and the run report the receipt names
(fetched once per digest from /v1/report/<sha256> over the same pinned certificate, checked
against the client's manifest):
  non-streamed  the body is held until its `Conclave-Receipt` header verifies; otherwise the client
                gets 502 with the receipt_* reason instead of the body.
  streamed      events pass through as they arrive (streaming stays incremental) up to the receipt
                event; `data: [DONE]` passes only after the receipt verified. A bad or missing
                receipt ends the stream with an SSE error event carrying the reason instead of
                [DONE] (the openai SDK raises it as an APIError), and the connection closes.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Callable

import aiohttp
from aiohttp import web

from conclave.runtime.endpoint.receipt import (RECEIPT_HEADER, ReceiptError, parse_receipt,
                                               receipt_in_stream, signed_part, verify_receipt)
from conclave.runtime.endpoint.verify import EndpointReason
from conclave.runtime.errors import ConclaveError
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.manifest.document import VerifiedManifest
from conclave.runtime.report.document import MAX_REPORT_LEN
from conclave.runtime.serving.api_guard import split_complete_events, sse_error_event

log = logging.getLogger("conclave.proxy")

ERROR_TYPE = "conclave_attestation_error"
REPORT_CACHE = 64


def _refused(reason: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": f"refusing the response: {message}", "type": ERROR_TYPE,
                                        "param": None, "code": reason}}, status=502)


class ReceiptRelay:
    """Relays one receipt-bearing upstream response after checking its receipt (see module doc)."""

    def __init__(self, manifest: VerifiedManifest, base_url: str,
                 session: Callable[[], aiohttp.ClientSession | None]):
        self.manifest = manifest
        self.base_url = base_url
        self._session = session
        self._reports: OrderedDict[str, bytes] = OrderedDict()

    @staticmethod
    def attested_key(detail: dict | None) -> bytes | None:
        try:
            return keys.unb64(detail["head"]["report_pubkey"], "report key", length=keys.PUBLIC_KEY_LEN)
        except (KeyError, TypeError, ValueError):
            return None

    async def _report(self, doc: dict, fingerprint: bytes) -> bytes | None:
        digest = doc.get("receipt", {}).get("report_sha256") if isinstance(doc.get("receipt"), dict) else None
        if not isinstance(digest, str) or len(digest) != 64:
            return None
        if digest in self._reports:
            return self._reports[digest]
        session = self._session()
        if session is None:
            return None
        try:
            async with session.get(f"{self.base_url}/v1/report/{digest}", ssl=aiohttp.Fingerprint(fingerprint),
                                   allow_redirects=False) as r:
                data = await r.content.read(MAX_REPORT_LEN + 1)
                if r.status != 200:
                    return None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None
        self._reports[digest] = data
        while len(self._reports) > REPORT_CACHE:
            self._reports.popitem(last=False)
        return data

    async def check(self, doc: dict | None, request_body: bytes, response: bytes, pinned) -> None:
        """Raise ConclaveError (a receipt_* reason) unless the receipt verifies."""
        if doc is None:
            raise ReceiptError(EndpointReason.RECEIPT_MISSING, "the response carries no receipt")
        key = self.attested_key(pinned.detail)
        if key is None:
            raise ReceiptError(EndpointReason.RECEIPT_KEY_NOT_ATTESTED, "no attested report key to check against")
        report = await self._report(doc, pinned.cert_sha256)
        if report is None:
            raise ReceiptError(EndpointReason.RECEIPT_REPORT_MISMATCH,
                               "the head does not serve the run report this receipt names")
        verify_receipt(doc, request=request_body, response=response, report=report,
                       manifest=self.manifest, attested_key=key)

    async def relay(self, request: web.Request, up: aiohttp.ClientResponse, request_body: bytes, pinned,
                    headers: list[tuple[str, str]], still_pinned: Callable[[], bool]) -> web.StreamResponse:
        if up.headers.get("Content-Type", "").lower().startswith("text/event-stream"):
            return await self._stream(request, up, request_body, pinned, headers, still_pinned)
        data = await up.read()
        try:
            header = up.headers.get(RECEIPT_HEADER)
            await self.check(parse_receipt(header) if header else None, request_body, data, pinned)
        except ConclaveError as exc:
            log.warning("refused a response: receipt failed [%s]", exc.reason, extra={"reason": exc.reason})
            return _refused(exc.reason, exc.message)
        resp = web.Response(status=up.status, reason=up.reason, body=data)
        for k, v in headers:
            resp.headers.add(k, v)
        return resp

    async def _stream(self, request, up, request_body, pinned, headers, still_pinned) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for k, v in headers:
            resp.headers.add(k, v)
        await resp.prepare(request)
        seen, pending, verified = bytearray(), b"", False

        async def fail(reason: str, message: str) -> web.StreamResponse:
            log.warning("cut a stream: receipt failed [%s]", reason, extra={"reason": reason})
            try:
                await resp.write(sse_error_event(reason, f"refusing the response: {message}", ERROR_TYPE))
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass
            if request.transport is not None:
                request.transport.close()
            return resp

        async def relay(out: bytes) -> web.StreamResponse | None:
            nonlocal verified
            if verified:
                await resp.write(out)
                return None
            head = signed_part(bytes(seen) + out)
            if len(head) == len(seen) + len(out):          # no receipt event in this block yet
                if b"data: [DONE]" in out:
                    return await fail(EndpointReason.RECEIPT_MISSING, "the stream ended without a receipt")
                seen.extend(out)
                await resp.write(out)
                return None
            before = head[len(seen):]
            seen.extend(before)
            await resp.write(before)
            rest = out[len(before):]
            try:
                await self.check(receipt_in_stream(rest), request_body, bytes(seen), pinned)
            except ConclaveError as exc:
                return await fail(exc.reason, exc.message)
            verified = True
            await resp.write(rest)
            return None

        try:
            while True:
                chunk = await up.content.readany()
                if not still_pinned():
                    log.warning("verification stopped holding mid-stream; cutting the response")
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                if not chunk:
                    break
                out, pending = split_complete_events(pending + chunk)
                if out and (ended := await relay(out)) is not None:
                    return ended
            if pending and (ended := await relay(pending)) is not None:
                return ended
            if not verified:
                return await fail(EndpointReason.RECEIPT_MISSING, "the stream ended without a receipt")
            await resp.write_eof()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return await fail("upstream_error", "the upstream stream broke")
        except ConnectionError:
            pass
        return resp
