"""Client-side verification of an attestation bundle (pure: the caller supplies time and TLS key).

Order (bundle-level checks stop at the first failure; then every node is checked and reported):
    endpoint.01.parse     structure                                      -> malformed
    endpoint.02.manifest  served manifest/model/stages == the client's     -> manifest_mismatch
    endpoint.03.nonce     bundle answers the client's nonce              -> nonce_mismatch
    endpoint.04.tls_key   the head's advertised TLS key == the one seen   -> tls_key_mismatch
    endpoint.05.stages    one entry per manifest stage, roles/owners agree -> manifest_mismatch / node_missing
  per node (parse -> verify -> validate -> check binding, as in peer admission):
    <node>.01.evidence    vendor/sim signatures and chains (attestation reasons)
    <node>.02.policy      the manifest's policy, every violation collected
    <node>.03.inputs      head: purpose, nonce == client's, TLS key == seen, report key == advertised;
                          workers: bound node_id/role (when bound) == the stage's; fresh entries:
                          nonce == client's; cached: age limit when the evidence dates itself
    <node>.04.binding     REPORT_DATA == H(manifest digest, keys, nonce, extra) -> report_data_mismatch
    <node>.05.gpuN        each GPU's evidence, for gpu_nonce_for(REPORT_DATA), then the policy
    <node>.06.gpus        the stage's GPU requirement (manifest stages[i].gpus), the same check as
                          admission's  -> gpu_missing / gpu_cc_off / gpu_model_not_allowed
    <node>.07.enrolment   the stage owner's enrolment (runtime/manifest/enrolment.py) over exactly
                          the keys the binding inputs name (WireGuard, HPKE, statement key), for
                          this manifest, stage and role, signed by the manifest's key of the
                          stage's owner, valid at `at` -> stage_unknown / role_mismatch /
                          owner_not_enrolled. Only then does the result name the owner as proven
                          (NodeResult.owner_proof, BundleResult "stage_owners").
Why 07: evidence proves the image, not whose machine runs a stage; an impostor on the approved
image has its own keys and no owner key, so it cannot present an enrolment over the keys its
evidence binds.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Sequence

from cryptography import x509

from conclave.runtime import attestation
from conclave.runtime.attestation import binding as att_binding
from conclave.runtime.attestation import collateral_merge, nvgpu_requirement
from conclave.runtime.attestation.policy import validate
from conclave.runtime.attestation.core import (AttestationError, MalformedEvidence, PolicyViolated,
                                               Reason, TeeType, VerifiedEvidence, claims_to_json)
from conclave.overlay.reasons import OverlayReason
from conclave.runtime.endpoint.binding import (EXTRA_REPORT_KEY, EXTRA_STATEMENT_KEY, EXTRA_TLS,
                                               PURPOSE_HEAD, PURPOSE_NODE)
from conclave.runtime.endpoint.bundle import (CPU_TEES, EvidenceBlob, NodeEntry, ParsedBundle,
                                              parse_bundle)
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.reasons import exit_code_for
from conclave.runtime.manifest import enrolment as enrolment_mod
from conclave.runtime.canonical import CanonicalError
from conclave.runtime.manifest.document import (ManifestError, ManifestReason, VerifiedManifest,
                                                content_digest)
from conclave.runtime.reasons import EndpointReason  # noqa: F401 (re-export; the one registry)


def require_pinned_owner(manifest: VerifiedManifest, *, unsafe_unpinned: bool = False) -> None:
    """Refuse a manifest whose owner key the client did not pin (reason `owner_not_pinned`).

    Why: an unpinned manifest may be signed by anyone, so a head that serves the attacker's own
    manifest (own policy, own measurements) would verify. Clients call this before connecting;
    `unsafe_unpinned` is the explicit, named way to skip it.
    """
    if not isinstance(manifest, VerifiedManifest):
        raise TypeError("manifest must be a VerifiedManifest (DeploymentManifest.load)")
    if not manifest.owner_pinned and not unsafe_unpinned:
        raise ManifestError(ManifestReason.OWNER_NOT_PINNED,
                            "the manifest's owner key is not pinned (pass the owner fingerprint "
                            "or public key)")


@dataclass
class NodeResult:
    name: str
    role: str
    owner: str
    tee: str
    freshness: str
    ok: bool = False
    reason: str | None = None
    message: str | None = None
    exit_code: int = int(ExitCode.VERIFICATION_FAILED)
    claims: dict = field(default_factory=dict)
    violations: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    simulated: bool | None = None
    notes: list = field(default_factory=list)
    revocation_checked: bool | None = None
    collateral_age_s: float | None = None
    owner_proof: dict | None = None   # enrolment.ProvenStage.to_json() + enrolment_sha256, once 07 passed

    def fail(self, step: str, reason: str, message: str, *, exit_code: int | None = None) -> "NodeResult":
        self.steps.append({"step": f"{self.name}.{step}", "ok": False})
        self.ok, self.reason, self.message = False, str(reason), message
        self.exit_code = int(exit_code if exit_code is not None
                             else exit_code_for(reason))
        return self

    def passed(self, step: str) -> None:
        self.steps.append({"step": f"{self.name}.{step}", "ok": True})

    def to_json(self) -> dict:
        return {"name": self.name, "role": self.role, "owner": self.owner, "tee": self.tee,
                "freshness": self.freshness, "ok": self.ok, "reason": self.reason,
                "error": self.message, "claims": self.claims, "violations": self.violations,
                "steps": self.steps, "simulated": self.simulated, "notes": self.notes,
                "revocation_checked": self.revocation_checked, "collateral_age_s": self.collateral_age_s,
                "owner_proof": self.owner_proof}


@dataclass
class BundleResult:
    ok: bool
    reason: str | None
    message: str | None
    exit_code: int
    steps: list
    nodes: list[NodeResult]
    manifest_digest: str
    head: dict | None = None

    @property
    def head_result(self) -> NodeResult | None:
        return next((n for n in self.nodes if n.role == "head"), None)

    def to_json(self) -> dict:
        head = self.head_result
        violations = [dict(v, node=n.name) for n in self.nodes for v in n.violations]
        owners = [{"stage": n.name, "role": n.role, "owner": n.owner, "proven": n.owner_proof is not None,
                   "owner_fingerprint": (n.owner_proof or {}).get("owner_fingerprint")} for n in self.nodes]
        return {"ok": self.ok, "reason": self.reason, "error": self.message, "stage_owners": owners,
                "tee": head.tee if head else None, "claims": head.claims if head else {},
                "violations": violations, "steps": self.steps,
                "nodes": [n.to_json() for n in self.nodes],
                "manifest_digest": self.manifest_digest, "head": self.head}


def _eq(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(bytes(a), bytes(b))


class _Fail(Exception):
    def __init__(self, step: str, reason: str, message: str):
        self.step, self.reason, self.message = step, reason, message


def _stage_layout(stages: Any) -> list:
    return [(s.get("node"), s.get("owner"), s.get("role"), tuple(s.get("layers") or ()))
            if isinstance(s, dict) else None for s in stages]


def _check_bundle_level(parsed: ParsedBundle, manifest: VerifiedManifest, tls_spki_sha256: bytes,
                        nonce: bytes, steps: list) -> None:
    content = parsed.manifest_file.get("manifest")
    try:
        served = content_digest(content) if isinstance(content, dict) else b""
    except CanonicalError:
        served = b""
    if not _eq(served, manifest.digest):
        raise _Fail("endpoint.02.manifest", EndpointReason.MANIFEST_MISMATCH,
                    "the endpoint serves a different deployment manifest")
    if parsed.model_digest != manifest.model_digest or \
            _stage_layout(parsed.stages) != _stage_layout([s.to_json() for s in manifest.stages]):
        raise _Fail("endpoint.02.manifest", EndpointReason.MANIFEST_MISMATCH,
                    "model digest or stage layout differs from the manifest")
    steps.append({"step": "endpoint.02.manifest", "ok": True})
    if not _eq(parsed.nonce, nonce):
        raise _Fail("endpoint.03.nonce", EndpointReason.NONCE_MISMATCH,
                    "the bundle does not answer this client's nonce")
    steps.append({"step": "endpoint.03.nonce", "ok": True})
    if not _eq(parsed.head.tls_spki_sha256, tls_spki_sha256):
        raise _Fail("endpoint.04.tls_key", EndpointReason.TLS_KEY_MISMATCH,
                    "the TLS key on this connection is not the head's attested TLS key")
    steps.append({"step": "endpoint.04.tls_key", "ok": True})
    by_name = {n.name: n for n in parsed.nodes}
    for s in manifest.stages:
        entry = by_name.get(s.node)
        if entry is None:
            raise _Fail("endpoint.05.stages", EndpointReason.NODE_MISSING,
                        f"no evidence for stage node {s.node}")
        if entry.role != s.role or entry.owner != s.owner:
            raise _Fail("endpoint.05.stages", EndpointReason.MANIFEST_MISMATCH,
                        f"node {s.node}: role/owner differ from the manifest")
    wg_keys = [n.inputs.wg_public_key for n in parsed.nodes]
    cpu_evidence = {n.evidence.cpu.data for n in parsed.nodes}
    if len(set(wg_keys)) != len(wg_keys) or len(cpu_evidence) != len(parsed.nodes):
        raise _Fail("endpoint.05.stages", EndpointReason.MANIFEST_MISMATCH,
                    "one node's evidence or WireGuard key is presented for several stages")
    extra = set(by_name) - {s.node for s in manifest.stages}
    if extra or parsed.head.name != manifest.head.node:
        raise _Fail("endpoint.05.stages", EndpointReason.MANIFEST_MISMATCH,
                    "bundle lists nodes outside the manifest or another head")
    steps.append({"step": "endpoint.05.stages", "ok": True})


def _load_collateral(tee: TeeType, blob: bytes | None) -> object | None:
    return attestation.load_collateral_bytes(tee, blob)


def _verify_blob(blob: EvidenceBlob, tee: TeeType, *, at: datetime, nonce: bytes | None,
                 roots: Sequence[x509.Certificate] | None, certs: Sequence[x509.Certificate],
                 collateral: object | None, collateral_for: Callable[[TeeType, bytes], object | None] | None = None,
                 rim_roots: Sequence[x509.Certificate] | None = None) -> VerifiedEvidence:
    """The client's own collateral first (given, else fetched by collateral_for); collateral carried
    in the bundle only where it verifies and is fresher, piece by piece (collateral_merge)."""
    try:
        extra_certs = [x509.load_der_x509_certificate(c) for c in blob.certs]
    except ValueError:
        raise MalformedEvidence("a certificate shipped with the evidence is not DER") from None
    if collateral is None and collateral_for is not None and tee in (TeeType.TDX, TeeType.SNP, TeeType.NVGPU):
        collateral = collateral_for(tee, blob.data)
    carried = _load_collateral(tee, blob.collateral) if blob.collateral else None
    collateral = collateral_merge.merge(tee, collateral, carried, at=at, trusted_roots=roots)
    return attestation.verify_evidence(blob.data, tee=tee, at=at, certs=[*certs, *extra_certs],
                                       collateral=collateral, nonce=nonce, trusted_roots=roots,
                                       rim_roots=rim_roots if tee == TeeType.NVGPU else None)


def _record_steps(r: NodeResult, prefix: str, steps) -> None:
    r.steps.extend({"step": f"{r.name}.{prefix}{s.step}", "ok": s.ok} for s in steps)


def _check_inputs(r: NodeResult, entry: NodeEntry, parsed: ParsedBundle, *, tls_spki_sha256: bytes,
                  nonce: bytes, at: datetime, issued: Any,
                  max_cached_age: timedelta | None) -> tuple[str, str] | None:
    """(reason, message) when the presented binding inputs are not the ones this client expects."""
    inputs = entry.inputs
    if entry.role == "head":
        if inputs.purpose != PURPOSE_HEAD or entry.freshness != "fresh":
            return EndpointReason.NONCE_MISMATCH, "head evidence is not fresh head evidence for this client"
        if not _eq(inputs.nonce, nonce):
            return EndpointReason.NONCE_MISMATCH, "head evidence is for another nonce"
        if set(inputs.extra) - {EXTRA_STATEMENT_KEY} != {EXTRA_TLS, EXTRA_REPORT_KEY}:
            return EndpointReason.REPORT_DATA_MISMATCH, \
                "head binding must cover exactly the TLS and report keys (and its statement key)"
        if not _eq(inputs.extra[EXTRA_TLS], tls_spki_sha256):
            return EndpointReason.TLS_KEY_MISMATCH, "head evidence binds another TLS key than the one on this connection"
        if not _eq(inputs.extra[EXTRA_REPORT_KEY], parsed.head.report_pubkey):
            return EndpointReason.REPORT_DATA_MISMATCH, "head evidence binds another report key than the advertised one"
        return None
    if inputs.purpose != PURPOSE_NODE:
        return EndpointReason.REPORT_DATA_MISMATCH, "worker evidence must use the node binding"
    for key, expected in (("node_id", entry.name), ("role", entry.role)):
        if key in inputs.extra and inputs.extra[key] != expected.encode():
            return EndpointReason.MANIFEST_MISMATCH, f"evidence is bound to another {key} than {expected!r}"
    if entry.freshness == "fresh" and not _eq(inputs.nonce, nonce):
        return EndpointReason.NONCE_MISMATCH, "evidence marked fresh is for another nonce"
    if entry.freshness == "cached" and max_cached_age is not None:
        if not isinstance(issued, datetime):
            r.notes.append("cached evidence carries no issue time; age not checked")
        elif at - issued > max_cached_age:
            return EndpointReason.EVIDENCE_EXPIRED, f"cached evidence is older than {max_cached_age}"
    return None


def _check_node(entry: NodeEntry, parsed: ParsedBundle, *, manifest: VerifiedManifest, policy,
                tls_spki_sha256: bytes, nonce: bytes, at: datetime,
                trusted_roots: Sequence[x509.Certificate] | None,
                vendor_roots: Sequence[x509.Certificate] | None, certs: Sequence[x509.Certificate],
                collateral: object | None, max_cached_age: timedelta | None,
                collateral_for: Callable[[TeeType, bytes], object | None] | None = None) -> NodeResult:
    r = NodeResult(entry.name, entry.role, entry.owner, entry.tee, entry.freshness)
    try:
        tee = TeeType(entry.tee)
    except ValueError:
        tee = None
    if tee not in CPU_TEES:
        return r.fail("01.evidence", EndpointReason.MALFORMED, f"{entry.tee!r} is not a CPU TEE type")
    # 01: parse + verify the CPU evidence (signatures, chains, validity at `at`)
    try:
        verified = _verify_blob(entry.evidence.cpu, tee, at=at, nonce=None, certs=certs,
                                roots=(trusted_roots if tee == TeeType.SIM else vendor_roots
                                       if vendor_roots is not None else policy.test_roots.get(tee)),
                                collateral=collateral, collateral_for=collateral_for)
    except AttestationError as exc:
        _record_steps(r, "", exc.steps)
        return r.fail("01.evidence", exc.reason, exc.message, exit_code=int(exc.exit_code))
    _record_steps(r, "", verified.steps)
    r.claims = claims_to_json(verified.claims)
    r.simulated = verified.simulated
    r.notes = list(verified.notes)
    r.revocation_checked = verified.revocation_checked
    r.collateral_age_s = verified.collateral_age_s
    r.passed("01.evidence")
    # 02: the manifest's policy (collects every violation)
    try:
        validate(verified, policy)
    except PolicyViolated as exc:
        r.violations = [v.to_json() for v in exc.violations]
        return r.fail("02.policy", exc.reason, exc.message, exit_code=int(ExitCode.POLICY_VIOLATED))
    r.passed("02.policy")
    # 03: the binding inputs the entry presents are the ones this client expects
    bad = _check_inputs(r, entry, parsed, tls_spki_sha256=tls_spki_sha256, nonce=nonce, at=at,
                        issued=verified.claims.get("issued_at"), max_cached_age=max_cached_age)
    if bad is not None:
        return r.fail("03.inputs", *bad)
    r.passed("03.inputs")
    # 04: REPORT_DATA commits to exactly those inputs and the client's manifest
    inputs = entry.inputs
    try:
        expected = att_binding.report_data_for(
            purpose=inputs.purpose, manifest_digest=manifest.digest, wg_public_key=inputs.wg_public_key,
            hpke_public_key=inputs.hpke_public_key, nonce=inputs.nonce, extra=inputs.extra)
        att_binding.check_binding(verified, expected)
    except (ValueError, AttestationError) as exc:
        return r.fail("04.binding", EndpointReason.REPORT_DATA_MISMATCH,
                      getattr(exc, "message", "binding inputs unusable"))
    r.passed("04.binding")
    # 05: each GPU: verified for the nonce derived from this REPORT_DATA, then the policy
    gpu_nonce = att_binding.gpu_nonce_for(expected)
    gpus: list[VerifiedEvidence] = []
    for i, blob in enumerate(entry.evidence.gpus):
        step = f"05.gpu{i}"
        try:
            # NVIDIA's pinned device and RIM roots, or the policy's unsafe_test_roots (emulated GPUs)
            gpu = _verify_blob(blob, TeeType.NVGPU, at=at, nonce=gpu_nonce, certs=certs,
                               roots=vendor_roots if vendor_roots is not None else policy.test_roots.get(TeeType.NVGPU),
                               collateral=None, collateral_for=collateral_for, rim_roots=policy.test_rim_roots)
            _record_steps(r, f"gpu{i}.", gpu.steps)
            att_binding.check_binding(gpu, gpu_nonce)
            validate(gpu, policy)
        except PolicyViolated as exc:
            r.violations = [dict(v.to_json(), gpu=i) for v in exc.violations]
            return r.fail(step, exc.reason, exc.message, exit_code=int(ExitCode.POLICY_VIOLATED))
        except AttestationError as exc:
            _record_steps(r, f"gpu{i}.", exc.steps)
            return r.fail(step, exc.reason, f"GPU {i}: {exc.message}", exit_code=int(exc.exit_code))
        gpus.append(gpu)
        r.passed(step)
    # 06: the GPUs this node's stage requires (as admission checks them)
    stage = manifest.stage_for(entry.name)
    unmet = nvgpu_requirement.check_gpus(stage.gpus if stage is not None else None, gpus)
    if unmet:
        r.violations = [v.to_json() for v in unmet]
        return r.fail("06.gpus", unmet[0].reason, "; ".join(v.message for v in unmet),
                      exit_code=int(ExitCode.POLICY_VIOLATED))
    r.passed("06.gpus")
    # 07: the stage's owner enrolled exactly the keys this evidence binds
    try:
        r.owner_proof = check_owner_enrolment(entry, manifest=manifest, at=at)
    except enrolment_mod.EnrolmentRejected as exc:
        return r.fail("07.enrolment", exc.reason, exc.message)
    r.passed("07.enrolment")
    r.ok, r.reason, r.message, r.exit_code = True, None, None, 0
    return r


def check_owner_enrolment(entry: NodeEntry, *, manifest: VerifiedManifest, at: datetime) -> dict:
    """The owner proof of a bundle entry whose binding already checked (steps 01-04): the entry's
    enrolment over the WireGuard, HPKE and statement keys its binding inputs name. Returns
    ProvenStage.to_json() with the enrolment's SHA-256; raises enrolment.EnrolmentRejected
    (stage_unknown, role_mismatch, owner_not_enrolled). A binding that names no statement key
    cannot be matched against the enrolment and is refused (owner_not_enrolled)."""
    enrolment_mod.check_stage_claim(manifest, node_id=entry.name, role=entry.role)
    statement_key = entry.inputs.extra.get(EXTRA_STATEMENT_KEY)
    if not entry.enrolment:
        raise enrolment_mod.EnrolmentRejected(EndpointReason.OWNER_NOT_ENROLLED,
                                              f"no enrolment by the owner of stage {entry.name!r}")
    if not statement_key:
        raise enrolment_mod.EnrolmentRejected(EndpointReason.OWNER_NOT_ENROLLED,
                                              "the evidence binds no statement key, so the enrolment "
                                              "cannot be matched against bound keys")
    node_keys = enrolment_mod.NodeKeys(entry.inputs.wg_public_key, entry.inputs.hpke_public_key,
                                       bytes(statement_key))
    proven = enrolment_mod.check_enrolment(entry.enrolment, manifest=manifest, node_id=entry.name,
                                           role=entry.role, node_keys=node_keys, at=at)
    return {**proven.to_json(), "enrolment_sha256": hashlib.sha256(entry.enrolment).hexdigest()}


def verify_bundle(bundle: bytes | Mapping[str, Any] | ParsedBundle, *, manifest: VerifiedManifest,
                  tls_spki_sha256: bytes, nonce: bytes, at: datetime,
                  trusted_roots: Sequence[x509.Certificate] | None = None,
                  vendor_roots: Sequence[x509.Certificate] | None = None,
                  certs: Sequence[x509.Certificate] = (),
                  collateral: Mapping[str, object] | None = None,
                  max_cached_age: timedelta | None = None,
                  collateral_for: Callable[[TeeType, bytes], object | None] | None = None) -> BundleResult:
    """Verify a bundle for this client's nonce and the TLS key observed on its connection.

    Never raises for a bad bundle: the result says ok/reason (and per-node results).
    trusted_roots: the simulated TEE root(s), used for sim evidence only (sim has no default root).
    vendor_roots: None = the embedded, fingerprint-pinned vendor roots (tests pass test CAs here).
    collateral: per node name, the format's collateral object (TDX/SNP), when the client has it.
    collateral_for: the client's own collateral source for the rest (e.g. CollateralCache.collateral_for).
    TDX/SNP evidence chains to the pinned vendor roots, or to the policy's unsafe_test_roots where the
    owner-signed manifest names them (emulated hardware; production policies cannot).
    """
    if not isinstance(manifest, VerifiedManifest):
        raise TypeError("manifest must be a VerifiedManifest (DeploymentManifest.load)")
    if at.tzinfo is None:
        raise ValueError("`at` must be timezone-aware")
    steps: list = []
    digest = manifest.digest.hex()

    def failed(step: str, reason: str, message: str, nodes=(), exit_code=None) -> BundleResult:
        steps.append({"step": step, "ok": False})
        code = exit_code if exit_code is not None else exit_code_for(reason)
        return BundleResult(False, reason, message, int(code), steps, list(nodes), digest)

    try:
        parsed = bundle if isinstance(bundle, ParsedBundle) else parse_bundle(bundle)
    except ConclaveError as exc:
        return failed("endpoint.01.parse", exc.reason, exc.message)
    steps.append({"step": "endpoint.01.parse", "ok": True})
    try:
        policy = manifest.policy
    except ConclaveError as exc:
        return failed("endpoint.02.manifest", exc.reason, f"manifest policy unusable: {exc.message}",
                      exit_code=int(exc.exit_code))
    try:
        _check_bundle_level(parsed, manifest, bytes(tls_spki_sha256), bytes(nonce), steps)
    except _Fail as f:
        return failed(f.step, f.reason, f.message)
    by_name = {n.name: n for n in parsed.nodes}
    ordered = sorted(manifest.stages, key=lambda s: s.role != "head")  # head first, then pipeline order
    results = [_check_node(by_name[s.node], parsed, manifest=manifest, policy=policy,
                           tls_spki_sha256=bytes(tls_spki_sha256), nonce=bytes(nonce), at=at,
                           trusted_roots=trusted_roots, vendor_roots=vendor_roots, certs=certs,
                           collateral=(collateral or {}).get(s.node), max_cached_age=max_cached_age,
                           collateral_for=collateral_for)
               for s in ordered]
    first_bad = next((r for r in results if not r.ok), None)
    head = parsed.head.to_json()
    if first_bad is not None:
        steps.append({"step": "endpoint.06.nodes", "ok": False})
        return BundleResult(False, first_bad.reason, f"node {first_bad.name}: {first_bad.message}",
                            first_bad.exit_code, steps, results, digest, head)
    steps.append({"step": "endpoint.06.nodes", "ok": True})
    return BundleResult(True, None, None, 0, steps, results, digest, head)
