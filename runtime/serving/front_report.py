"""The head's live run report: what runs where, kept up to date and signed on demand.

Why a state object: the signed run report (conclave.runtime.report) is a snapshot, but the facts
arrive over time: the head's own evidence at start, each worker's evidence when the head admits it,
every re-attestation and eviction afterwards. RunReportState collects them (thread-safe: the
agent's admission threads write, the front's event loop reads) and signs a fresh RunReport for
each GET /v1/report with the in-memory ReportSigner whose public key the head's evidence binds.

Shard digests: a stage's shard digest is SHA-256 over a canonical encoding of the model-manifest
group digests and small-file hashes that stage verifies before loading (the same selection as
model.manifest.verify_layer_range), so anyone holding the model manifest can recompute it.

Owner proofs: each stage's record carries the owner enrolment it runs under (report/owner_proof.py):
a worker's is the one it was admitted with (set_owner_proof from the admission hook), the head's
own is read from its agent when the report is signed (owner_proof_source), since its owner enrols
it after it started. A stage without one is signed without it, and verify_report with the
manifest then refuses the report (owner_not_enrolled).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections import deque
from datetime import datetime, timezone
from typing import Callable, Mapping

from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.manifest.document import VerifiedManifest, rfc3339
from conclave.runtime.model.manifest import check_manifest, small_files, stage_groups
from conclave.runtime.report import (ReattestationEvent, ReportSigner, RunReport, StageRecord)
from conclave.runtime.report.document import REATTEST_RESULTS
from conclave.runtime.report.owner_proof import owner_proof_json

log = logging.getLogger("conclave.front")

SHARD_DIGEST_CONTEXT = "conclave/stage-shard/v1"
MAX_EVENTS = 20000     # about two weeks of 10-minute re-attestations of 10 nodes; oldest dropped beyond


class ReportIncomplete(ConclaveError):
    """A stage has no evidence or no shard digest yet: nothing is signed for an incomplete picture."""

    def __init__(self, missing: list[str]):
        super().__init__("report_incomplete", "run report incomplete: " + ", ".join(missing),
                         exit_code=ExitCode.RUNTIME)
        self.missing = missing


def shard_digest(model_manifest: Mapping, start: int, end: int, *, first: bool, last: bool) -> str:
    """SHA-256 hex of what a stage holding layers [start, end) verifies (one definition: model.stage_check)."""
    from conclave.runtime.model.stage_check import shard_digest as digest
    return digest(model_manifest, start, end, first=first, last=last)


def _is_hex64(value: str) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class RunReportState:
    """Collects per-stage evidence, shard digests and re-attestation events; signs on demand."""

    def __init__(self, *, manifest: VerifiedManifest, signer: ReportSigner,
                 started_at: datetime | None = None, shards: Mapping[str, str] | None = None):
        self._manifest = manifest
        self._signer = signer
        self._started_at = rfc3339(started_at or datetime.now(timezone.utc))
        self._evidence: dict[str, tuple[str, str]] = {}   # node -> (tee, evidence sha256 hex)
        self._shards: dict[str, str] = {}
        self._statements: dict[str, dict] = {}   # node -> its signed shard statement (b64 body, signature)
        self._owner_proofs: dict[str, dict] = {}   # node -> owner_proof_json(the enrolment it runs under)
        self._proof_sources: dict[str, Callable[[], bytes | None]] = {}   # node -> live enrolment source
        self._events: deque[ReattestationEvent] = deque(maxlen=MAX_EVENTS)
        self._dropped_events = 0
        self._lock = threading.Lock()
        # node -> RFC 3339 end of the policy's TCB grace for stages kept OutOfDate only under it (the
        # head agent's verified view, status_view.agent_facts); read when the report is signed
        self.grace_source: Callable[[], Mapping[str, str]] | None = None
        for node, digest in (shards or {}).items():
            self.set_shard(node, digest)

    def __repr__(self) -> str:
        return f"RunReportState(manifest={self._manifest.digest.hex()[:16]}, signer={self._signer!r})"

    @property
    def manifest(self) -> VerifiedManifest:
        return self._manifest

    @property
    def public_key(self) -> bytes:
        """The report key the head's evidence must bind (BundleBuilder report_key)."""
        return self._signer.public_key

    def _stage(self, node: str):
        stage = self._manifest.stage_for(node)
        if stage is None:
            raise ValueError(f"{node!r} is not a stage of the manifest")
        return stage

    def record_evidence(self, node: str, *, tee: str, evidence: bytes) -> str:
        """The evidence a stage currently runs with (admission or latest re-attestation)."""
        self._stage(node)
        digest = hashlib.sha256(bytes(evidence)).hexdigest()
        with self._lock:
            self._evidence[node] = (str(tee), digest)
        return digest

    def has_evidence(self, node: str) -> bool:
        with self._lock:
            return node in self._evidence

    def set_shard(self, node: str, shard_sha256: str) -> None:
        self._stage(node)
        if not _is_hex64(shard_sha256):
            raise ValueError("shard digest must be 64 lowercase hex characters")
        with self._lock:
            self._shards[node] = shard_sha256

    def set_shard_statement(self, node: str, body: bytes, signature: bytes) -> None:
        """The stage's own signed statement (verified by the agent against the statement key bound in
        that stage's evidence): the report carries it and takes the shard digest from it."""
        self._stage(node)
        value = json.loads(body)
        shard = value.get("shard") or {}
        if value.get("stage") != node or not shard.get("verified") or not _is_hex64(shard.get("digest") or ""):
            return
        with self._lock:
            self._shards[node] = shard["digest"]
            self._statements[node] = {"body": base64.b64encode(body).decode(),
                                      "signature": base64.b64encode(signature).decode()}

    def set_owner_proof(self, node: str, enrolment: bytes | None) -> None:
        """The owner enrolment stage `node` was (re)admitted with; None or empty forgets it.
        Raises ValueError for bytes that are no enrolment (the agent checked it before admitting)."""
        self._stage(node)
        proof = owner_proof_json(bytes(enrolment)) if enrolment else None
        with self._lock:
            if proof is None:
                self._owner_proofs.pop(node, None)
            else:
                self._owner_proofs[node] = proof

    def owner_proof_source(self, node: str, source: Callable[[], bytes | None]) -> None:
        """Read stage `node`'s enrolment from `source` each time a report is made (the head's own:
        `lambda: agent.enrolment`); it takes precedence over set_owner_proof for that node."""
        self._stage(node)
        with self._lock:
            self._proof_sources[node] = source

    def _current_owner_proofs(self) -> dict[str, dict]:
        with self._lock:
            proofs, sources = dict(self._owner_proofs), dict(self._proof_sources)
        for node, source in sources.items():
            try:
                enrolment = source()
                proofs[node] = owner_proof_json(bytes(enrolment)) if enrolment else None
            except ValueError as exc:   # checked by the agent when it took it: should not happen
                log.warning("run report: enrolment of %s unusable: %s", node, exc)
                proofs[node] = None
        return {n: p for n, p in proofs.items() if p is not None}

    def set_shards_from_model_manifest(self, model_manifest: Mapping) -> None:
        """Every stage's shard digest from the model manifest the stages verified their layers
        against; the model manifest must be the one the deployment manifest names."""
        check_manifest(dict(model_manifest))
        if model_manifest["digest"] != self._manifest.model_digest:
            raise ConclaveError("model_digest_mismatch",
                                "the model manifest is not the model the deployment manifest names",
                                exit_code=ExitCode.VERIFICATION_FAILED)
        stages = self._manifest.stages
        for i, s in enumerate(stages):
            self.set_shard(s.node, shard_digest(model_manifest, s.layer_start, s.layer_end,
                                                first=(i == 0), last=(i == len(stages) - 1)))

    def add_event(self, node: str, result: str, *, reason: str | None = None,
                  evidence_sha256: str | None = None, at: datetime | None = None) -> None:
        """Append a re-attestation event: result ok | failed | evicted."""
        self._stage(node)
        if result not in REATTEST_RESULTS:
            raise ValueError(f"result must be one of {', '.join(REATTEST_RESULTS)}")
        if evidence_sha256 is not None and not _is_hex64(evidence_sha256):
            raise ValueError("evidence digest must be 64 lowercase hex characters")
        event = ReattestationEvent(rfc3339(at or datetime.now(timezone.utc)), node, result,
                                   None if reason is None else str(reason), evidence_sha256)
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self._dropped_events += 1
                if self._dropped_events == 1:
                    log.warning("run report keeps only the newest %d re-attestation events", MAX_EVENTS)
            self._events.append(event)

    def events(self) -> list[ReattestationEvent]:
        with self._lock:
            return list(self._events)

    def missing(self) -> list[str]:
        """What keeps the report from being signed ("<node>: evidence" / "<node>: shard")."""
        with self._lock:
            out = []
            for s in self._manifest.stages:
                if s.node not in self._evidence:
                    out.append(f"{s.node}: evidence")
                if s.node not in self._shards:
                    out.append(f"{s.node}: shard")
            return out

    def _current_grace(self) -> dict[str, str]:
        """node -> grace end as RFC 3339 UTC seconds ("...Z"); a source that fails gives none."""
        if self.grace_source is None:
            return {}
        try:
            raw = dict(self.grace_source())
        except Exception:   # the agent's view is a courtesy here: never fail the report on it
            log.exception("run report: TCB grace source failed")
            return {}
        out = {}
        for node, text in raw.items():
            try:
                out[node] = rfc3339(datetime.fromisoformat(str(text).replace("Z", "+00:00")))
            except ValueError:
                continue
        return out

    def snapshot(self) -> RunReport:
        missing = self.missing()
        if missing:
            raise ReportIncomplete(missing)
        proofs = self._current_owner_proofs()
        grace = self._current_grace()
        with self._lock:
            records = tuple(StageRecord(s.node, s.owner, s.role, s.layer_start, s.layer_end,
                                        self._evidence[s.node][0], self._evidence[s.node][1],
                                        self._shards[s.node], self._statements.get(s.node),
                                        proofs.get(s.node), grace.get(s.node))
                            for s in self._manifest.stages)
            events = tuple(self._events)
        return RunReport(self._manifest.digest.hex(), self._manifest.engine_digest,
                         self._manifest.model_digest, self._started_at, records, events)

    def signed(self) -> bytes:
        """The signed report file (canonical JSON + newline); raises ReportIncomplete."""
        return self._signer.sign(self.snapshot())

    def sign_receipt(self, receipt: Mapping) -> bytes:
        """Sign a per-response receipt with the same attested key (serving/receipts.py)."""
        return self._signer.sign_receipt(receipt)
