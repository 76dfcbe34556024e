"""Combining the verifier's own collateral with collateral that travelled with evidence.

The rule (DESIGN.md, "The trust model"): carried collateral is vendor-signed, so it may help a
verifier that has nothing fresher (vendor unreachable, a peer shares its copy), but it is used
only after its own signatures check out against the verifier's trusted roots, only piece by
piece where it is strictly fresher than the verifier's own, and it can never remove a piece:
a carried set without CRLs leaves the verifier's CRLs in place (and with none at all,
revocation stays unchecked, which a production policy refuses).

Pieces: TDX: TCB info (+ signature + issuer chain), QE identity (likewise), PCK CRL, Root CA
CRL. SNP: certificates (never trust-bearing: the chain is checked in verification) and CRLs.
Pure functions, no I/O, no clock (`at` is the verification time).
"""
from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Sequence

from cryptography import x509

from conclave.runtime.attestation import snp_certs, tdx
from conclave.runtime.attestation.core import TeeType
from conclave.runtime.attestation.snp_collateral import SnpCollateral
from conclave.runtime.attestation.tdx_collateral import TdxCollateral


def merge(tee: TeeType | str, own: object | None, carried: object | None, *, at: datetime,
          trusted_roots: Sequence[x509.Certificate] | None = None) -> object | None:
    tee = TeeType(tee)
    if carried is None:
        return own
    if tee == TeeType.TDX and isinstance(carried, TdxCollateral):
        return merge_tdx(own if isinstance(own, TdxCollateral) else None, carried, at=at,
                         roots=list(trusted_roots) if trusted_roots is not None else [tdx.intel_root()])
    if tee == TeeType.SNP and isinstance(carried, SnpCollateral):
        return merge_snp(own if isinstance(own, SnpCollateral) else None, carried, trusted_roots=trusted_roots)
    return own if own is not None else carried   # other formats: verification checks what it gets


# ------------------------------------------------------------------------------ TDX

def _tcb_signer_ok(chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], at: datetime):
    for cert in chain:
        if "TCB Signing" in tdx._cn(cert) and not tdx._is_ca(cert) and tdx._root_for(cert, roots) is not None \
                and cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            return cert
    return None


def _tcb_info_ok(c: TdxCollateral, roots, at) -> bool:
    signer = _tcb_signer_ok(c.tcb_info_issuer_chain, roots, at)
    return signer is not None and tdx._ecdsa_ok(signer.public_key(), c.tcb_info_signature, c.tcb_info_raw)


def _qe_identity_ok(c: TdxCollateral, roots, at) -> bool:
    signer = _tcb_signer_ok(c.qe_identity_issuer_chain or c.tcb_info_issuer_chain, roots, at)
    return signer is not None and tdx._ecdsa_ok(signer.public_key(), c.qe_identity_signature, c.qe_identity_raw)


def _crl_signed(crl: x509.CertificateRevocationList, issuers: Sequence[x509.Certificate]) -> bool:
    for issuer in issuers:
        if crl.issuer == issuer.subject:
            try:
                if crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                    return True
            except (TypeError, ValueError):
                continue
    return False


def _pck_ca_candidates(c: TdxCollateral, roots) -> list[x509.Certificate]:
    return [ca for ca in c.pck_crl_issuer_chain if tdx._is_ca(ca) and tdx._root_for(ca, roots) is not None]


def _newer(a: tuple, b: tuple) -> bool:
    return a > b


def merge_tdx(own: TdxCollateral | None, carried: TdxCollateral, *, at: datetime,
              roots: Sequence[x509.Certificate]) -> TdxCollateral | None:
    """Own pieces, replaced by a carried piece only where that piece verifies and is fresher."""
    tcb_ok = _tcb_info_ok(carried, roots, at)
    qe_ok = _qe_identity_ok(carried, roots, at)
    if own is None:
        if not (tcb_ok and qe_ok):
            return None   # nothing trustworthy to build on: verification runs without collateral
        base = dataclasses.replace(carried, pck_crl=None, root_ca_crl=None, _sig_cache={})
    else:
        base = dataclasses.replace(own, _sig_cache={})
        info, mine = carried.tcb_info, own.tcb_info
        if tcb_ok and _newer((info.tcb_evaluation_data_number, info.issue_date),
                             (mine.tcb_evaluation_data_number, mine.issue_date)):
            base = dataclasses.replace(base, tcb_info_raw=carried.tcb_info_raw, tcb_info=carried.tcb_info,
                                       tcb_info_signature=carried.tcb_info_signature,
                                       tcb_info_issuer_chain=carried.tcb_info_issuer_chain)
        if qe_ok and carried.qe_identity.issue_date > own.qe_identity.issue_date:
            base = dataclasses.replace(base, qe_identity_raw=carried.qe_identity_raw,
                                       qe_identity=carried.qe_identity,
                                       qe_identity_signature=carried.qe_identity_signature,
                                       qe_identity_issuer_chain=carried.qe_identity_issuer_chain
                                       or carried.tcb_info_issuer_chain)
    if carried.pck_crl is not None and _crl_signed(carried.pck_crl, _pck_ca_candidates(carried, roots)) and (
            base.pck_crl is None or carried.pck_crl.last_update_utc > base.pck_crl.last_update_utc):
        base = dataclasses.replace(base, pck_crl=carried.pck_crl, pck_crl_issuer_chain=carried.pck_crl_issuer_chain)
    if carried.root_ca_crl is not None and _crl_signed(carried.root_ca_crl, roots) and (
            base.root_ca_crl is None or carried.root_ca_crl.last_update_utc > base.root_ca_crl.last_update_utc):
        base = dataclasses.replace(base, root_ca_crl=carried.root_ca_crl)
    return dataclasses.replace(base, source="merged", _sig_cache={})


# ------------------------------------------------------------------------------ SNP

def _arks(trusted_roots) -> list:
    if trusted_roots is not None:
        try:
            return [c for c in snp_certs.as_amd_certs(trusted_roots) if snp_certs.role_of(c).kind == "ark"]
        except snp_certs.CertError:
            return []
    out = []
    for product in snp_certs.FINGERPRINTS:
        try:
            out.append(snp_certs.embedded_root(product))
        except (snp_certs.CertError, OSError):
            continue
    return out


def merge_snp(own: SnpCollateral | None, carried: SnpCollateral, *, trusted_roots=None) -> SnpCollateral:
    """Certificates: the union. CRLs: per issuing ARK the newest one that a trusted ARK signed."""
    arks = _arks(trusted_roots)
    best: dict[bytes, x509.CertificateRevocationList] = {}
    for crl in (own.crls if own else ()):
        key = crl.issuer.public_bytes()
        if key not in best or crl.last_update_utc > best[key].last_update_utc:
            best[key] = crl
    for crl in carried.crls:
        key = crl.issuer.public_bytes()
        if not any(snp_certs.crl_signed_by(crl, ark) for ark in arks):
            continue
        if key not in best or crl.last_update_utc > best[key].last_update_utc:
            best[key] = crl
    certs = list(own.certs if own else ()) + [c for c in carried.certs
                                              if c.fingerprint not in {o.fingerprint for o in (own.certs if own else ())}]
    return SnpCollateral(tuple(certs), tuple(best.values()))


__all__ = ["merge", "merge_tdx", "merge_snp"]
