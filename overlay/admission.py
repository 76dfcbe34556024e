"""Admission: decide whether to admit a peer (the prover side is overlay/prover.py).

Verifier side, in order, failing closed at the first problem:
 1. structure of the reply (sizes, fields)            -> malformed_message
 2. the attested identity is the one we challenged    -> identity_mismatch
 3. the echoed nonce is ours, fresh, unused, for them -> nonce_replayed / nonce_expired / nonce_unknown
 4. overlay address inside the deployment's CIDR      -> overlay_address_out_of_range
 4b. the claim to a stage (when the verifier has the manifest): the node id is a stage, the role
    is that stage's, and the reply carries that stage owner's enrolment of exactly the announced
    keys for this manifest (runtime/manifest/enrolment.py)
                                                      -> stage_unknown / role_mismatch / owner_not_enrolled
 5. TEE type allowed, simulated only if allowed       -> tee_not_allowed / simulated_not_allowed
 6. parse + verify the evidence (vendor or sim roots) -> the attestation Reason (chain, signature, ...)
 7. binding: REPORT_DATA commits to manifest, both public keys, nonce, role, name, address
                                                      -> report_data_mismatch
 8. policy validation (every violation collected)     -> the first violation's Reason
GPU evidence items are verified with the nonce derived from the same REPORT_DATA (so GPU
evidence of another node, or for another challenge, fails nonce_mismatch), then
 9. the node's stage GPU requirement (manifest stages[i].gpus), when the caller gives one
                                                      -> gpu_missing / gpu_cc_off / gpu_model_not_allowed
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from cryptography import x509

from conclave.overlay.identity import Announcement, MalformedAnnouncement
from conclave.overlay.nonces import NonceCache, NonceError
from conclave.overlay.reasons import OverlayReason
from conclave.runtime import attestation
from conclave.runtime.attestation import binding, collateral_merge, nvgpu_requirement, policy as policy_mod
from conclave.runtime.attestation.core import (AttestationError, PolicyViolated, Reason, TeeType,
                                               VerifiedEvidence)
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.manifest import enrolment as enrolment_mod

if TYPE_CHECKING:   # types only: the decision reads received messages field by field, builds none
    from conclave.overlay.proto.conclave_pb2 import AttestReply, EvidenceItem

log = logging.getLogger("conclave.overlay.admission")

CPU_TEES = (TeeType.TDX, TeeType.SNP, TeeType.SIM)
MAX_EVIDENCE_ITEMS = 9           # one CPU item + up to 8 GPUs
MAX_EVIDENCE_BYTES = 256 * 1024
MAX_CERTS = 16


class AdmissionRejected(ConclaveError):
    """A peer was not admitted. `reason` is stable; `reasons` lists every policy violation."""

    exit_code = ExitCode.VERIFICATION_FAILED

    def __init__(self, reason: str, message: str, reasons: Sequence[str] = ()):
        super().__init__(str(reason), message)
        self.reasons = list(reasons) or [str(reason)]


@dataclass(frozen=True)
class AdmittedPeer:
    """A peer whose evidence verified, validated and bound its keys for our nonce."""

    announcement: Announcement
    tee: TeeType
    simulated: bool
    verified_at: datetime
    claims_summary: dict = field(default_factory=dict)
    # the proven stage claim (owner, validity); None only where the verifier has no manifest, or
    # for our own self-check before the owner enrolled us
    stage_proof: enrolment_mod.ProvenStage | None = None


def report_data_for(manifest_digest: bytes, ann: Announcement, nonce: bytes) -> bytes:
    return binding.report_data_for(purpose=binding.PURPOSE_NODE, manifest_digest=manifest_digest,
                                   wg_public_key=ann.wg_public_key.raw,
                                   hpke_public_key=ann.hpke_public_key.raw, nonce=nonce,
                                   extra=ann.binding_extra())


def node_keys_of(ann: Announcement) -> enrolment_mod.NodeKeys:
    """The per-boot public keys of an announcement, as an enrolment covers them."""
    return enrolment_mod.NodeKeys(ann.wg_public_key.raw, ann.hpke_public_key.raw, ann.statement_key)


def _load_collateral(tee: TeeType, blob: bytes | None) -> object | None:
    return attestation.load_collateral_bytes(tee, blob)


class Verifier:
    """Decides admission for one deployment (policy + manifest digest + overlay CIDR)."""

    def __init__(self, *, policy: policy_mod.Policy, manifest_digest: bytes, overlay: ipaddress.IPv4Network,
                 trusted_sim_roots: Sequence[x509.Certificate] = (),
                 collateral_for: Callable[[TeeType, bytes], object | None] | None = None,
                 trusted_roots: Mapping[TeeType, Sequence[x509.Certificate]] | None = None,
                 gpu_requirement_for: Callable[[str], nvgpu_requirement.GpuRequirement | None] | None = None,
                 gpu_roots: Sequence[x509.Certificate] | None = None,
                 rim_roots: Sequence[x509.Certificate] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 manifest=None):
        self.policy = policy
        # the VerifiedManifest whose stages and owners a node's claim is checked against (step 4b);
        # every node, broker and client passes it; None only for tests of evidence alone
        self.manifest = None
        self.manifest_digest = manifest_digest
        self.overlay = overlay
        self.trusted_sim_roots = tuple(trusted_sim_roots)
        self.collateral_for = collateral_for   # verifier-side collateral (e.g. CollateralCache.collateral_for)
        # TDX/SNP roots replacing the pinned vendor roots (emulated hardware's test roots only)
        self.trusted_roots = {TeeType(k): tuple(v) for k, v in (trusted_roots or {}).items()}
        # node_id -> its stage's GPU requirement (VerifiedManifest.stage_for(node).gpus); None: none
        self.gpu_requirement_for = gpu_requirement_for
        self.gpu_roots = None if gpu_roots is None else tuple(gpu_roots)  # None: NVIDIA's pinned roots
        self.rim_roots = None if rim_roots is None else tuple(rim_roots)  # None: NVIDIA's pinned RIM root
        self.clock = clock
        if manifest is not None:
            self.bind_manifest(manifest)

    def bind_manifest(self, manifest) -> "Verifier":
        """Check every admitted node's stage claim against this VerifiedManifest from now on
        (stage, role, the stage owner's enrolment); its digest must be the one bound in evidence."""
        if bytes(manifest.digest) != bytes(self.manifest_digest):
            raise ValueError("the manifest's digest differs from the digest this verifier binds")
        self.manifest = manifest
        return self

    def admit(self, *, challenged: Announcement, reply: "AttestReply", nonces: NonceCache,
              enrolment_optional: bool = False) -> AdmittedPeer:
        """enrolment_optional: only a node's check of its own evidence, before its owner enrolled
        it (stage and role are still checked; an enrolment that is present must hold)."""
        # 1. structure
        try:
            ann = Announcement.from_proto(reply.identity)
        except MalformedAnnouncement as exc:
            raise AdmissionRejected(OverlayReason.MALFORMED_MESSAGE, f"identity: {exc}") from None
        items = list(reply.evidence)
        if not 1 <= len(items) <= MAX_EVIDENCE_ITEMS:
            raise AdmissionRejected(OverlayReason.MALFORMED_MESSAGE, "wrong number of evidence items")
        if any(len(i.data) > MAX_EVIDENCE_BYTES or len(i.certs) > MAX_CERTS for i in items):
            raise AdmissionRejected(OverlayReason.MALFORMED_MESSAGE, "evidence item too large")
        # 2. identity: the node we challenged, with the keys it announced
        if not challenged.same_identity(ann):
            raise AdmissionRejected(OverlayReason.IDENTITY_MISMATCH,
                                    "attested identity differs from the announcement we challenged")
        # 3. nonce: ours, fresh, single use
        try:
            nonces.consume(bytes(reply.nonce), challenged.node_id)
        except NonceError as exc:
            raise AdmissionRejected(exc.reason, f"nonce check failed: {exc.reason}") from None
        nonce = bytes(reply.nonce)
        # 4. overlay address
        if ann.overlay_address not in self.overlay or ann.overlay_address in (
                self.overlay.network_address, self.overlay.broadcast_address):
            raise AdmissionRejected(OverlayReason.ADDRESS_OUT_OF_RANGE,
                                    f"{ann.overlay_address} is outside {self.overlay}")
        # 4b. the claim to a stage: a manifest stage, its role, its owner's enrolment of these keys
        stage_proof = self._check_stage_claim(ann, bytes(reply.enrolment), enrolment_optional)
        # 5-8. evidence
        try:
            tees = [TeeType(i.tee) for i in items]
        except ValueError:
            raise AdmissionRejected(OverlayReason.MALFORMED_MESSAGE, "unknown TEE type") from None
        cpu = [k for k, t in enumerate(tees) if t in CPU_TEES]
        if len(cpu) != 1 or any(t not in CPU_TEES and t != TeeType.NVGPU for t in tees):
            raise AdmissionRejected(OverlayReason.MALFORMED_MESSAGE, "need exactly one CPU evidence item")
        expected_rd = report_data_for(self.manifest_digest, ann, nonce)
        cpu_item = items[cpu[0]]
        cpu_tee = tees[cpu[0]]
        verified = self._verify_item(cpu_item, cpu_tee, nonce=None)
        try:
            binding.check_binding(verified, expected_rd)
        except AttestationError as exc:
            raise AdmissionRejected(exc.reason, exc.message) from None
        validated = self._validate(verified)
        gpu_nonce = binding.gpu_nonce_for(expected_rd)
        gpus: list[VerifiedEvidence] = []
        for k, item in enumerate(items):
            if k == cpu[0]:
                continue
            gpu = self._verify_item(item, TeeType.NVGPU, nonce=gpu_nonce)
            try:
                binding.check_binding(gpu, gpu_nonce)
            except AttestationError as exc:
                raise AdmissionRejected(exc.reason, exc.message) from None
            self._validate(gpu)
            gpus.append(gpu)
        requirement = self._gpu_requirement(ann.node_id)
        unmet = nvgpu_requirement.check_gpus(requirement, gpus)
        if unmet:
            raise AdmissionRejected(unmet[0].reason, "; ".join(v.message for v in unmet),
                                    reasons=[str(v.reason) for v in unmet])
        claims = verified.claims
        summary = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in claims.items()
                   if k in ("measurement", "mr_td", "svn", "tcb_status", "node", "debug")}
        summary["revocation_checked"] = verified.revocation_checked
        summary["collateral_age_s"] = verified.collateral_age_s
        if validated.tcb_grace_until is not None:   # an OutOfDate TCB kept under the policy's grace
            summary["tcb_grace_until"] = validated.tcb_grace_until.isoformat().replace("+00:00", "Z")
        if stage_proof is not None:
            summary["owner"] = stage_proof.owner
            summary["owner_proven"] = True
        return AdmittedPeer(announcement=ann, tee=cpu_tee, simulated=verified.simulated,
                            verified_at=verified.verified_at, claims_summary=summary,
                            stage_proof=stage_proof)

    def _check_stage_claim(self, ann: Announcement, enrolment: bytes,
                           optional: bool) -> enrolment_mod.ProvenStage | None:
        if self.manifest is None:
            return None
        try:
            if optional and not enrolment:
                enrolment_mod.check_stage_claim(self.manifest, node_id=ann.node_id, role=str(ann.role))
                return None
            return enrolment_mod.check_enrolment(enrolment, manifest=self.manifest, node_id=ann.node_id,
                                                 role=str(ann.role), node_keys=node_keys_of(ann),
                                                 at=self.clock())
        except enrolment_mod.EnrolmentRejected as exc:
            raise AdmissionRejected(exc.reason, exc.message) from None

    def _verify_item(self, item: "EvidenceItem", tee: TeeType, *, nonce: bytes | None) -> VerifiedEvidence:
        if tee == TeeType.SIM and not self.policy.unsafe_allow_simulated:
            raise AdmissionRejected(Reason.SIMULATED_NOT_ALLOWED, "simulated evidence under a production policy")
        if tee not in self.policy.allowed_tee:
            raise AdmissionRejected(Reason.TEE_NOT_ALLOWED, f"TEE {tee} is not allowed by the policy")
        try:
            certs = [x509.load_der_x509_certificate(bytes(c)) for c in item.certs]
        except ValueError:
            raise AdmissionRejected(OverlayReason.MALFORMED_MESSAGE, "certificate is not DER") from None
        roots = self.trusted_sim_roots if tee == TeeType.SIM else self.gpu_roots if tee == TeeType.NVGPU \
            else self.trusted_roots.get(tee)
        at = self.clock()
        try:
            # the verifier's own collateral first; carried collateral only where it verifies and
            # is fresher, piece by piece, never dropping a piece (collateral_merge)
            carried = _load_collateral(tee, bytes(item.collateral))
            own = self.collateral_for(tee, bytes(item.data)) if self.collateral_for is not None else None
            collateral = collateral_merge.merge(tee, own, carried, at=at, trusted_roots=roots)
            return attestation.verify_evidence(bytes(item.data), tee=tee, at=at, certs=certs,
                                               collateral=collateral, nonce=nonce, trusted_roots=roots,
                                               rim_roots=self.rim_roots if tee == TeeType.NVGPU else None)
        except AttestationError as exc:
            raise AdmissionRejected(exc.reason, exc.message) from None

    def _gpu_requirement(self, node_id: str):
        """The node's stage's `gpus` (the bound manifest's, unless a caller maps nodes itself)."""
        if self.gpu_requirement_for is not None:
            return self.gpu_requirement_for(node_id)
        stage = self.manifest.stage_for(node_id) if self.manifest is not None else None
        return getattr(stage, "gpus", None)

    def _validate(self, verified: VerifiedEvidence) -> policy_mod.ValidatedEvidence:
        try:
            return policy_mod.validate(verified, self.policy)
        except PolicyViolated as exc:
            raise AdmissionRejected(exc.reason, exc.message,
                                    reasons=[str(v.reason) for v in exc.violations]) from None
