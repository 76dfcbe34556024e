"""Intel TDX quotes (v4, v5): the format module (parse / claims / load_collateral / verify).

Verification follows Intel's Quote Verification Library and the TDX DCAP quote verification
flow; steps are numbered in the order they run and name Intel's section in comments:

  tdx.01.parse_header        header: version 4/5, ECDSA P-256 key, TEE type TDX (parse); QE vendor
                             ID is Intel's (verify: another vendor's QE is not Intel's trust chain)
  tdx.02.parse_body          TD report body v4 / v5 type 2 / v5 type 3, signature data (parse)
  tdx.03.pck_chain           PCK leaf -> PCK Platform/Processor CA -> pinned Intel SGX Root CA, dates at `at`
  tdx.04.pck_revocation      Root CA CRL (CA) and PCK CRL (leaf), signatures and dates    [collateral]
  tdx.05.qe_report_signature QE report signed by the PCK key (4.1.2.4.12)
  tdx.06.qe_report_data      QE REPORTDATA = SHA-256(attestation key || QE auth data) || 0^32 (4.1.2.4.13)
  tdx.07.quote_signature     header+body signed by the attestation key (4.1.2.4.16)
  tdx.08.tcb_signing_chain   TCB Signing cert (as supplied) -> pinned root, dates at `at`  [collateral]
  tdx.09.tcb_info            signature, id TDX v3+, issue/next-update dates, FMSPC/PCEID (4.1.2.4.9-10)
  tdx.10.qe_identity         signature, id TD_QE v2, issue/next-update dates               [collateral]
  tdx.11.tdx_module          MRSIGNERSEAM / SEAM attributes vs TCB info (4.1.2.4.11)      [collateral]
  tdx.12.qe_identity_match   QE MRSIGNER, ISVPRODID, masked MISCSELECT/ATTRIBUTES (4.1.2.4.15)
  tdx.13.tcb_level           TCB level by FMSPC, SGX + TDX components, module, QE (4.1.2.4.17)

Without collateral only steps 01-03 and 05-07 run: tcb_status is None, revocation_checked is
False, and a note says so. The verification core does no I/O and never reads the clock.
"""
from __future__ import annotations

import hashlib
import hmac
import importlib.resources
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from conclave.runtime.attestation import core
from conclave.runtime.attestation.core import (
    MalformedEvidence, Reason, StepLog, TeeType, VerificationFailed, VerifiedEvidence,
)
from conclave.runtime.attestation import tdx_collateral, tdx_tcb
from conclave.runtime.attestation.tdx_collateral import TdxCollateral
from conclave.runtime.attestation.tdx_quote import (INTEL_QE_VENDOR_ID, ParsedTdxQuote, looks_like_quote,
                                                    parse_quote)

TEE = TeeType.TDX

# Embedded vendor roots (runtime/attestation/roots/) pinned by SHA-256 of their DER encoding.
# Intel SGX Root CA, CN=Intel SGX Root CA, 2018-05-21 .. 2049-12-31 (Intel's published fingerprint).
FINGERPRINTS: dict[str, str] = {
    "intel_sgx_root_ca.pem": "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
}

__all__ = ["TEE", "FINGERPRINTS", "ParsedTdxQuote", "TdxCollateral", "looks_like", "parse", "claims",
           "load_collateral", "verify", "intel_root", "collateral_age_s"]


# ---------------------------------------------------------------------------------------------
# parse / claims / load_collateral
# ---------------------------------------------------------------------------------------------

def looks_like(data: bytes) -> bool:
    return looks_like_quote(data)


def parse(data: bytes) -> ParsedTdxQuote:
    """Structure only (steps 01-02); raises MalformedEvidence and nothing else."""
    try:
        return parse_quote(data)
    except MalformedEvidence:
        raise
    except Exception as exc:  # defensive: a parser bug must still surface as malformed input
        raise MalformedEvidence(f"TDX quote could not be parsed: {type(exc).__name__}") from None


