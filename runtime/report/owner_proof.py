"""A stage's owner proof in the run report: the owner enrolment the stage runs under.

Why: the run report names, per stage, the owner that serves its layers. That name is only worth
something when the stage's owner signed this boot's keys for this stage (runtime/manifest/
enrolment.py). The head records the enrolment each stage was admitted with (its own too), and
the report carries it whole (it is public: signed public keys), with its SHA-256 and validity:

    "owner_proof": {"enrolment": b64(enrolment wire bytes), "enrolment_sha256": hex,
                    "issued": RFC 3339, "expires": RFC 3339}

What a report reader can check with the manifest alone (owner_proof_problems): the enrolment is
signed by the manifest's key of the stage's owner, for this manifest, stage and role, valid when
the report was issued; the digest and times agree with it; and the stage's shard statement, when
the report carries one, is signed by the statement key the owner enrolled. That the enrolled
WireGuard/HPKE keys are the ones the stage's evidence binds is what `conclave verify` checks
(step <node>.07.enrolment); its owner_proof.enrolment_sha256 names the same enrolment.
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Iterable

from conclave.overlay.reasons import OverlayReason
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.manifest import enrolment as enrolment_mod
from conclave.runtime.canonical import CanonicalError, strict_loads
from conclave.runtime.manifest.document import VerifiedManifest, _parse_time, rfc3339

FIELDS = frozenset({"enrolment", "enrolment_sha256", "issued", "expires"})


def _content(data: bytes) -> dict:
    """The enrolment's signed content (structure only; ValueError when it has none)."""
    try:
        doc = strict_loads(bytes(data))
    except CanonicalError:
        raise ValueError("enrolment is not canonical JSON") from None
    content = doc.get("enrolment") if isinstance(doc, dict) else None
    if not isinstance(content, dict):
        raise ValueError("enrolment has no content")
    return content


def owner_proof_json(enrolment: bytes) -> dict:
    """The report's owner_proof object for an enrolment (ValueError when it is not one)."""
    if not enrolment or len(enrolment) > enrolment_mod.MAX_ENROLMENT_LEN:
        raise ValueError("enrolment is empty or too large")
    content = _content(enrolment)
    issued, expires = content.get("issued"), content.get("expires")
    if not isinstance(issued, str) or not isinstance(expires, str):
        raise ValueError("enrolment has no validity")
    return {"enrolment": keys.b64(bytes(enrolment)), "enrolment_sha256": hashlib.sha256(enrolment).hexdigest(),
            "issued": issued, "expires": expires}


def _statement_signed_by(statement: dict, statement_key: bytes) -> bool:
    from conclave.overlay import stage_statement
    try:
        stage_statement.verify(statement_key, keys.unb64(statement["body"], "body"),
                               keys.unb64(statement["signature"], "signature", length=64))
    except (stage_statement.StatementInvalid, ValueError):
        return False
    return True


def check_owner_proof(proof: Any, *, manifest: VerifiedManifest, node: str, role: str, at: datetime,
                      shard_statement: dict | None = None) -> enrolment_mod.ProvenStage:
    """One stage's owner proof against the manifest (see the module docstring); raises
    enrolment.EnrolmentRejected (stage_unknown, role_mismatch, owner_not_enrolled)."""
    def refuse(message: str) -> enrolment_mod.EnrolmentRejected:
        return enrolment_mod.EnrolmentRejected(str(OverlayReason.OWNER_NOT_ENROLLED), f"stage {node}: {message}")
    enrolment_mod.check_stage_claim(manifest, node_id=node, role=role)
    if not isinstance(proof, dict) or set(proof) != FIELDS:
        raise refuse("the report carries no owner proof")
    try:
        data = keys.unb64(proof["enrolment"], "enrolment")
        content = _content(data)
        node_keys = enrolment_mod.NodeKeys(*(keys.unb64(content.get(k), k) for k in (
            "wg_public_key", "hpke_public_key", "statement_key")))
    except (ValueError, TypeError):
        raise refuse("the owner proof holds no readable enrolment") from None
    if proof["enrolment_sha256"] != hashlib.sha256(data).hexdigest():
        raise refuse("the owner proof's digest is not its enrolment's")
    proven = enrolment_mod.check_enrolment(data, manifest=manifest, node_id=node, role=role,
                                           node_keys=node_keys, at=at)
    if (proof["issued"], proof["expires"]) != (rfc3339(proven.issued), rfc3339(proven.expires)):
        raise refuse("the owner proof's validity is not its enrolment's")
    if shard_statement is not None and not _statement_signed_by(shard_statement, node_keys.statement_key):
        raise refuse("the shard statement is not signed by the statement key its owner enrolled")
    return proven


def owner_proof_problems(stages: Iterable[Any], *, manifest: VerifiedManifest, issued_at: str) -> list[str]:
    """'<node>: <why>' for each report stage whose owner proof does not hold at the report's issue
    time (empty: every stage's owner is proven)."""
    at = _parse_time(issued_at)
    problems = []
    for s in stages:
        try:
            check_owner_proof(s.owner_proof, manifest=manifest, node=s.node, role=s.role, at=at,
                              shard_statement=s.shard_statement)
        except enrolment_mod.EnrolmentRejected as exc:
            problems.append(f"{s.node}: [{exc.reason}] {exc.message}")
    return problems
