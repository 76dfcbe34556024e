"""Per-response receipts: proof of which attested cluster produced one exact response.

Why: verifying the head before sending a prompt says what *would* serve it; a receipt says, after
the fact and offline, what *did*. The head signs, with its report key (the key its hardware evidence
binds next to its TLS key), the SHA-256 of the exact request body, of the exact response body, the
time, the model digest and the digest of the signed run report current at serve time (stages,
owners, evidence digests, re-attestations). The run report itself is kept and served at
/v1/report/<digest>, so a receipt still verifies after the cluster changed.

Receipt object (canonical JSON, runtime/canonical.py):
    {"receipt": {"version": 1, "request_sha256", "response_sha256", "time", "model_digest",
                 "report_sha256"},
     "signature": b64(Ed25519 over RECEIPT_SIGNING_CONTEXT || canonical_json(receipt)),
     "report_key": b64(raw 32-byte key)}
Transport:
    non-streamed   header `Conclave-Receipt: base64url(canonical_json(object))` (no padding)
    streamed (SSE) a final event `data: {"choices":[],"conclave_receipt":<object>}` right before
                   `data: [DONE]`; the response digest covers every byte before that event. The
                   empty "choices" keeps OpenAI clients that handle usage-only chunks working.

Checks (verify_receipt, stops at the first failure; each has its own EndpointReason):
    parse                                      -> malformed
    signature under the key the receipt names  -> receipt_signature_invalid
    request digest                             -> receipt_request_mismatch
    response digest                            -> receipt_response_mismatch
    report bytes digest, report signature      -> receipt_report_mismatch
    report/model vs the pinned manifest, report key vs the attested head key -> receipt_foreign_cluster
    receipt key vs the report's (attested) key -> receipt_key_not_attested
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature

from conclave.runtime.endpoint.verify import EndpointReason
from conclave.runtime.errors import ConclaveError
from conclave.runtime.reasons import exit_code_for
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.canonical import CanonicalError, canonical_json, strict_loads
from conclave.runtime.manifest.document import VerifiedManifest, rfc3339
from conclave.runtime.report.document import (RECEIPT_SIGNING_CONTEXT, ReportError, ReportReason,
                                              VerifiedReport, verify_report)

RECEIPT_VERSION = 1
RECEIPT_HEADER = "Conclave-Receipt"
SSE_KEY = "conclave_receipt"
MAX_RECEIPT_LEN = 16 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
_FIELDS = frozenset({"version", "request_sha256", "response_sha256", "time", "model_digest",
                     "report_sha256"})
_SSE_PREFIX = b'data: {"choices":[],"conclave_receipt":'


def receipt_expected(method: str, path: str, status: int) -> bool:
    """Which exchanges carry a receipt: every successful POST under /v1/ (completions, chat,
    embeddings...) that the head's front forwards to the engine."""
    return method.upper() == "POST" and path.startswith("/v1/") and 200 <= int(status) < 300


class ReceiptError(ConclaveError):
    def __init__(self, reason: str, message: str):
        super().__init__(reason, message, exit_code=exit_code_for(reason))


