"""Validation: verified evidence against a loaded policy. Collects every violation (DESIGN.md
convention 3); only validate() constructs ValidatedEvidence."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from conclave.runtime.attestation.core import PolicyViolated, Reason, TeeType, VerifiedEvidence, Violation
from conclave.runtime.attestation.policy.load import Policy
from conclave.runtime.attestation.policy.schema import (DEFAULT_SNP_VMPLS, GRACE_STATUSES, NO_SERVICE_TD,
                                                        TEES_WITH_DATED_COLLATERAL, TEES_WITH_REVOCATION,
                                                        TEES_WITH_TCB_STATUS, TEES_WITHOUT_DEBUG_FLAG,
                                                        VALUE_FIELDS)


_VALIDATED = object()


@dataclass(frozen=True)
class ValidatedEvidence:
    """VerifiedEvidence that passed a policy; constructed only by validate()."""

    verified: VerifiedEvidence
    policy_digest: bytes
    # set when an OutOfDate TCB was accepted only under the policy's tcb_grace_until
    tcb_grace_until: datetime | None = None
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VALIDATED:
            raise TypeError("ValidatedEvidence is constructed only by policy.validate")

    @property
    def tee(self) -> TeeType:
        return self.verified.tee

    @property
    def report_data(self) -> bytes:
        return self.verified.report_data


def _as_hex(value: Any) -> str | None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return None


class _Collector:
    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, reason: Reason, field_name: str, message: str, expected: Any = None,
            actual: Any = None) -> None:
        self.violations.append(Violation(reason, field_name, message, expected, actual))


def _check_value_lists(out: _Collector, tee: TeeType, section: Mapping[str, Any],
                       claims: Mapping[str, Any]) -> None:
    for name in VALUE_FIELDS[tee]:
        allowed = section.get(name)
        if allowed is None:
            continue
        actual = _as_hex(claims.get(name))
        if actual is None or actual not in allowed:
            out.add(Reason.MEASUREMENT_MISMATCH, f"{tee.value}.{name}",
                    f"{name} {actual or '(absent)'} is not an allowed value", allowed, actual)
    sets = section.get("measurement_sets")
    if sets is not None:
        actual_all = {name: _as_hex(claims.get(name)) for s in sets for name in s}
        if not any(all(actual_all[k] == v for k, v in s.items()) for s in sets):
            out.add(Reason.MEASUREMENT_MISMATCH, f"{tee.value}.measurement_sets",
                    "evidence matches none of the allowed measurement sets", sets, actual_all)


# TDATTRIBUTES bits (Intel TDX Module ABI): the TUD group (0-7) marks a TD under debug or profiling,
# untrusted if any bit is set; bit 0 is DEBUG itself (the `debug` claim).
TDX_ATTR_TUD_MASK = 0xFF
TDX_ATTR_SEPT_VE_DISABLE = 1 << 28
TDX_ATTR_MIGRATABLE = 1 << 29


def _check_tdx_attributes(out: _Collector, section: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
    raw = claims.get("td_attributes")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 8:
        out.add(Reason.MEASUREMENT_MISMATCH, "tdx.td_attributes", "TD_ATTRIBUTES absent or not 8 bytes",
                None, _as_hex(raw))
        return
    attrs = int.from_bytes(bytes(raw), "little")
    if attrs & TDX_ATTR_TUD_MASK & ~1:   # DEBUG (bit 0) is reported once, as the debug claim
        out.add(Reason.DEBUG_ENABLED, "tdx.td_attributes",
                "a TD-under-debug attribute (TUD group, bits 1-7: profiling) is set", 0,
                hex(attrs & TDX_ATTR_TUD_MASK))
    if attrs & TDX_ATTR_MIGRATABLE and not section.get("unsafe_allow_migratable", False):
        out.add(Reason.MIGRATION_ALLOWED, "tdx.unsafe_allow_migratable",
                "the TD is MIGRATABLE (TD_ATTRIBUTES bit 29): a migration TD can export its memory",
                False, True)
    if not attrs & TDX_ATTR_SEPT_VE_DISABLE and not section.get("unsafe_allow_sept_ve", False):
        out.add(Reason.SEPT_VE_ENABLED, "tdx.unsafe_allow_sept_ve",
                "TD_ATTRIBUTES.SEPT_VE_DISABLE (bit 28) is clear: the host can inject #VE on "
                "secure-EPT violations", True, False)


def _check_tdx(out: _Collector, section: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
    _check_tdx_attributes(out, section, claims)
    minimum = section.get("min_tee_tcb_svn")
    if minimum is not None:
        actual = claims.get("tee_tcb_svn")
        want = bytes.fromhex(minimum)
        if not isinstance(actual, (bytes, bytearray)) or len(actual) != 16 or any(
                a < w for a, w in zip(bytes(actual), want)):
            out.add(Reason.SVN_TOO_LOW, "tdx.min_tee_tcb_svn",
                    "TEE_TCB_SVN below the minimum (compared component-wise)", minimum, _as_hex(actual))
    # TDX 1.5 binds a service TD (e.g. a migration TD) into MRSERVICETD; TDX 1.0 quotes have none.
    allowed_servicetd = section.get("mr_servicetd") or [NO_SERVICE_TD]
    servicetd = _as_hex(claims.get("mr_servicetd")) or NO_SERVICE_TD
    if servicetd not in allowed_servicetd:
        out.add(Reason.SERVICETD_NOT_ALLOWED, "tdx.mr_servicetd",
                "a service TD is bound to this TD (MRSERVICETD) and the policy does not list it",
                allowed_servicetd, servicetd)


def _check_snp(out: _Collector, section: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
    min_tcb = section.get("min_tcb")
    if min_tcb is not None:
        reported = claims.get("reported_tcb")
        for part, want in min_tcb.items():
            have = reported.get(part) if isinstance(reported, Mapping) else None
            if not isinstance(have, int) or have < want:
                out.add(Reason.SVN_TOO_LOW, f"snp.min_tcb.{part}",
                        f"reported TCB {part} {have} is below the minimum {want}", want, have)
    min_guest = section.get("min_guest_svn")
    if min_guest is not None:
        have = claims.get("guest_svn")
        if not isinstance(have, int) or have < min_guest:
            out.add(Reason.SVN_TOO_LOW, "snp.min_guest_svn",
                    f"guest SVN {have} is below the minimum {min_guest}", min_guest, have)
    if section.get("require_committed_tcb_equals_current", False):
        committed, current = claims.get("committed_tcb"), claims.get("current_tcb")
        if committed is None or committed != current:
            out.add(Reason.TCB_MISMATCH, "snp.require_committed_tcb_equals_current",
                    "committed TCB differs from current TCB (firmware not committed)",
                    current, committed)
    vmpls = section.get("allowed_vmpl", list(DEFAULT_SNP_VMPLS))
    if claims.get("vmpl") not in vmpls:
        out.add(Reason.VMPL_NOT_ALLOWED, "snp.allowed_vmpl",
                f"VMPL {claims.get('vmpl')} is not allowed", vmpls, claims.get("vmpl"))
    migrate = claims.get("policy_migrate_ma_allowed")
    if migrate is not False and not section.get("unsafe_allow_migrate_ma", False):
        out.add(Reason.MIGRATION_ALLOWED, "snp.unsafe_allow_migrate_ma",
                "the guest policy allows a migration agent (MIGRATE_MA), which can export the "
                "guest's memory", False, migrate)
    keys = section.get("allowed_signing_keys")
    if keys is not None and claims.get("signing_key") not in keys:
        out.add(Reason.MEASUREMENT_MISMATCH, "snp.allowed_signing_keys",
                f"signing key {claims.get('signing_key')} is not allowed", keys, claims.get("signing_key"))


def _check_nvgpu(out: _Collector, section: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
    if section.get("require_rim") and claims.get("rim_validated") is not True:
        out.add(Reason.RIM_MISSING, "nvgpu.require_rim",
                "GPU measurements were not validated against NVIDIA RIMs", True, claims.get("rim_validated"))
    measured = claims.get("measurements")
    for index, allowed in (section.get("measurements") or {}).items():
        have = measured.get(int(index)) if isinstance(measured, Mapping) else None
        if have is None and isinstance(measured, Mapping):
            have = measured.get(str(index))
        actual = _as_hex(have)
        if actual is None or actual not in allowed:
            out.add(Reason.MEASUREMENT_MISMATCH, f"nvgpu.measurements.{index}",
                    f"GPU measurement {index} is not an allowed value", allowed, actual)
    for name, claim in (("driver_versions", "driver_version"), ("vbios_versions", "vbios_version")):
        allowed = section.get(name)
        if allowed is not None and claims.get(claim) not in allowed:
            out.add(Reason.MEASUREMENT_MISMATCH, f"nvgpu.{name}",
                    f"{claim} {claims.get(claim)} is not allowed", allowed, claims.get(claim))


def _check_sim(out: _Collector, section: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
    minimum = section.get("min_svn")
    if minimum is not None:
        have = claims.get("svn")
        if not isinstance(have, int) or have < minimum:
            out.add(Reason.SVN_TOO_LOW, "sim.min_svn", f"svn {have} is below the minimum {minimum}",
                    minimum, have)


def violations(verified: VerifiedEvidence, policy: Policy) -> list[Violation]:
    """Every way `verified` falls short of `policy` (empty list: accepted)."""
    if not isinstance(verified, VerifiedEvidence):
        raise TypeError("validation accepts only VerifiedEvidence (run verification first)")
    if not isinstance(policy, Policy):
        raise TypeError("policy must be a Policy (Policy.load / Policy.from_dict)")
    out = _Collector()
    claims = verified.claims
    tee = TeeType(verified.tee)

    if verified.simulated or claims.get("simulated"):
        if not policy.unsafe_allow_simulated:
            out.add(Reason.SIMULATED_NOT_ALLOWED, "unsafe_allow_simulated",
                    "simulated TEE evidence is not allowed by this policy", False, True)
    if tee not in policy.allowed_tee:
        out.add(Reason.TEE_NOT_ALLOWED, "allowed_tee", f"TEE {tee.value} is not allowed",
                sorted(t.value for t in policy.allowed_tee), tee.value)
    debug = claims.get("debug")
    if debug is None and tee in TEES_WITHOUT_DEBUG_FLAG:
        pass  # GPU evidence has no debug flag: its CC/devtools mode shows in the measurements
    elif debug is not False:  # fail closed: absent or anything but False counts as debug
        out.add(Reason.DEBUG_ENABLED, "debug", "debug-mode TEE evidence is never accepted", False, debug)

    status = verified.tcb_status if verified.tcb_status is not None else claims.get("tcb_status")
    if status == "Revoked":
        out.add(Reason.TCB_REVOKED, "allowed_tcb_statuses", "TCB is revoked",
                list(policy.allowed_tcb_statuses), status)
    elif status is None:
        if tee in TEES_WITH_TCB_STATUS:
            out.add(Reason.TCB_NOT_ALLOWED, "allowed_tcb_statuses",
                    "TCB status unknown (verify with collateral)", list(policy.allowed_tcb_statuses), None)
    elif status not in policy.allowed_tcb_statuses and not _on_grace(verified, policy):
        out.add(Reason.TCB_NOT_ALLOWED, "allowed_tcb_statuses", f"TCB status {status} is not allowed",
                list(policy.allowed_tcb_statuses), status)

    denied = set(policy.data.get("denied_advisories", ()))
    advisories = set(verified.advisory_ids) | set(claims.get("advisory_ids") or ())
    for advisory in sorted(denied & advisories):
        out.add(Reason.ADVISORY_DENIED, "denied_advisories",
                f"the TCB is affected by advisory {advisory}, which this policy denies",
                sorted(denied), advisory)

    section = policy.section(tee)
    if tee in policy.allowed_tee:
        _check_value_lists(out, tee, section, claims)
        {TeeType.TDX: _check_tdx, TeeType.SNP: _check_snp, TeeType.NVGPU: _check_nvgpu,
         TeeType.SIM: _check_sim}[tee](out, section, claims)
    _check_revocation_and_age(out, verified, policy, tee)
    return out.violations


def _on_grace(verified: VerifiedEvidence, policy: Policy) -> bool:
    """An OutOfDate TCB inside the policy's stated grace period (tcb_grace_until, at verified_at)."""
    grace = policy.tcb_grace_until
    status = verified.tcb_status if verified.tcb_status is not None else verified.claims.get("tcb_status")
    return grace is not None and status in GRACE_STATUSES and verified.verified_at <= grace