def claims(parsed: ParsedTdxQuote) -> dict[str, Any]:
    """Normalized claims (interface names). tcb_status/advisory_ids are filled in by verify."""
    b = parsed.body
    out: dict[str, Any] = {
        "version": parsed.version,
        "report_data": b.report_data,
        "debug": parsed.debug,
        "tcb_status": None,
        "advisory_ids": [],
        "tee_type": parsed.header.tee_type,
        "mr_td": b.mr_td,
        "rtmr0": b.rtmr0, "rtmr1": b.rtmr1, "rtmr2": b.rtmr2, "rtmr3": b.rtmr3,
        "mr_config_id": b.mr_config_id,
        "mr_owner": b.mr_owner,
        "mr_owner_config": b.mr_owner_config,
        "mr_seam": b.mr_seam,
        "mr_signer_seam": b.mr_signer_seam,
        "seam_attributes": b.seam_attributes,
        "td_attributes": b.td_attributes,
        "xfam": b.xfam,
        "tee_tcb_svn": b.tee_tcb_svn,
        "fmspc": parsed.pck.fmspc,
        "pce_id": parsed.pck.pce_id,
        "qe_svn": parsed.qe_report.isv_svn,
        "pce_svn": parsed.pck.pce_svn,
        "body_type": parsed.body_type,
    }
    if b.tee_tcb_svn2 is not None:
        out["tee_tcb_svn2"] = b.tee_tcb_svn2
        out["mr_servicetd"] = b.mr_servicetd
    return out


def load_collateral(path: Path) -> TdxCollateral:
    """QuoteCollateralV3 JSON file, or a folder of raw Intel PCS responses (see tdx_collateral)."""
    return tdx_collateral.load_collateral(Path(path))


# ---------------------------------------------------------------------------------------------
# roots and small crypto helpers
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def intel_root() -> x509.Certificate:
    """The embedded Intel SGX Root CA, refused unless its fingerprint matches the pin."""
    name = "intel_sgx_root_ca.pem"
    pem = importlib.resources.files("conclave.runtime.attestation").joinpath("roots", name).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    digest = cert.fingerprint(hashes.SHA256()).hex()
    if not hmac.compare_digest(digest, FINGERPRINTS[name]):
        raise VerificationFailed(Reason.CHAIN_UNTRUSTED, f"embedded root {name} does not match its pinned fingerprint")
    return cert


def _raw_p256_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)


def _ecdsa_ok(key: Any, raw_sig: bytes, message: bytes) -> bool:
    """ECDSA-P256/SHA-256 over `message` with a raw r||s signature."""
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return False
    if len(raw_sig) != 64:
        return False
    r, s = int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
    if not (0 < r and 0 < s):
        return False
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def _cn(cert: x509.Certificate) -> str:
    try:
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return ""
    return str(attrs[0].value) if attrs else ""