def _bad(message: str) -> ReceiptError:
    return ReceiptError(EndpointReason.MALFORMED, f"receipt: {message}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


@dataclass(frozen=True)
class Receipt:
    request_sha256: str
    response_sha256: str
    time: str
    model_digest: str
    report_sha256: str
    version: int = RECEIPT_VERSION

    def to_json(self) -> dict:
        return {"version": self.version, "request_sha256": self.request_sha256,
                "response_sha256": self.response_sha256, "time": self.time,
                "model_digest": self.model_digest, "report_sha256": self.report_sha256}

    @classmethod
    def from_json(cls, obj: Any) -> "Receipt":
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise _bad("must have exactly " + ", ".join(sorted(_FIELDS)))
        if obj["version"] != RECEIPT_VERSION or isinstance(obj["version"], bool):
            raise _bad(f"unsupported version {obj['version']!r}")
        for name in ("request_sha256", "response_sha256", "model_digest", "report_sha256"):
            if not isinstance(obj[name], str) or not _HEX64.match(obj[name]):
                raise _bad(f"{name} must be 64 lowercase hex characters")
        if not isinstance(obj["time"], str) or not _TIME.match(obj["time"]):
            raise _bad("time must be RFC 3339 UTC (YYYY-MM-DDTHH:MM:SSZ)")
        return cls(obj["request_sha256"], obj["response_sha256"], obj["time"], obj["model_digest"],
                   obj["report_sha256"], obj["version"])


def make_receipt(signer, *, request_sha256: str, response_sha256: str, model_digest: str,
                 report_sha256: str, at: datetime | None = None) -> dict:
    """The signed receipt object for one exchange (signer: anything with sign_receipt(body) and
    public_key, i.e. the head's ReportSigner or RunReportState). Digests are SHA-256 hex."""
    receipt = Receipt(request_sha256, response_sha256, rfc3339(at or datetime.now(timezone.utc)),
                      model_digest, report_sha256)
    body = receipt.to_json()
    return {"receipt": body, "signature": keys.b64(signer.sign_receipt(body)),
            "report_key": keys.b64(signer.public_key)}


def header_value(doc: Mapping) -> str:
    return base64.urlsafe_b64encode(canonical_json(dict(doc))).rstrip(b"=").decode("ascii")


def sse_event(doc: Mapping) -> bytes:
    """The final SSE event carrying the receipt (before data: [DONE])."""
    return b"data: " + canonical_json({"choices": [], SSE_KEY: dict(doc)}) + b"\n\n"


def signed_part(response: bytes) -> bytes:
    """The bytes a receipt's response digest covers: a stream up to (not including) its receipt
    event; any other body whole."""
    data = bytes(response)
    if data.startswith(_SSE_PREFIX):
        return b""
    for sep in (b"\n\n", b"\r\n\r\n"):
        i = data.find(sep + _SSE_PREFIX)
        if i >= 0:
            return data[:i + len(sep)]
    return data


def receipt_in_stream(response: bytes) -> dict | None:
    """The receipt object embedded in a saved SSE response, if it has one."""
    data = bytes(response)
    head = signed_part(data)
    if head == data:
        return None
    line = data[len(head):].split(b"\n", 1)[0]
    return parse_receipt(line)


def parse_receipt(text: bytes | str) -> dict:
    """Accept what a client saved: the header value, the receipt object, the SSE data object
    ({"conclave_receipt": ...}) or the whole SSE line. Returns the receipt object."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    data = data.strip()
    if len(data) > MAX_RECEIPT_LEN:
        raise _bad(f"longer than {MAX_RECEIPT_LEN} bytes")
    if data.startswith(b"data:"):
        data = data[5:].strip()
    if not data.startswith(b"{"):
        try:
            data = base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            raise _bad("neither JSON nor a base64url header value") from None
    try:
        doc = strict_loads(data)
    except CanonicalError as exc:
        raise _bad(str(exc)) from None
    if isinstance(doc, dict) and SSE_KEY in doc:
        doc = doc[SSE_KEY]
    if not isinstance(doc, dict) or set(doc) != {"receipt", "signature", "report_key"}:
        raise _bad("must have exactly receipt, signature, report_key")
    return doc


@dataclass(frozen=True)
class VerifiedReceipt:
    receipt: Receipt
    receipt_key: bytes
    report: VerifiedReport | None
    key_attested: bool

    def to_json(self) -> dict:
        return {"ok": True, "reason": None, "receipt": self.receipt.to_json(),
                "receipt_key": keys.b64(self.receipt_key), "key_attested": self.key_attested,
                "report_checked": self.report is not None,
                "report": self.report.to_json() if self.report else None}


def _signature_ok(doc: Mapping) -> tuple[Receipt, bytes]:
    receipt = Receipt.from_json(doc["receipt"])
    try:
        signature = keys.unb64(doc["signature"], "signature", length=64)
        key = keys.unb64(doc["report_key"], "report_key", length=keys.PUBLIC_KEY_LEN)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    try:
        keys.load_public_key_raw(key).verify(signature, RECEIPT_SIGNING_CONTEXT + canonical_json(doc["receipt"]))
    except (InvalidSignature, ValueError):
        raise ReceiptError(EndpointReason.RECEIPT_SIGNATURE_INVALID,
                           "the receipt's signature does not verify under its key") from None
    return receipt, key


def _check_report(receipt: Receipt, report: bytes, manifest: VerifiedManifest | None,
                  attested_key: bytes | None) -> VerifiedReport:
    if not hmac.compare_digest(sha256_hex(report), receipt.report_sha256):
        raise ReceiptError(EndpointReason.RECEIPT_REPORT_MISMATCH,
                           "the run report is not the one the receipt names (digest differs)")
    try:
        verified = verify_report(report, manifest=manifest)
    except ReportError as exc:
        if exc.reason == ReportReason.MANIFEST_MISMATCH:
            raise ReceiptError(EndpointReason.RECEIPT_FOREIGN_CLUSTER,
                               f"the receipt's run report is for another deployment: {exc.message}") from None
        raise ReceiptError(EndpointReason.RECEIPT_REPORT_MISMATCH,
                           f"the run report does not verify: {exc.message}") from None
    if attested_key is not None and not keys.same_key(attested_key, verified.report_key):
        raise ReceiptError(EndpointReason.RECEIPT_FOREIGN_CLUSTER,
                           "the run report is signed by another head than the attested one")
    return verified


def verify_receipt(doc: Mapping | bytes | str, *, request: bytes, response: bytes,
                   report: bytes | None = None, manifest: VerifiedManifest | None = None,
                   attested_key: bytes | None = None) -> VerifiedReceipt:
    """Check one receipt against the exact request and response bodies (see the module docstring).

    report: the signed run report the receipt names (checked when given); manifest: the pinned
    deployment manifest; attested_key: the head's report key from verified evidence (a bundle that
    `conclave verify` accepted). Raises ReceiptError with the first failing reason."""
    if not isinstance(doc, Mapping):
        doc = parse_receipt(doc)
    elif set(doc) != {"receipt", "signature", "report_key"}:
        raise _bad("must have exactly receipt, signature, report_key")
    receipt, key = _signature_ok(doc)
    if not hmac.compare_digest(sha256_hex(request), receipt.request_sha256):
        raise ReceiptError(EndpointReason.RECEIPT_REQUEST_MISMATCH,
                           "the request body differs from the one the receipt signs")
    if not hmac.compare_digest(sha256_hex(signed_part(response)), receipt.response_sha256):
        raise ReceiptError(EndpointReason.RECEIPT_RESPONSE_MISMATCH,
                           "the response body differs from the one the receipt signs")
    verified_report = None
    if report is not None:
        verified_report = _check_report(receipt, report, manifest, attested_key)
    if manifest is not None and receipt.model_digest != manifest.model_digest:
        raise ReceiptError(EndpointReason.RECEIPT_FOREIGN_CLUSTER,
                           "the receipt names another model than the pinned manifest")
    expected = verified_report.report_key if verified_report is not None else attested_key
    if expected is not None and not keys.same_key(expected, key):
        raise ReceiptError(EndpointReason.RECEIPT_KEY_NOT_ATTESTED,
                           "the receipt is signed by a key the head's evidence does not bind")
    return VerifiedReceipt(receipt, key, verified_report, attested_key is not None)
