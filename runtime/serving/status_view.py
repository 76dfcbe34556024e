"""The public cluster summary behind the head's /status page (GET /v1/status.json, no API key).

Why a summary of its own: /v1/attestation is for verifiers (evidence bytes, binding inputs) and
/metrics needs the API key; the status page needs a small, keyless picture of the same public
facts: per stage its node, owner, role, TEE, GPUs and layer range (all in the signed manifest and
the attestation bundle), the age and digest of the evidence it runs with, its TCB status, its last
admission / re-attestation / eviction events (the run report's events), its lifecycle state when
the head knows it, and aggregate serving figures (serving_stats.py). Nothing here is secret or
per request: no API key, tokens, prompts, keys beyond what the bundle publishes, or addresses.

StatusBoard    what the front's admission hooks learned about each stage (thread-safe).
agent_facts    the head agent's view: TCB status of each admitted peer's verified evidence (and the
               end of the policy's TCB grace when an OutOfDate TCB is kept only under it) and
               each node's lifecycle state (its own, and each meshed worker's signed statement).
build_status   the JSON document.
"""
from __future__ import annotations

import threading
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from conclave.runtime.manifest.document import VerifiedManifest, rfc3339
from conclave.runtime.node.lifecycle import LifecycleReason, NodeState

STATUS_VERSION = 1
EVENTS_PER_NODE = 5
EVENT_KINDS = ("admitted", "reattested", "failed", "evicted")
_STATES = frozenset(str(s) for s in NodeState)
_REASONS = frozenset(str(r) for r in LifecycleReason)

NodeFacts = Callable[[], Mapping[str, Mapping[str, Any]]]


class StatusBoard:
    """Per stage: TEE, attested GPU count, evidence digest and time, and the newest events."""

    def __init__(self, manifest: VerifiedManifest, *, clock=lambda: datetime.now(timezone.utc)):
        self._manifest = manifest
        self._clock = clock
        self._lock = threading.Lock()
        self._evidence: dict[str, dict] = {}
        self._events: dict[str, deque] = {s.node: deque(maxlen=EVENTS_PER_NODE) for s in manifest.stages}

    def note_evidence(self, node: str, *, tee: str, gpus: int, evidence_sha256: str,
                      event: str | None, at: datetime | None = None) -> None:
        """The evidence `node` now runs with; `event` (admitted | reattested) goes into its log."""
        when = at or self._clock()
        with self._lock:
            if node not in self._events:
                return
            self._evidence[node] = {"tee": str(tee), "gpus": int(gpus), "sha256": evidence_sha256, "at": when}
            if event is not None:
                self._events[node].append({"at": rfc3339(when), "event": event, "reason": None})

    def note_event(self, node: str, event: str, reason: str | None = None) -> None:
        """failed (a re-attestation round failed) or evicted (its admission was dropped)."""
        if event not in EVENT_KINDS:
            raise ValueError(f"event must be one of {', '.join(EVENT_KINDS)}")
        with self._lock:
            if node not in self._events:
                return
            if event == "evicted":
                self._evidence.pop(node, None)
            self._events[node].append({"at": rfc3339(self._clock()), "event": event,
                                       "reason": None if reason is None else str(reason)})

    def snapshot(self) -> tuple[dict[str, dict], dict[str, list[dict]]]:
        with self._lock:
            return ({n: dict(v) for n, v in self._evidence.items()},
                    {n: list(v) for n, v in self._events.items()})


def agent_facts(agent) -> dict[str, dict]:
    """node -> {"tcb_status", "lifecycle": {"state", "reasons"}} from the head's NodeAgent:
    its own lifecycle (stage_extra), each meshed worker's verified stage statement, and the TCB
    status the head's verifier found in each admitted peer's evidence. Unknown values are None."""
    out: dict[str, dict] = {}
    own = dict(agent.stage_extra or {})
    if own.get("state"):
        out[agent.cfg.node_name] = {"lifecycle": _lifecycle(own)}
    for name, statement in agent.peer_statements().items():
        out.setdefault(name, {})["lifecycle"] = _lifecycle(statement)
    try:
        records = list(agent.peers.values())
    except RuntimeError:            # the agent changed its peer table mid-copy: next poll
        records = []
    for rec in records:
        admitted = getattr(rec, "admitted", None)
        if admitted is None:
            continue
        summary = admitted.claims_summary or {}
        tcb = summary.get("tcb_status")
        out.setdefault(rec.node_id, {})["tcb_status"] = None if tcb is None else str(tcb)
        grace = summary.get("tcb_grace_until")   # an OutOfDate TCB kept only under the policy's grace
        if grace:
            out[rec.node_id]["tcb_grace_until"] = str(grace)
    return out


def _lifecycle(view: Mapping) -> dict:
    state = str(view.get("state"))
    reasons = []
    for r in view.get("reasons") or ():
        code = r.get("reason") if isinstance(r, Mapping) else r
        if str(code) in _REASONS:
            reasons.append(str(code))
    return {"state": state if state in _STATES else "unknown", "reasons": reasons}


def build_status(*, manifest: VerifiedManifest, head: str, board: StatusBoard, admitted: frozenset[str],
                 missing: list[str], figures: Mapping, facts: Mapping[str, Mapping] | None = None,
                 now: datetime | None = None) -> dict:
    """The /v1/status.json document (see the module docstring)."""
    now = now or datetime.now(timezone.utc)
    evidence, events = board.snapshot()
    facts = facts or {}
    stages = []
    for index, s in enumerate(manifest.stages):
        ev = evidence.get(s.node)
        is_head = s.node == head
        present = is_head or s.node in admitted
        fact = facts.get(s.node) or {}
        stages.append({
            "index": index, "node": s.node, "owner": s.owner, "role": s.role,
            "layers": [s.layer_start, s.layer_end],
            "tee": ev["tee"] if ev and present else None,
            "gpus": {"required": s.gpus.count if s.gpus is not None else 0,
                     "attested": ev["gpus"] if ev and present else 0},
            "admitted": bool(present and ev),
            "freshness": "fresh" if is_head else "cached",
            "evidence_sha256": ev["sha256"] if ev and present else None,
            "evidence_at": rfc3339(ev["at"]) if ev and present else None,
            "evidence_age_s": round((now - ev["at"]).total_seconds(), 1) if ev and present else None,
            "tcb_status": fact.get("tcb_status"),
            "tcb_grace_until": fact.get("tcb_grace_until"),   # RFC 3339: on the policy's TCB grace until then
            "lifecycle": fact.get("lifecycle"),
            "events": events.get(s.node, []),
        })
    head_state = (facts.get(head) or {}).get("lifecycle") or {}
    serving = not missing and head_state.get("state", "serving") == "serving"
    return {"version": STATUS_VERSION, "at": rfc3339(now), "manifest_digest": manifest.digest.hex(),
            "model_digest": manifest.model_digest, "engine_digest": manifest.engine_digest,
            "serving": {"state": "serving" if serving else "not_serving", "missing": list(missing)},
            "figures": dict(figures), "stages": stages}
