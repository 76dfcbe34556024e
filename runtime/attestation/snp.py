"""AMD SEV-SNP evidence: parse, claims, collateral and offline verification.

Verification steps (numbered after AMD's documents: SEV-SNP ABI spec 56860 for the report,
VCEK/KDS interface spec 57230 for the chain); each stops at the first failure:
  snp.01.parse             report format is verifiable: ECDSA P-384/SHA-384, signed by VCEK/VLEK
  snp.02.ark               the ARK for the product is a trusted root (embedded ARK pinned by
                           SHA-256, or one of `trusted_roots`), self-signed (RSA-PSS), valid at `at`
  snp.03.ask               ASK (VCEK chain) or ASVK (VLEK chain) issued and signed by the ARK, valid
  snp.04.crl               when AMD KDS CRLs are supplied: signed by the ARK, current, ASK/ASVK not
                           revoked; otherwise revocation_checked=False with a note
  snp.05.endorsement_key   VCEK/VLEK issued and signed by the ASK/ASVK, valid, ECDSA P-384, and
                           its serial not listed in the ARK's CRL (AMD lists ASK/ASVK serials
                           there; a VCEK/VLEK listed there is refused too, cert_revoked)
  snp.06.tcb               REPORTED_TCB equals the VCEK/VLEK SPL extensions (blSPL, teeSPL, snpSPL,
                           ucodeSPL, fmcSPL on Turin); VCEK hwID equals CHIP_ID (chip_id_mismatch)
  snp.07.report_signature  ECDSA P-384 over bytes 0x000-0x29F, r and s little-endian

Committed vs current vs launch TCB (provisional firmware) is a POLICY matter: the claims
expose all four TCB values and validation decides.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from conclave.runtime.attestation import snp_certs, snp_collateral, snp_report
from conclave.runtime.attestation.core import (
    _ISSUER, Reason, StepLog, TeeType, VerificationFailed, VerifiedEvidence,
)
from conclave.runtime.attestation.snp_certs import CertError, Role, role_of
from conclave.runtime.attestation.snp_collateral import SnpCollateral
from conclave.runtime.attestation.snp_der import AmdCert, DerError
from conclave.runtime.attestation.snp_report import PRODUCTS, ParsedSnpReport, decode_tcb

TEE = TeeType.SNP

__all__ = ["TEE", "looks_like", "parse", "claims", "load_collateral", "verify",
           "ParsedSnpReport", "SnpCollateral"]

STEP_PARSE = "snp.01.parse"
STEP_ARK = "snp.02.ark"
STEP_ASK = "snp.03.ask"
STEP_CRL = "snp.04.crl"
STEP_EK = "snp.05.endorsement_key"
STEP_TCB = "snp.06.tcb"
STEP_SIGNATURE = "snp.07.report_signature"

_P384_ORDER = int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
                  "581a0db248b0a77aecec196accc52973", 16)


def looks_like(data: bytes) -> bool:
    return snp_report.looks_like(data)


def parse(data: bytes) -> ParsedSnpReport:
    return snp_report.parse(data)


def load_collateral(path: Path) -> SnpCollateral:
    return snp_collateral.load_collateral(path)


def claims(parsed: ParsedSnpReport, product: str | None = None) -> dict[str, Any]:
    """Normalized claims. `product` (resolved by verification from the chain) overrides the
    CPUID-derived one; without either (a v2 report, unverified) it is None and the TCB values are
    read in the Milan/Genoa layout."""
    product = product or parsed.cpuid_product
    p = parsed.policy
    pi = parsed.platform_info
    out: dict[str, Any] = {
        "version": parsed.version,
        "report_data": parsed.report_data,
        "debug": parsed.debug,
        "tcb_status": None,
        "measurement": parsed.measurement,
        "host_data": parsed.host_data,
        "chip_id": parsed.chip_id,
        "vmpl": parsed.vmpl,
        "policy": p,
        "guest_svn": parsed.guest_svn,
        "family_id": parsed.family_id,
        "image_id": parsed.image_id,
        "id_key_digest": parsed.id_key_digest,
        "author_key_digest": parsed.author_key_digest,
        "report_id": parsed.report_id,
        "report_id_ma": parsed.report_id_ma,
        "signing_key": parsed.signing_key,
        "signature_algo": parsed.signature_algo,
        "product": product,
        "reported_tcb": decode_tcb(parsed.reported_tcb_raw, product),
        "committed_tcb": decode_tcb(parsed.committed_tcb_raw, product),
        "current_tcb": decode_tcb(parsed.current_tcb_raw, product),
        "launch_tcb": decode_tcb(parsed.launch_tcb_raw, product),
        "platform_info": pi,
        "smt_enabled": bool(pi & 1),
        "tsme_enabled": bool(pi >> 1 & 1),
        "ecc_enabled": bool(pi >> 2 & 1),
        "rapl_disabled": bool(pi >> 3 & 1),
        "ciphertext_hiding_enabled": bool(pi >> 4 & 1),
        "policy_abi_major": p >> 8 & 0xFF,
        "policy_abi_minor": p & 0xFF,
        "policy_smt_allowed": bool(p >> snp_report.POLICY_SMT_BIT & 1),
        "policy_migrate_ma_allowed": bool(p >> snp_report.POLICY_MIGRATE_MA_BIT & 1),
        "policy_single_socket": bool(p >> snp_report.POLICY_SINGLE_SOCKET_BIT & 1),
        "mask_chip_id": parsed.mask_chip_id,
        "author_key_en": parsed.author_key_en,
        "current_firmware": "%d.%d.%d" % parsed.current_version,
        "committed_firmware": "%d.%d.%d" % parsed.committed_version,
    }
    if parsed.cpuid_fam_mod_step is not None:
        fam, mod, step = parsed.cpuid_fam_mod_step
        out.update(cpuid_family=fam, cpuid_model=mod, cpuid_stepping=step)
    if parsed.launch_mit_vector is not None:
        out.update(launch_mit_vector=parsed.launch_mit_vector,
                   current_mit_vector=parsed.current_mit_vector)
    return out


def verify(parsed: ParsedSnpReport, *, at: datetime, certs: Sequence[Any] = (),
           collateral: object | None = None, nonce: bytes | None = None,
           trusted_roots: Sequence[x509.Certificate] | None = None,
           product: str | None = None) -> VerifiedEvidence:
    """Offline verification at `at` (see the module docstring for the steps).

    certs: x509.Certificate objects or raw PEM/DER bytes (the latter let callers avoid
    cryptography's serial-number-0 deprecation warning on AMD VCEKs). `product` is an optional
    hint ("milan" | "genoa" | "turin") for v2 reports that carry no CPUID; it must agree with
    CPUID and the chain. `nonce` is not used by SNP (binding goes through REPORT_DATA).
    """
    if not isinstance(parsed, ParsedSnpReport):
        raise TypeError("snp.verify expects the result of snp.parse")
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware (UTC)")
    if product is not None and product not in PRODUCTS:
        raise ValueError(f"unknown SNP product {product!r}; expected one of {PRODUCTS}")
    if collateral is not None and not isinstance(collateral, SnpCollateral):
        raise VerificationFailed(Reason.COLLATERAL_INVALID, "collateral is not SNP collateral")
    log = StepLog()
    notes: list[str] = []

    # snp.01: is this report verifiable at all; gather certificates.
    if parsed.signature_algo != snp_report.SIG_ALGO_ECDSA_P384_SHA384:
        raise log.fail(STEP_PARSE, Reason.UNSUPPORTED,
                       f"signature algorithm {parsed.signature_algo} is not ECDSA P-384 with SHA-384 (1)")
    if parsed.signing_key not in ("vcek", "vlek"):
        raise log.fail(STEP_PARSE, Reason.UNSUPPORTED, "report SIGNING_KEY says the report is not signed")
    cpuid_product = parsed.cpuid_product
    if product and cpuid_product and product != cpuid_product:
        raise log.fail(STEP_PARSE, Reason.CHAIN_UNTRUSTED,
                       f"product hint {product} contradicts the report's CPUID ({cpuid_product})")
    try:
        pool = snp_certs.as_amd_certs([*parsed.embedded_certs.values(), *certs,
                                       *(collateral.certs if collateral else ())])
    except CertError as exc:
        raise log.fail(STEP_PARSE, Reason.COLLATERAL_INVALID, str(exc)) from None
    log.ok(STEP_PARSE)

    ek_kind = parsed.signing_key
    inter_kind = "ask" if ek_kind == "vcek" else "asvk"
    product = product or cpuid_product
    ek = _choose_endorsement_key(parsed, snp_certs.pick(pool, ek_kind), product)
    if product is None:
        product = _product_from_chain(ek, pool, inter_kind)
    if product is None:
        raise log.fail(STEP_ARK, Reason.CERTS_MISSING,
                       "cannot tell the product (v2 report without CPUID): supply the "
                       f"{ek_kind.upper()} or its chain, or a product hint")

    # snp.02: the ARK.
    intermediates = snp_certs.pick(pool, inter_kind, product)
    if ek is not None:
        intermediates.sort(key=lambda c: c.subject_der != ek.issuer_der)
    inter = intermediates[0] if intermediates else None
    ark = _trusted_ark(log, product, trusted_roots, inter)
    if not ark.self_issued or not snp_certs.signature_ok(ark, ark):
        raise log.fail(STEP_ARK, Reason.SIGNATURE_INVALID, f"ARK-{product} self-signature is invalid")
    if not snp_certs.valid_at(ark, at):
        raise log.fail(STEP_ARK, Reason.CERT_EXPIRED, f"ARK-{product} is not valid at {at.isoformat()}")
    log.ok(STEP_ARK)

    # snp.03: ASK / ASVK.
    label = inter_kind.upper()
    if inter is None:
        raise log.fail(STEP_ASK, Reason.CERTS_MISSING, f"no {label} certificate for {product} supplied")
    if inter.issuer_der != ark.subject_der:
        raise log.fail(STEP_ASK, Reason.CHAIN_UNTRUSTED, f"{label} is not issued by ARK-{product}")
    if not snp_certs.signature_ok(inter, ark):
        raise log.fail(STEP_ASK, Reason.SIGNATURE_INVALID, f"{label} signature by the ARK is invalid")
    if not snp_certs.valid_at(inter, at):
        raise log.fail(STEP_ASK, Reason.CERT_EXPIRED, f"{label} is not valid at {at.isoformat()}")
    log.ok(STEP_ASK)

    # snp.04: KDS CRL.
    revocation_checked, revoked, crl_dates = _check_crls(log, collateral, ark, inter, at, notes)
    log.ok(STEP_CRL)

    # snp.05: VCEK / VLEK.
    ek_label = ek_kind.upper()
    if ek is None:
        raise log.fail(STEP_EK, Reason.CERTS_MISSING, f"no {ek_label} certificate supplied")
    if ek.issuer_der != inter.subject_der:
        raise log.fail(STEP_EK, Reason.CHAIN_UNTRUSTED, f"{ek_label} is not issued by the {label}")
    if not snp_certs.signature_ok(ek, inter):
        raise log.fail(STEP_EK, Reason.SIGNATURE_INVALID, f"{ek_label} signature by the {label} is invalid")
    if not snp_certs.valid_at(ek, at):
        raise log.fail(STEP_EK, Reason.CERT_EXPIRED, f"{ek_label} is not valid at {at.isoformat()}")
    ek_product = role_of(ek).product
    if ek_product is not None and ek_product != product:
        raise log.fail(STEP_EK, Reason.CHAIN_UNTRUSTED, f"{ek_label} is for {ek_product}, report is {product}")
    try:
        ek_key = ek.public_key()
    except (ValueError, TypeError):
        ek_key = None
    if not isinstance(ek_key, ec.EllipticCurvePublicKey) or not isinstance(ek_key.curve, ec.SECP384R1):
        raise log.fail(STEP_EK, Reason.CHAIN_UNTRUSTED, f"{ek_label} key is not ECDSA P-384")
    if ek.serial_number in revoked:
        raise log.fail(STEP_EK, Reason.CERT_REVOKED,
                       f"{ek_label} serial {ek.serial_number:#x} is revoked by the ARK's CRL")
    log.ok(STEP_EK)

    # snp.06: TCB and chip ID.
    problem = _tcb_problem(parsed, ek, product)
    if problem:
        raise log.fail(STEP_TCB, Reason.TCB_MISMATCH, problem)
    if ek_kind == "vcek":
        problem = _chip_id_problem(parsed, ek, product, notes)
        if problem:
            raise log.fail(STEP_TCB, Reason.CHIP_ID_MISMATCH, problem)
    log.ok(STEP_TCB)

    # snp.07: the report signature.
    r = int.from_bytes(parsed.signature_r, "little")
    s = int.from_bytes(parsed.signature_s, "little")
    if not (0 < r < _P384_ORDER and 0 < s < _P384_ORDER):
        raise log.fail(STEP_SIGNATURE, Reason.SIGNATURE_INVALID, "report signature r/s out of range")
    try:
        ek_key.verify(encode_dss_signature(r, s), parsed.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise log.fail(STEP_SIGNATURE, Reason.SIGNATURE_INVALID,
                       f"report signature does not verify with the {ek_label}") from None
    log.ok(STEP_SIGNATURE)

    out = claims(parsed, product)
    csp = ek.extensions.get(snp_certs.OID_CSP_ID)
    if csp is not None:
        try:
            out["csp_id"] = snp_certs.decode_extension_string(csp)
        except DerError:
            pass
    return VerifiedEvidence(
        tee=TEE, report_data=parsed.report_data, claims=out, verified_at=at, simulated=False,
        steps=tuple(log.steps), tcb_status=None, revocation_checked=revocation_checked,
        notes=tuple(notes), _issuer=_ISSUER,
        collateral_age_s=max(0.0, (at - min(crl_dates)).total_seconds()) if crl_dates else None,
    )


# ---------------------------------------------------------------- helpers

def _choose_endorsement_key(parsed: ParsedSnpReport, candidates: list[AmdCert],
                            product: str | None) -> AmdCert | None:
    """Among several VCEKs/VLEKs, prefer one whose SPLs (and hwID) match the report."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    for cert in candidates:
        p = product or role_of(cert).product
        if _tcb_problem(parsed, cert, p) is None and (
                parsed.signing_key == "vlek" or _chip_id_problem(parsed, cert, p, []) is None):
            return cert
    return candidates[0]


def _product_from_chain(ek: AmdCert | None, pool: list[AmdCert], inter_kind: str) -> str | None:
    if ek is not None:
        p = role_of(ek).product
        if p is not None:
            return p
        for c in pool:  # the EK's issuer names the product (SEV-Milan, SEV-VLEK-Genoa, ...)
            r = role_of(c)
            if r.kind == inter_kind and c.subject_der == ek.issuer_der:
                return r.product
        return None
    products = {role_of(c).product for c in pool if role_of(c).kind == inter_kind}
    return products.pop() if len(products) == 1 else None


def _trusted_ark(log: StepLog, product: str, trusted_roots: Sequence[Any] | None,
                 inter: AmdCert | None) -> AmdCert:
    if trusted_roots is None:
        try:
            return snp_certs.embedded_root(product)
        except (CertError, OSError) as exc:
            raise log.fail(STEP_ARK, Reason.CHAIN_UNTRUSTED, f"embedded ARK unusable: {exc}") from None
    try:
        roots = snp_certs.as_amd_certs(trusted_roots)
    except CertError as exc:
        raise log.fail(STEP_ARK, Reason.CHAIN_UNTRUSTED, f"trusted root unusable: {exc}") from None
    arks = [c for c in roots if role_of(c) == Role("ark", product)]
    if not arks:
        raise log.fail(STEP_ARK, Reason.CHAIN_UNTRUSTED, f"no trusted root for ARK-{product}")
    if inter is not None:  # the issuer named by the ASK/ASVK; step 03 checks name and signature
        arks.sort(key=lambda c: c.subject_der != inter.issuer_der)
    return arks[0]


def _check_crls(log: StepLog, collateral: SnpCollateral | None, ark: AmdCert, inter: AmdCert,
                at: datetime, notes: list[str]) -> tuple[bool, set[int], list[datetime]]:
    """(revocation checked, serials the ARK revoked, thisUpdate of each CRL used)."""
    crls = collateral.crls if collateral else ()
    if not crls:
        notes.append("no AMD KDS CRL supplied: ASK/ASVK revocation not checked")
        return False, set(), []
    mine = [c for c in crls if c.issuer.public_bytes() == ark.subject_der]
    if not mine:
        raise log.fail(STEP_CRL, Reason.COLLATERAL_INVALID, "no supplied CRL is issued by this ARK")
    revoked: set[int] = set()
    for crl in mine:
        if not snp_certs.crl_signed_by(crl, ark):
            raise log.fail(STEP_CRL, Reason.COLLATERAL_INVALID, "CRL signature by the ARK is invalid")
        if not snp_certs.crl_current(crl, at):
            raise log.fail(STEP_CRL, Reason.COLLATERAL_EXPIRED, f"CRL is not current at {at.isoformat()}")
        revoked |= snp_certs.revoked_serials(crl)
    if inter.serial_number in revoked:
        raise log.fail(STEP_CRL, Reason.CERT_REVOKED,
                       f"{role_of(inter).kind.upper()} serial {inter.serial_number:#x} is revoked")
    return True, revoked, [crl.last_update_utc for crl in mine]


def _tcb_problem(parsed: ParsedSnpReport, ek: AmdCert, product: str | None) -> str | None:
    reported = decode_tcb(parsed.reported_tcb_raw, product)
    try:
        certified = snp_certs.tcb_of(ek)
    except DerError as exc:
        return f"endorsement key SPL extension malformed: {exc}"
    for name, value in reported.items():
        if name not in certified:
            return f"endorsement key has no {name} SPL extension"
        if certified[name] != value:
            return f"REPORTED_TCB {name}={value} but the endorsement key certifies {certified[name]}"
    return None


def _chip_id_problem(parsed: ParsedSnpReport, ek: AmdCert, product: str | None,
                     notes: list[str]) -> str | None:
    try:
        hwid = snp_certs.hwid_of(ek)
    except DerError as exc:
        return str(exc)
    if hwid is None:
        return "VCEK has no hwID extension"
    if parsed.mask_chip_id:
        if any(parsed.chip_id):
            return "CHIP_ID is masked but not zero"
        notes.append("CHIP_ID masked by the host: VCEK hwID not compared (the signature still binds the chip)")
        return None
    if product == "turin" and len(hwid) != 8:
        return f"Turin hwID must be 8 bytes, got {len(hwid)}"
    expected = hwid + bytes(64 - len(hwid))
    if expected != parsed.chip_id:
        return "CHIP_ID differs from the VCEK hwID"
    return None
