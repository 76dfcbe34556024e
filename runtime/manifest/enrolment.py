"""Stage enrolment: a node owner's signed statement that this boot of a node runs its stage.

Why: a node's name, role and owner are claims from its own command line; evidence proves the
image, not whose machine it is or which stage it was meant to take. The manifest lists each
stage's owner and that owner's Ed25519 key; the owner (its tool, `conclave owner enroll`, after
attesting its own node) signs the node's per-boot public keys for exactly one stage of exactly
one manifest. An impostor running the same image has other keys and no owner key, so it cannot
present an enrolment for the stage it claims, and a verifier that finds the enrolment over the
very keys the evidence binds knows "stage K ran on owner X's node".

Wire form (canonical JSON bytes, carried in AttestReply.enrolment):
    {"enrolment": {...content...}, "signature": b64(Ed25519 over CONTEXT || canonical(content))}
Content: version 1, manifest_digest (hex), stage, role, owner (the manifest's owner name),
wg_public_key / hpke_public_key / statement_key (b64 of the raw public keys), issued, expires
(RFC 3339 UTC). Unknown or missing fields are refused.

Reasons (overlay.reasons.OverlayReason): stage_unknown (no such stage), role_mismatch (the
claimed role is not the stage's), owner_not_enrolled (no enrolment, or one that is malformed,
signed by another key, for other keys or another manifest, or outside its validity).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.canonical import CanonicalError, canonical_json, strict_loads
from conclave.runtime.manifest.document import VerifiedManifest, _parse_time, rfc3339
from conclave.runtime.reasons import OverlayReason

ENROLMENT_VERSION = 1
SIGNING_CONTEXT = b"conclave/stage-enrolment/v1\x00"
MAX_ENROLMENT_LEN = 8192
MAX_VALIDITY = timedelta(days=31)
DEFAULT_VALIDITY = timedelta(hours=24)
CLOCK_SKEW = timedelta(minutes=5)
_FIELDS = {"version", "manifest_digest", "stage", "role", "owner", "wg_public_key", "hpke_public_key",
           "statement_key", "issued", "expires"}


class EnrolmentRejected(ConclaveError):
    """A node's claim to a stage that does not hold. `reason`: stage_unknown, role_mismatch or
    owner_not_enrolled."""

    exit_code = ExitCode.VERIFICATION_FAILED


def _not_enrolled(message: str) -> EnrolmentRejected:
    return EnrolmentRejected(str(OverlayReason.OWNER_NOT_ENROLLED), message)


@dataclass(frozen=True)
class NodeKeys:
    """The per-boot public keys an enrolment covers (what the node's evidence binds)."""

    wg_public_key: bytes       # 32 bytes
    hpke_public_key: bytes     # the raw HPKE public key
    statement_key: bytes       # 32-byte Ed25519 key of the node's stage statements


@dataclass(frozen=True)
class ProvenStage:
    """A stage claim that checked: the stage, its role, and the owner whose key signed it."""

    stage: str
    role: str
    owner: str
    owner_fingerprint: str
    issued: datetime
    expires: datetime

    def to_json(self) -> dict:
        return {"stage": self.stage, "role": self.role, "owner": self.owner,
                "owner_fingerprint": self.owner_fingerprint, "issued": rfc3339(self.issued),
                "expires": rfc3339(self.expires), "proven": True}


def sign_enrolment(owner_key: ed25519.Ed25519PrivateKey, *, manifest: VerifiedManifest, stage: str,
                   node_keys: NodeKeys, issued: datetime | None = None,
                   validity: timedelta = DEFAULT_VALIDITY) -> bytes:
    """The owner's enrolment of `node_keys` for `stage` of `manifest` (wire bytes).

    Refuses (EnrolmentRejected) a stage the manifest lacks, or an owner key that is not the
    stage's owner: the owner's tool must never hand out an enrolment that verifiers will refuse.
    """
    spec = manifest.stage_for(stage)
    if spec is None:
        raise EnrolmentRejected(str(OverlayReason.STAGE_UNKNOWN), f"{stage!r} is not a stage of the manifest")
    if not keys.same_key(keys.public_key_bytes(owner_key), manifest.owners[spec.owner]):
        raise _not_enrolled(f"this key is not the key of {spec.owner!r}, the owner of stage {stage!r}")
    if not timedelta(0) < validity <= MAX_VALIDITY:
        raise ValueError(f"validity must be positive and at most {MAX_VALIDITY}")
    issued = (issued or datetime.now(timezone.utc)).replace(microsecond=0)
    content = {
        "version": ENROLMENT_VERSION, "manifest_digest": manifest.digest.hex(), "stage": stage,
        "role": spec.role, "owner": spec.owner,
        "wg_public_key": keys.b64(node_keys.wg_public_key),
        "hpke_public_key": keys.b64(node_keys.hpke_public_key),
        "statement_key": keys.b64(node_keys.statement_key),
        "issued": rfc3339(issued), "expires": rfc3339(issued + validity)}
    signature = owner_key.sign(SIGNING_CONTEXT + canonical_json(content))
    return canonical_json({"enrolment": content, "signature": keys.b64(signature)})


def _parse(data: bytes) -> tuple[dict, bytes]:
    if not data:
        raise _not_enrolled("no enrolment presented")
    if len(data) > MAX_ENROLMENT_LEN:
        raise _not_enrolled("enrolment too large")
    try:
        doc = strict_loads(bytes(data))
    except CanonicalError:
        raise _not_enrolled("enrolment is not canonical JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"enrolment", "signature"} \
            or not isinstance(doc["enrolment"], dict) or set(doc["enrolment"]) != _FIELDS:
        raise _not_enrolled("enrolment has the wrong fields")
    try:
        signature = keys.unb64(doc["signature"], "signature", length=64)
    except ValueError:
        raise _not_enrolled("enrolment signature is not 64 bytes of base64") from None
    return doc["enrolment"], signature


def _time(value: Any, what: str) -> datetime:
    try:
        return _parse_time(value)
    except ConclaveError:
        raise _not_enrolled(f"enrolment {what} is not RFC 3339 UTC") from None


def check_stage_claim(manifest: VerifiedManifest, *, node_id: str, role: str) -> None:
    """The cheap half: the claimed node id is a stage and the claimed role is that stage's."""
    spec = manifest.stage_for(node_id)
    if spec is None:
        raise EnrolmentRejected(str(OverlayReason.STAGE_UNKNOWN), f"{node_id!r} is not a stage of the manifest")
    if spec.role != str(role):
        raise EnrolmentRejected(str(OverlayReason.ROLE_MISMATCH),
                                f"{node_id!r} claims role {role}, the manifest's stage is {spec.role}")


def check_enrolment(data: bytes, *, manifest: VerifiedManifest, node_id: str, role: str,
                    node_keys: NodeKeys, at: datetime) -> ProvenStage:
    """Prove the claim `node_id` (as `role`, with `node_keys`) to a stage of `manifest`, or raise
    EnrolmentRejected. Signature first (under the stage owner's manifest key), then every field."""
    check_stage_claim(manifest, node_id=node_id, role=role)
    spec = manifest.stage_for(node_id)
    owner_public = manifest.owners[spec.owner]
    content, signature = _parse(data)
    try:
        keys.load_public_key_raw(owner_public).verify(signature, SIGNING_CONTEXT + canonical_json(content))
    except (InvalidSignature, ValueError, CanonicalError):
        raise _not_enrolled(f"enrolment is not signed by {spec.owner!r}, the owner of stage {node_id!r}") from None
    expected = {"version": ENROLMENT_VERSION, "manifest_digest": manifest.digest.hex(), "stage": node_id,
                "role": spec.role, "owner": spec.owner,
                "wg_public_key": keys.b64(node_keys.wg_public_key),
                "hpke_public_key": keys.b64(node_keys.hpke_public_key),
                "statement_key": keys.b64(node_keys.statement_key)}
    for name, want in expected.items():
        if content[name] != want:
            raise _not_enrolled(f"enrolment {name} differs from this node's ({name} is not this boot's)")
    issued, expires = _time(content["issued"], "issued"), _time(content["expires"], "expires")
    if not issued < expires or expires - issued > MAX_VALIDITY:
        raise _not_enrolled("enrolment validity is empty or longer than allowed")
    if at + CLOCK_SKEW < issued:
        raise _not_enrolled("enrolment is issued in the future")
    if at >= expires:
        raise _not_enrolled("enrolment has expired")
    return ProvenStage(node_id, spec.role, spec.owner, keys.fingerprint(owner_public), issued, expires)
