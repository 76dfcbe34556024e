"""TDX TCB evaluation: pure functions over parsed collateral, the PCK extensions and the quote.

Follows Intel's Quote Verification Library (QVL) section numbers in "Intel SGX/TDX DCAP
Attestation Library" (4.1.2.4.11 TDX module, 4.1.2.4.15 / 4.1.2.9.x QE identity, 4.1.2.4.17 TCB
level). TEE_TCB_SVN: Intel's isTdxTcbHigherOrEqual skips bytes 0-1 (the TDX module's SVN and major
version) when byte 1 is non-zero, because the module is then judged by its TDX module identity
(TDX_<major>) instead; this module follows Intel. Older dcap-qvl releases compared all 16 bytes;
dcap-qvl 0.7.0 agrees with Intel on the vector built to tell them apart
(tests/data/tdx cases.json: tcb_module_identity_skip_bytes).
Known differences of dcap-qvl 0.7.0 (the cross-check used in tests):
- QE REPORTDATA: dcap-qvl (like Intel's QVL) compares only the first 32 bytes with the hash;
  this verifier also requires the last 32 bytes to be zero (tdx.06.qe_report_data).
- a Revoked TCB level: dcap-qvl fails verification; here tcb_status is "Revoked" and the
  policy refuses it.
- dcap-qvl refuses debug TDs (TD_ATTRIBUTES.DEBUG) inside verification; here debug is a claim and
  the policy refuses it, so one verifier serves both production and debug tooling.
TCB levels are taken in the order Intel PCS publishes them (newest first), as dcap-qvl and
go-tdx-guest do. The TD relaunch advice (TDX 1.5, TEE_TCB_SVN2) is not evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass

from conclave.runtime.attestation.core import Reason
from conclave.runtime.attestation.tdx_collateral import (
    ModuleTcbLevel, QeIdentity, TcbInfo, TcbLevel, TdxModuleIdentity,
)
from conclave.runtime.attestation.tdx_pck import PckExtensions
from conclave.runtime.attestation.tdx_quote import QeReport, TdReportBody


class TcbCheckFailed(Exception):
    """A TCB evaluation step failed; `reason` is a core.Reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class TcbResult:
    status: str
    advisory_ids: tuple[str, ...]
    platform_level: TcbLevel
    module_level: ModuleTcbLevel | None
    qe_level: ModuleTcbLevel


# ---------------------------------------------------------------------------------------------
# 4.1.2.4.11: the TDX module (MRSIGNERSEAM, SEAM attributes) matches the TCB info
# ---------------------------------------------------------------------------------------------

def module_identity_id(tee_tcb_svn: bytes) -> str:
    """Intel names module identities "TDX_" + the major version byte in two hex digits."""
    return f"TDX_{tee_tcb_svn[1]:02X}"


def find_module_identity(tcb_info: TcbInfo, tee_tcb_svn: bytes) -> TdxModuleIdentity | None:
    wanted = module_identity_id(tee_tcb_svn)
    for identity in tcb_info.tdx_module_identities:
        if identity.id.upper() == wanted:
            return identity
    return None


def check_tdx_module(tcb_info: TcbInfo, body: TdReportBody) -> TdxModuleIdentity | None:
    """Returns the module identity used for module TCB (None when TEE_TCB_SVN[1] == 0)."""
    identity: TdxModuleIdentity | None = None
    expected = tcb_info.tdx_module
    if body.tee_tcb_svn[1] > 0:
        identity = find_module_identity(tcb_info, body.tee_tcb_svn)
        if identity is None:
            raise TcbCheckFailed(Reason.TCB_MISMATCH, f"TCB info has no TDX module identity "
                                 f"{module_identity_id(body.tee_tcb_svn)}")
        expected = identity
    if expected is None:
        raise TcbCheckFailed(Reason.COLLATERAL_INVALID, "TDX TCB info lacks the tdxModule identity")
    if body.mr_signer_seam != expected.mr_signer:
        raise TcbCheckFailed(Reason.TCB_MISMATCH, "MRSIGNERSEAM does not match the TDX module signer in TCB info")
    # Intel: every SEAM attribute byte must be zero and equal to the TCB info's module attributes.
    if any(body.seam_attributes) or body.seam_attributes != expected.attributes:
        raise TcbCheckFailed(Reason.TCB_MISMATCH, "SEAMATTRIBUTES are not zero / do not match TCB info")
    return identity


# ---------------------------------------------------------------------------------------------
# 4.1.2.9.5-11: the QE report matches the QE identity; QE TCB level by ISVSVN
# ---------------------------------------------------------------------------------------------

