"""The signed run report: what ran where, signed by a key bound into the head's evidence.

Why: a client that verified the head's attestation (whose REPORT_DATA binds `report_key`, see
endpoint.binding) can check, with this report alone, which engine and model digests ran, which
node of which owner served each layer range with which evidence and shard, and every
re-attestation since start. Each stage carries its owner proof (report/owner_proof.py: the owner
enrolment it runs under), and verify_report with the manifest refuses a stage whose owner is not
proven (owner_not_enrolled). The head's report signing key is generated in memory inside the CVM.

File: {"report": {...}, "signature": b64(Ed25519), "report_key": b64(raw 32-byte key)}
Signed message: SIGNING_CONTEXT || canonical_json(report); report["report_key"] equals the outer key.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.runtime.errors import ConclaveError
from conclave.runtime.reasons import exit_code_for
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.canonical import CanonicalError, canonical_json, strict_loads
from conclave.runtime.manifest.document import ROLES, VerifiedManifest, rfc3339
from conclave.runtime.report.owner_proof import FIELDS as OWNER_PROOF_FIELDS
from conclave.runtime.report.owner_proof import owner_proof_json, owner_proof_problems
from conclave.runtime.reasons import ReportReason  # noqa: F401 (re-export; the one registry)

REPORT_VERSION = 1
SIGNING_CONTEXT = b"conclave/run-report/v1\x00"
RECEIPT_SIGNING_CONTEXT = b"conclave/receipt/v1\x00"   # per-response receipts (endpoint/receipt.py)
MAX_REPORT_LEN = 8 * 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
REATTEST_RESULTS = ("ok", "failed", "evicted")


class ReportError(ConclaveError):
    def __init__(self, reason: str, message: str):
        super().__init__(reason, message, exit_code=exit_code_for(reason))


def _bad(message: str) -> ReportError:
    return ReportError(ReportReason.MALFORMED, message)


def _hex64(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise _bad(f"{what} must be 64 lowercase hex characters")
    return value


def _time(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _TIME.match(value):
        raise _bad(f"{what} must be RFC 3339 UTC (YYYY-MM-DDTHH:MM:SSZ)")
    return value


@dataclass(frozen=True)
class StageRecord:
    node: str
    owner: str
    role: str
    layer_start: int
    layer_end: int
    tee: str
    evidence_sha256: str   # SHA-256 of the evidence bytes the node was admitted with
    shard_sha256: str      # digest of the model shard the stage loaded (from the model manifest)
    # the stage's own signed statement of its shard ({"body", "signature"}, b64), by the statement key
    # its evidence binds (overlay/stage_statement.py); None where the head has none (yet)
    shard_statement: dict | None = None
    # the owner enrolment the stage runs under (report/owner_proof.py); None where the head has none
    owner_proof: dict | None = None
    # RFC 3339 UTC: the stage's OutOfDate TCB is accepted only under the policy's tcb_grace_until,
    # until then (after a TCB recovery); None: not on grace
    tcb_grace_until: str | None = None

    def to_json(self) -> dict:
        out = {"node": self.node, "owner": self.owner, "role": self.role,
               "layers": [self.layer_start, self.layer_end], "tee": self.tee,
               "evidence_sha256": self.evidence_sha256, "shard_sha256": self.shard_sha256}
        if self.shard_statement is not None:
            out["shard_statement"] = dict(self.shard_statement)
        if self.owner_proof is not None:
            out["owner_proof"] = dict(self.owner_proof)
        if self.tcb_grace_until is not None:
            out["tcb_grace_until"] = self.tcb_grace_until
        return out

    @classmethod
    def from_json(cls, obj: Any, i: int) -> "StageRecord":
        want = {"node", "owner", "role", "layers", "tee", "evidence_sha256", "shard_sha256"}
        if not isinstance(obj, dict) or set(obj) - {"shard_statement", "owner_proof", "tcb_grace_until"} != want:
            raise _bad(f"stages[{i}] must have exactly {', '.join(sorted(want))} "
                       "(and optionally shard_statement, owner_proof, tcb_grace_until)")
        grace = obj.get("tcb_grace_until")
        if grace is not None:
            _time(grace, f"stages[{i}].tcb_grace_until")
        proof = obj.get("owner_proof")
        if proof is not None:
            if not isinstance(proof, dict) or set(proof) != OWNER_PROOF_FIELDS \
                    or not isinstance(proof["enrolment"], str):
                raise _bad(f"stages[{i}].owner_proof must be {{{', '.join(sorted(OWNER_PROOF_FIELDS))}}}")
            _hex64(proof["enrolment_sha256"], f"stages[{i}].owner_proof.enrolment_sha256")
            _time(proof["issued"], f"stages[{i}].owner_proof.issued")
            _time(proof["expires"], f"stages[{i}].owner_proof.expires")
        statement = obj.get("shard_statement")
        if statement is not None and (not isinstance(statement, dict) or set(statement) != {"body", "signature"}
                                      or not all(isinstance(v, str) for v in statement.values())):
            raise _bad(f"stages[{i}].shard_statement must be {{body, signature}} (base64)")
        layers = obj["layers"]
        if (not isinstance(layers, list) or len(layers) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
                or not 0 <= layers[0] < layers[1]):
            raise _bad(f"stages[{i}].layers must be [start, end)")
        for name in ("node", "owner", "tee"):
            if not isinstance(obj[name], str) or not obj[name]:
                raise _bad(f"stages[{i}].{name} must be a non-empty string")
        if obj["role"] not in ROLES:
            raise _bad(f"stages[{i}].role must be head or worker")
        return cls(obj["node"], obj["owner"], obj["role"], layers[0], layers[1], obj["tee"],
                   _hex64(obj["evidence_sha256"], f"stages[{i}].evidence_sha256"),
                   _hex64(obj["shard_sha256"], f"stages[{i}].shard_sha256"), statement, proof, grace)


def check_stage_statements(report: "RunReport", statement_keys: Mapping[str, bytes]) -> list[str]:
    """Each stage's shard statement against the statement key its evidence binds (statement_keys:
    node -> 32-byte key, e.g. from the attestation bundle's binding extras): signed by that key,
    naming that stage and the report's shard digest. Returns the stages whose statement is missing
    or wrong (empty: every stage signed the shard the report lists)."""
    from conclave.overlay import stage_statement
    bad = []
    for s in report.stages:
        key = statement_keys.get(s.node)
        if s.shard_statement is None or not key:
            bad.append(s.node)
            continue
        try:
            value = stage_statement.verify(key, keys.unb64(s.shard_statement["body"], "body"),
                                           keys.unb64(s.shard_statement["signature"], "signature", length=64))
        except (stage_statement.StatementInvalid, ValueError):
            bad.append(s.node)
            continue
        shard = value.get("shard") or {}
        if value.get("stage") != s.node or shard.get("digest") != s.shard_sha256 or shard.get("verified") is not True:
            bad.append(s.node)
    return bad


@dataclass(frozen=True)
class ReattestationEvent:
    at: str
    node: str
    result: str                      # ok | failed | evicted
    reason: str | None = None
    evidence_sha256: str | None = None

    def to_json(self) -> dict:
        return {"at": self.at, "node": self.node, "result": self.result, "reason": self.reason,
                "evidence_sha256": self.evidence_sha256}

    @classmethod
    def from_json(cls, obj: Any, i: int) -> "ReattestationEvent":
        if not isinstance(obj, dict) or set(obj) != {"at", "node", "result", "reason", "evidence_sha256"}:
            raise _bad(f"reattestations[{i}] has wrong fields")
        if obj["result"] not in REATTEST_RESULTS:
            raise _bad(f"reattestations[{i}].result must be one of {', '.join(REATTEST_RESULTS)}")
        if not isinstance(obj["node"], str) or not obj["node"]:
            raise _bad(f"reattestations[{i}].node must be a string")
        if obj["reason"] is not None and not isinstance(obj["reason"], str):
            raise _bad(f"reattestations[{i}].reason must be a string or null")
        ev = obj["evidence_sha256"]
        if ev is not None:
            _hex64(ev, f"reattestations[{i}].evidence_sha256")
        return cls(_time(obj["at"], f"reattestations[{i}].at"), obj["node"], obj["result"],
                   obj["reason"], ev)


@dataclass(frozen=True)
class RunReport:
    manifest_digest: str
    engine_digest: str
    model_digest: str
    started_at: str
    stages: tuple[StageRecord, ...]
    reattestations: tuple[ReattestationEvent, ...] = ()
    issued_at: str = field(default_factory=lambda: rfc3339(datetime.now(timezone.utc)))
    version: int = REPORT_VERSION

    def with_event(self, event: ReattestationEvent) -> "RunReport":
        return RunReport(self.manifest_digest, self.engine_digest, self.model_digest,
                         self.started_at, self.stages, (*self.reattestations, event),
                         rfc3339(datetime.now(timezone.utc)), self.version)

    def to_json(self, report_key: bytes) -> dict:
        return {"version": self.version, "manifest_digest": self.manifest_digest,
                "engine_digest": self.engine_digest, "model_digest": self.model_digest,
                "started_at": self.started_at, "issued_at": self.issued_at,
                "stages": [s.to_json() for s in self.stages],
                "reattestations": [e.to_json() for e in self.reattestations],
                "report_key": keys.b64(report_key)}

    @classmethod
    def from_json(cls, obj: Any) -> tuple["RunReport", bytes]:
        want = {"version", "manifest_digest", "engine_digest", "model_digest", "started_at",
                "issued_at", "stages", "reattestations", "report_key"}
        if not isinstance(obj, dict) or set(obj) != want:
            raise _bad("report must have exactly " + ", ".join(sorted(want)))
        if obj["version"] != REPORT_VERSION or isinstance(obj["version"], bool):
            raise _bad(f"unsupported report version {obj['version']!r}")
        if not isinstance(obj["stages"], list) or not obj["stages"]:
            raise _bad("stages must be a non-empty list")
        if not isinstance(obj["reattestations"], list):
            raise _bad("reattestations must be a list")
        try:
            key = keys.unb64(obj["report_key"], "report_key", length=keys.PUBLIC_KEY_LEN)
        except ValueError as exc:
            raise _bad(str(exc)) from None
        report = cls(_hex64(obj["manifest_digest"], "manifest_digest"),
                     _hex64(obj["engine_digest"], "engine_digest"),
                     _hex64(obj["model_digest"], "model_digest"),
                     _time(obj["started_at"], "started_at"),
                     tuple(StageRecord.from_json(s, i) for i, s in enumerate(obj["stages"])),
                     tuple(ReattestationEvent.from_json(e, i) for i, e in enumerate(obj["reattestations"])),
                     _time(obj["issued_at"], "issued_at"))
        return report, key

    @classmethod
    def for_manifest(cls, manifest: VerifiedManifest, *, started_at: datetime,
                     evidence: Mapping[str, tuple[str, bytes]], shards: Mapping[str, str],
                     enrolments: Mapping[str, bytes] | None = None) -> "RunReport":
        """Build a report from the manifest layout: evidence = {node: (tee, evidence bytes)},
        shards = {node: shard digest hex}, enrolments = {node: owner enrolment bytes}."""
        records = []
        for s in manifest.stages:
            tee, ev = evidence[s.node]
            enrolment = (enrolments or {}).get(s.node)
            records.append(StageRecord(s.node, s.owner, s.role, s.layer_start, s.layer_end, str(tee),
                                       hashlib.sha256(ev).hexdigest(), shards[s.node], None,
                                       owner_proof_json(enrolment) if enrolment else None))
        return cls(manifest.digest.hex(), manifest.engine_digest, manifest.model_digest,
                   rfc3339(started_at), tuple(records))


class ReportSigner:
    """The head's report signing key: in memory only; its public key goes into the head binding."""

    __slots__ = ("_key",)

    def __init__(self, key: ed25519.Ed25519PrivateKey):
        self._key = key

    def __repr__(self) -> str:
        return f"ReportSigner(public={keys.fingerprint(self.public_key)[:16]}, key=<redacted>)"

    def __reduce__(self):
        raise TypeError("ReportSigner is not picklable")

    @classmethod
    def generate(cls) -> "ReportSigner":
        return cls(ed25519.Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        return keys.public_key_bytes(self._key)

    def sign(self, report: RunReport) -> bytes:
        body = report.to_json(self.public_key)
        signature = self._key.sign(SIGNING_CONTEXT + canonical_json(body))
        doc = {"report": body, "signature": keys.b64(signature), "report_key": keys.b64(self.public_key)}
        return canonical_json(doc) + b"\n"

    def sign_receipt(self, receipt: Mapping[str, Any]) -> bytes:
        """Raw Ed25519 signature over RECEIPT_SIGNING_CONTEXT || canonical_json(receipt): the same
        attested key signs per-response receipts, under its own context (never a report)."""
        return self._key.sign(RECEIPT_SIGNING_CONTEXT + canonical_json(dict(receipt)))


@dataclass(frozen=True)
class VerifiedReport:
    report: RunReport
    report_key: bytes
    key_pinned: bool
    manifest_checked: bool

    @property
    def owners_proven(self) -> bool:
        """Every stage's owner proof held against the manifest (only checked with one)."""
        return self.manifest_checked

    def to_json(self) -> dict:
        return {"report_key": keys.b64(self.report_key), "key_pinned": self.key_pinned,
                "manifest_checked": self.manifest_checked, "owners_proven": self.owners_proven,
                **self.report.to_json(self.report_key)}


def _check_against_manifest(report: RunReport, manifest: VerifiedManifest) -> None:
    problems = []
    if report.manifest_digest != manifest.digest.hex():
        problems.append("manifest digest")
    if report.engine_digest != manifest.engine_digest:
        problems.append("engine digest")
    if report.model_digest != manifest.model_digest:
        problems.append("model digest")
    layout = [(s.node, s.owner, s.role, s.layer_start, s.layer_end) for s in report.stages]
    expected = [(s.node, s.owner, s.role, s.layer_start, s.layer_end) for s in manifest.stages]
    if layout != expected:
        problems.append("stage layout")
    staged = {s.node for s in manifest.stages}
    if any(e.node not in staged for e in report.reattestations):
        problems.append("re-attestation of a node outside the manifest")
    if problems:
        raise ReportError(ReportReason.MANIFEST_MISMATCH,
                          "report disagrees with the manifest: " + ", ".join(problems))
    unproven = owner_proof_problems(report.stages, manifest=manifest, issued_at=report.issued_at)
    if unproven:
        raise ReportError(ReportReason.OWNER_NOT_ENROLLED,
                          "stage owners not proven: " + "; ".join(unproven))


def verify_report(data: bytes, *, report_key: bytes | None = None,
                  manifest: VerifiedManifest | None = None) -> VerifiedReport:
    """Parse, check the signature, then the pinned key (e.g. from a verified attestation bundle),
    then the manifest (digests and stage layout, then each stage's owner proof). Stops at the
    first failure."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_REPORT_LEN:
        raise _bad("report must be bytes of at most 8 MiB")
    try:
        doc = strict_loads(bytes(data))
    except CanonicalError as exc:
        raise _bad(f"report file: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"report", "signature", "report_key"}:
        raise _bad("report file must have exactly report, signature, report_key")
    report, inner_key = RunReport.from_json(doc["report"])
    try:
        signature = keys.unb64(doc["signature"], "signature", length=64)
        outer_key = keys.unb64(doc["report_key"], "report_key", length=keys.PUBLIC_KEY_LEN)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    if outer_key != inner_key:
        raise _bad("outer report_key differs from the signed report_key")
    try:
        keys.load_public_key_raw(inner_key).verify(signature, SIGNING_CONTEXT + canonical_json(doc["report"]))
    except (InvalidSignature, ValueError):
        raise ReportError(ReportReason.SIGNATURE_INVALID, "report signature does not verify") from None
    if report_key is not None and not keys.same_key(report_key, inner_key):
        raise ReportError(ReportReason.REPORT_KEY_MISMATCH,
                          "report is signed by a key other than the head's attested report key")
    if manifest is not None:
        _check_against_manifest(report, manifest)
    return VerifiedReport(report, inner_key, report_key is not None, manifest is not None)


def events_for(nodes: Iterable[str], result: str, *, at: datetime, reason: str | None = None,
               evidence: Mapping[str, bytes] | None = None) -> Sequence[ReattestationEvent]:
    """Convenience: one event per node for a re-attestation round."""
    return [ReattestationEvent(rfc3339(at), n, result, reason,
                               hashlib.sha256(evidence[n]).hexdigest() if evidence and n in evidence else None)
            for n in nodes]