def _check_revocation_and_age(out: _Collector, verified: VerifiedEvidence, policy: Policy,
                              tee: TeeType) -> None:
    """Revocation checked (production: always required) and collateral not older than allowed."""
    if tee not in TEES_WITH_REVOCATION:
        return
    if policy.require_revocation_check and not verified.revocation_checked:
        unchecked = verified.claims.get("revocation_unchecked")  # nvgpu: each certificate and why
        detail = f": {'; '.join(unchecked)}" if unchecked else " (collateral without CRLs, or none)"
        out.add(Reason.REVOCATION_UNCHECKED, "require_revocation_check",
                f"certificate revocation was not checked{detail}", True, False)
    limit = policy.max_collateral_age
    if limit is None or (tee not in TEES_WITH_DATED_COLLATERAL and verified.collateral_age_s is None):
        return
    age = verified.collateral_age_s
    if age is None:
        out.add(Reason.COLLATERAL_MISSING, "max_collateral_age",
                "no dated vendor collateral was used, so its age is unknown", limit, None)
    elif age > limit:
        out.add(Reason.COLLATERAL_EXPIRED, "max_collateral_age",
                f"collateral is {age:.0f} s old, more than the {limit} s allowed", limit, round(age))


def validate(verified: VerifiedEvidence, policy: Policy) -> ValidatedEvidence:
    """Accept `verified` under `policy` or raise PolicyViolated listing every violation.

    The result names the grace period when an OutOfDate TCB was accepted only under it."""
    found = violations(verified, policy)
    if found:
        raise PolicyViolated(found)
    status = verified.tcb_status if verified.tcb_status is not None else verified.claims.get("tcb_status")
    grace = policy.tcb_grace_until if (status not in policy.allowed_tcb_statuses
                                       and _on_grace(verified, policy)) else None
    return ValidatedEvidence(verified=verified, policy_digest=policy.digest, tcb_grace_until=grace,
                             _token=_VALIDATED)