def check_qe_identity(qe_identity: QeIdentity, qe_report: QeReport) -> ModuleTcbLevel | None:
    """Returns the QE's TCB level, or None when its ISVSVN is below every level (not supported)."""
    if qe_report.miscselect & qe_identity.miscselect_mask != qe_identity.miscselect:
        raise TcbCheckFailed(Reason.QE_IDENTITY_MISMATCH, "QE MISCSELECT does not match the QE identity")
    masked = bytes(a & m for a, m in zip(qe_report.attributes, qe_identity.attributes_mask))
    if masked != qe_identity.attributes:
        raise TcbCheckFailed(Reason.QE_IDENTITY_MISMATCH, "QE ATTRIBUTES do not match the QE identity")
    if qe_report.mr_signer != qe_identity.mr_signer:
        raise TcbCheckFailed(Reason.QE_IDENTITY_MISMATCH, "QE MRSIGNER does not match the QE identity")
    if qe_report.isv_prod_id != qe_identity.isv_prod_id:
        raise TcbCheckFailed(Reason.QE_IDENTITY_MISMATCH, "QE ISVPRODID does not match the QE identity")
    for level in qe_identity.tcb_levels:
        if qe_report.isv_svn >= level.isv_svn:
            return level
    return None


# ---------------------------------------------------------------------------------------------
# 4.1.2.4.17: TCB level matching and status convergence
# ---------------------------------------------------------------------------------------------

def sgx_higher_or_equal(pck: PckExtensions, level: TcbLevel) -> bool:
    return (all(a >= b for a, b in zip(pck.sgx_tcb_components, level.sgx_components))
            and pck.pce_svn >= level.pce_svn)


def tdx_higher_or_equal(tee_tcb_svn: bytes, level: TcbLevel) -> bool:
    """Intel isTdxTcbHigherOrEqual: bytes 0-1 are skipped when TEE_TCB_SVN[1] (module major) > 0."""
    start = 2 if tee_tcb_svn[1] > 0 else 0
    return all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, 16))


def match_levels(levels: tuple[TcbLevel, ...], pck: PckExtensions,
                 tee_tcb_svn: bytes) -> tuple[TcbLevel | None, TcbLevel | None]:
    sgx_level = None
    for level in levels:
        if sgx_higher_or_equal(pck, level):
            sgx_level = sgx_level or level
            if tdx_higher_or_equal(tee_tcb_svn, level):
                return sgx_level, level
    return sgx_level, None


def _converge_out_of_date(status: str) -> str:
    if status in ("UpToDate", "SWHardeningNeeded"):
        return "OutOfDate"
    if status in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
        return "OutOfDateConfigurationNeeded"
    return status


def converge(platform_status: str, other_status: str) -> str:
    """Intel convergeTcbStatusWith{TdxModule,Qe}Status: the worse of the two, Intel's way."""
    if other_status == "Revoked":
        return "Revoked"
    if other_status != "UpToDate":  # OutOfDate (Intel maps every other non-UpToDate QE/module status here)
        return _converge_out_of_date(platform_status)
    return platform_status


def evaluate(tcb_info: TcbInfo, pck: PckExtensions, body: TdReportBody,
             module_identity: TdxModuleIdentity | None, qe_level: ModuleTcbLevel | None) -> TcbResult:
    sgx_level, tdx_level = match_levels(tcb_info.tcb_levels, pck, body.tee_tcb_svn)
    if sgx_level is None:
        raise TcbCheckFailed(Reason.TCB_NOT_FOUND, "no TCB level matches the PCK certificate's SGX TCB "
                             "components and PCE SVN (TCB not supported)")
    if tdx_level is None:
        raise TcbCheckFailed(Reason.TCB_NOT_FOUND, "no TCB level matches the TD's TEE_TCB_SVN (TCB not supported)")
    module_level: ModuleTcbLevel | None = None
    status = tdx_level.status
    if module_identity is not None:
        module_svn = body.tee_tcb_svn[0]
        module_level = next((lv for lv in module_identity.tcb_levels if module_svn >= lv.isv_svn), None)
        if module_level is None:
            raise TcbCheckFailed(Reason.TCB_NOT_FOUND, f"TDX module SVN {module_svn} is below every level of "
                                 f"{module_identity.id} (TCB not supported)")
        status = converge(status, module_level.status)
    if qe_level is None:
        raise TcbCheckFailed(Reason.TCB_NOT_FOUND, "QE ISVSVN is below every QE identity TCB level (not supported)")
    status = converge(status, qe_level.status)
    advisories: list[str] = []
    for ids in (tdx_level.advisory_ids, module_level.advisory_ids if module_level else (), qe_level.advisory_ids):
        advisories += [a for a in ids if a not in advisories]
    return TcbResult(status, tuple(advisories), tdx_level, module_level, qe_level)