def _check_dates(log: StepLog, step: str, cert: x509.Certificate, at: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise log.fail(step, Reason.CERT_EXPIRED,
                       f"{what} ({_cn(cert)}) is not valid at {at.isoformat()} "
                       f"(valid {cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()})")


def _root_for(cert: x509.Certificate, roots: Sequence[x509.Certificate]) -> x509.Certificate | None:
    return next((r for r in roots if r.subject == cert.issuer and _issued_by(cert, r)), None)


# ---------------------------------------------------------------------------------------------
# verification steps
# ---------------------------------------------------------------------------------------------

def _pck_chain(log: StepLog, parsed: ParsedTdxQuote, at: datetime, certs: Sequence[x509.Certificate],
               roots: Sequence[x509.Certificate]) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    """03: leaf -> intermediate (from the quote or --certs) -> pinned root; dates at `at`."""
    step = "tdx.03.pck_chain"
    leaf = parsed.pck_chain[0]
    if "SGX PCK Certificate" not in _cn(leaf):
        raise log.fail(step, Reason.CHAIN_UNTRUSTED, "leaf certificate CN does not contain 'SGX PCK Certificate'")
    pool = list(parsed.pck_chain[1:]) + list(certs)
    named = [c for c in pool if c.subject == leaf.issuer]
    if not named:
        raise log.fail(step, Reason.CERTS_MISSING, "the PCK certificate's issuing CA is neither in the quote nor in --certs")
    intermediate = next((c for c in named if _issued_by(leaf, c)), None)
    if intermediate is None:
        raise log.fail(step, Reason.CHAIN_UNTRUSTED, "PCK certificate signature does not verify with its issuing CA")
    if not _is_ca(intermediate):
        raise log.fail(step, Reason.CHAIN_UNTRUSTED, "the PCK certificate's issuer is not a CA")
    root = _root_for(intermediate, roots)
    if root is None:
        raise log.fail(step, Reason.CHAIN_UNTRUSTED, "the PCK CA is not signed by a trusted Intel SGX Root CA")
    # Whatever else the quote embeds must be exactly the CA just used or a trusted root: a
    # modified copy of the root in the quote is refused rather than silently ignored.
    known = {intermediate.public_bytes(serialization.Encoding.DER)}
    known |= {r.public_bytes(serialization.Encoding.DER) for r in roots}
    if any(c.public_bytes(serialization.Encoding.DER) not in known for c in parsed.pck_chain[1:]):
        raise log.fail(step, Reason.CHAIN_UNTRUSTED, "the quote's PCK chain holds a certificate that is neither "
                       "the PCK CA nor a trusted root")
    for cert, what in ((leaf, "PCK certificate"), (intermediate, "PCK CA certificate"), (root, "root CA")):
        _check_dates(log, step, cert, at, what)
    log.ok(step)
    return leaf, intermediate, root


def _check_crl(log: StepLog, step: str, crl: x509.CertificateRevocationList, issuer: x509.Certificate,
               subject: x509.Certificate, at: datetime, what: str) -> None:
    if crl.issuer != issuer.subject:
        raise log.fail(step, Reason.COLLATERAL_INVALID, f"{what} is issued by {crl.issuer.rfc4514_string()}, "
                       f"not by {issuer.subject.rfc4514_string()}")
    try:
        good = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        good = False
    if not good:
        raise log.fail(step, Reason.SIGNATURE_INVALID, f"{what} signature does not verify")
    next_update = crl.next_update_utc
    if crl.last_update_utc > at or (next_update is not None and at > next_update):
        raise log.fail(step, Reason.COLLATERAL_EXPIRED, f"{what} is not current at {at.isoformat()}")
    if crl.get_revoked_certificate_by_serial_number(subject.serial_number) is not None:
        raise log.fail(step, Reason.CERT_REVOKED, f"{_cn(subject)} (serial {subject.serial_number:x}) is revoked by {what}")


def _revocation(log: StepLog, collateral: TdxCollateral, leaf: x509.Certificate, ca: x509.Certificate,
                root: x509.Certificate, at: datetime, notes: list[str]) -> bool:
    """04: Root CA CRL covers the PCK CA, the PCK CRL covers the leaf. Returns revocation_checked."""
    step = "tdx.04.pck_revocation"
    if collateral.root_ca_crl is not None:
        _check_crl(log, step, collateral.root_ca_crl, root, ca, at, "Root CA CRL")
    if collateral.pck_crl is not None:
        _check_crl(log, step, collateral.pck_crl, ca, leaf, at, "PCK CRL")
    checked = collateral.root_ca_crl is not None and collateral.pck_crl is not None
    if not checked:
        missing = [n for n, c in (("Root CA CRL", collateral.root_ca_crl), ("PCK CRL", collateral.pck_crl)) if c is None]
        notes.append(f"revocation not checked: collateral lacks {' and '.join(missing)}")
    log.ok(step)
    return checked


def _qe_report(log: StepLog, parsed: ParsedTdxQuote, leaf: x509.Certificate) -> None:
    """05-07: QE report signature (PCK key), QE report data binding, quote signature (attestation key)."""
    if not _ecdsa_ok(leaf.public_key(), parsed.qe_report_signature, parsed.qe_report.raw):
        raise log.fail("tdx.05.qe_report_signature", Reason.SIGNATURE_INVALID,
                       "QE report signature does not verify with the PCK certificate's key")
    log.ok("tdx.05.qe_report_signature")
    expected = hashlib.sha256(parsed.attestation_key + parsed.qe_auth_data).digest() + bytes(32)
    if not hmac.compare_digest(expected, parsed.qe_report.report_data):
        raise log.fail("tdx.06.qe_report_data", Reason.QE_REPORT_DATA_MISMATCH,
                       "QE report data is not SHA-256(attestation key || QE auth data) followed by zeros")
    log.ok("tdx.06.qe_report_data")
    try:
        att_key = _raw_p256_key(parsed.attestation_key)
    except ValueError:
        raise log.fail("tdx.07.quote_signature", Reason.SIGNATURE_INVALID,
                       "attestation key is not a P-256 point") from None
    if not _ecdsa_ok(att_key, parsed.quote_signature, parsed.signed):
        raise log.fail("tdx.07.quote_signature", Reason.SIGNATURE_INVALID,
                       "quote signature does not verify with the attestation key")
    log.ok("tdx.07.quote_signature")


def _signing_cert(log: StepLog, step: str, supplied: tuple[x509.Certificate, ...],
                  certs: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
                  at: datetime) -> x509.Certificate:
    """The TCB Signing cert of the chain actually supplied (else from --certs), to a pinned root."""
    pool = list(supplied) if supplied else list(certs)
    candidates = [c for c in pool if "TCB Signing" in _cn(c) and not _is_ca(c)]
    if not candidates:
        raise log.fail(step, Reason.CERTS_MISSING, "no TCB Signing certificate in the collateral or --certs")
    for cert in candidates:
        root = _root_for(cert, roots)
        if root is not None:
            _check_dates(log, step, cert, at, "TCB Signing certificate")
            _check_dates(log, step, root, at, "root CA")
            return cert
    raise log.fail(step, Reason.CHAIN_UNTRUSTED, "the TCB Signing certificate is not signed by a trusted root")


def _signed_by(collateral: TdxCollateral, what: str, cert: x509.Certificate, sig: bytes, body: bytes) -> bool:
    key = (what, cert.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    cached = collateral._sig_cache.get(key)
    if cached is None:
        cached = _ecdsa_ok(cert.public_key(), sig, body)
        collateral._sig_cache[key] = cached
    return cached


def _collateral_dates(log: StepLog, step: str, issue: datetime, next_update: datetime, at: datetime,
                      what: str) -> None:
    if not issue <= at <= next_update:
        raise log.fail(step, Reason.COLLATERAL_EXPIRED, f"{what} is valid {issue.isoformat()} .. "
                       f"{next_update.isoformat()}, not at {at.isoformat()}")


def _tcb_collateral(log: StepLog, parsed: ParsedTdxQuote, collateral: TdxCollateral, at: datetime,
                    certs: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]) -> None:
    """08-10: the TCB Signing chain, then TCB info and QE identity signatures, ids and dates."""
    step = "tdx.08.tcb_signing_chain"
    tcb_signer = _signing_cert(log, step, collateral.tcb_info_issuer_chain, certs, roots, at)
    qe_signer = (tcb_signer if not collateral.qe_identity_issuer_chain
                 or collateral.qe_identity_issuer_chain == collateral.tcb_info_issuer_chain
                 else _signing_cert(log, step, collateral.qe_identity_issuer_chain, certs, roots, at))
    root_crl = collateral.root_ca_crl
    for signer in {id(tcb_signer): tcb_signer, id(qe_signer): qe_signer}.values():
        if root_crl is not None and root_crl.get_revoked_certificate_by_serial_number(signer.serial_number):
            raise log.fail(step, Reason.CERT_REVOKED, "the TCB Signing certificate is revoked by the Root CA CRL")
    log.ok(step)

    step = "tdx.09.tcb_info"
    info = collateral.tcb_info
    if not _signed_by(collateral, "tcb_info", tcb_signer, collateral.tcb_info_signature, collateral.tcb_info_raw):
        raise log.fail(step, Reason.SIGNATURE_INVALID, "TCB info signature does not verify with the TCB Signing key")
    if info.id != "TDX" or info.version < 3:
        raise log.fail(step, Reason.COLLATERAL_INVALID, f"TCB info id={info.id!r} version={info.version} is not TDX v3+")
    _collateral_dates(log, step, info.issue_date, info.next_update, at, "TCB info")
    if info.fmspc != parsed.pck.fmspc or info.pce_id != parsed.pck.pce_id:
        raise log.fail(step, Reason.TCB_MISMATCH, f"TCB info is for FMSPC {info.fmspc.hex()} / PCEID "
                       f"{info.pce_id.hex()}, the PCK certificate has {parsed.pck.fmspc.hex()} / {parsed.pck.pce_id.hex()}")
    log.ok(step)

    step = "tdx.10.qe_identity"
    qe = collateral.qe_identity
    if not _signed_by(collateral, "qe_identity", qe_signer, collateral.qe_identity_signature,
                      collateral.qe_identity_raw):
        raise log.fail(step, Reason.SIGNATURE_INVALID, "QE identity signature does not verify with the TCB Signing key")
    if qe.id != "TD_QE" or qe.version != 2:
        raise log.fail(step, Reason.COLLATERAL_INVALID, f"QE identity id={qe.id!r} version={qe.version} is not TD_QE v2")
    _collateral_dates(log, step, qe.issue_date, qe.next_update, at, "QE identity")
    log.ok(step)


def _tcb_status(log: StepLog, parsed: ParsedTdxQuote, collateral: TdxCollateral) -> tdx_tcb.TcbResult:
    """11-13: TDX module identity, QE identity match, TCB level and status convergence."""
    try:
        identity = tdx_tcb.check_tdx_module(collateral.tcb_info, parsed.body)
    except tdx_tcb.TcbCheckFailed as exc:
        raise log.fail("tdx.11.tdx_module", exc.reason, exc.message) from None
    log.ok("tdx.11.tdx_module")
    try:
        qe_level = tdx_tcb.check_qe_identity(collateral.qe_identity, parsed.qe_report)
    except tdx_tcb.TcbCheckFailed as exc:
        raise log.fail("tdx.12.qe_identity_match", exc.reason, exc.message) from None
    log.ok("tdx.12.qe_identity_match")
    try:
        result = tdx_tcb.evaluate(collateral.tcb_info, parsed.pck, parsed.body, identity, qe_level)
    except tdx_tcb.TcbCheckFailed as exc:
        raise log.fail("tdx.13.tcb_level", exc.reason, exc.message) from None
    log.ok("tdx.13.tcb_level")
    return result


def _as_utc(at: datetime) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise ValueError("verify(at=...) needs an aware datetime")
    return at.astimezone(timezone.utc)


def verify(parsed: ParsedTdxQuote, *, at: datetime, certs: Sequence[x509.Certificate] = (),
           collateral: object | None = None, nonce: bytes | None = None,
           trusted_roots: Sequence[x509.Certificate] | None = None) -> VerifiedEvidence:
    """Verify a parsed quote at `at` (no I/O, no clock). `nonce` is ignored for TDX."""
    del nonce
    at = _as_utc(at)
    if not isinstance(parsed, ParsedTdxQuote):
        raise MalformedEvidence("tdx.verify needs the result of tdx.parse")
    if collateral is not None and not isinstance(collateral, TdxCollateral):
        raise VerificationFailed(Reason.COLLATERAL_INVALID, "collateral is not TDX collateral (use tdx.load_collateral)")
    roots = list(trusted_roots) if trusted_roots is not None else [intel_root()]
    log = StepLog()
    if not hmac.compare_digest(parsed.header.qe_vendor_id, INTEL_QE_VENDOR_ID):
        raise log.fail("tdx.01.parse_header", Reason.QE_VENDOR_UNKNOWN,
                       f"quote header names QE vendor {parsed.header.qe_vendor_id.hex()}, not Intel's "
                       f"{INTEL_QE_VENDOR_ID.hex()}")
    log.ok("tdx.01.parse_header")
    log.ok("tdx.02.parse_body")
    notes: list[str] = []

    leaf, ca, root = _pck_chain(log, parsed, at, list(certs), roots)
    revocation_checked = False
    if collateral is not None:
        revocation_checked = _revocation(log, collateral, leaf, ca, root, at, notes)
    _qe_report(log, parsed, leaf)

    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    if collateral is None:
        notes.append("no collateral: PCK chain and signatures verified only; TCB status not evaluated and "
                     "revocation not checked")
    else:
        _tcb_collateral(log, parsed, collateral, at, list(certs), roots)
        result = _tcb_status(log, parsed, collateral)
        tcb_status, advisory_ids = result.status, result.advisory_ids
        if parsed.body_type == 3:
            notes.append("TDX 1.5 TD relaunch advice (TEE_TCB_SVN2) is not evaluated")
    if parsed.debug:
        notes.append("TD_ATTRIBUTES.DEBUG is set: the host can read this TD's memory")

    out_claims = claims(parsed)
    out_claims["tcb_status"] = tcb_status
    age = collateral_age_s(collateral, at) if collateral is not None else None
    out_claims["advisory_ids"] = list(advisory_ids)
    return VerifiedEvidence(
        tee=TEE, report_data=parsed.body.report_data, claims=out_claims, verified_at=at, simulated=False,
        steps=tuple(log.steps), tcb_status=tcb_status, advisory_ids=advisory_ids,
        revocation_checked=revocation_checked, notes=tuple(notes), collateral_age_s=age,
        _issuer=core._ISSUER,
    )


def collateral_age_s(collateral: TdxCollateral, at: datetime) -> float:
    """Seconds from the oldest vendor-dated part of `collateral` to `at`.

    The dated parts are the TCB info and QE identity issue dates and the PCK CRL's thisUpdate:
    Intel reissues all three continuously, so their age is how stale the verifier's view of
    TCB recoveries and revocations is. (The Root CA CRL is reissued rarely; its own nextUpdate
    bounds it in step 04.) The dates are inside signed data, never file times.
    """
    dates = [collateral.tcb_info.issue_date, collateral.qe_identity.issue_date]
    if collateral.pck_crl is not None:
        dates.append(collateral.pck_crl.last_update_utc)
    return max(0.0, (at - min(dates)).total_seconds())
