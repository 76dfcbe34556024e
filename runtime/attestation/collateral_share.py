"""A node's own vendor-signed collateral, packed to travel with its evidence to its peers.

Why: while Intel's PCS or AMD's KDS is unreachable, a verifier that has never fetched the
collateral for a peer's platform (a restarted or newly joined node, an empty cache) could not
judge that peer at all. The peer holds the collateral for its own platform (its verifier's
CollateralCache fetched it, and keeps serving the cached copy while the vendor is down), so it
ships that copy in EvidenceItem.collateral. The receiving verifier treats it as untrusted
transport: collateral_merge uses a piece only after its own vendor signature checks, only where
it is fresher than the verifier's own, and never drops a piece; verification and policy still
judge nextUpdate and max_collateral_age, so a cluster lives on shared collateral only until
what it holds expires.

Shapes (what attestation.load_collateral_bytes reads back):
  TDX: one dcap-qvl QuoteCollateralV3 JSON (the exact signed TCB info / QE identity strings,
       raw r||s signatures in hex, CRLs as hex DER, chains as PEM).
  SNP: one PEM bundle: the certificates (VCEK/VLEK, ASK/ASVK, ARK) then the CRLs.
Pure functions, no I/O.
"""
from __future__ import annotations

import base64
import json
import textwrap

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conclave.runtime.attestation.core import TeeType
from conclave.runtime.attestation.snp_collateral import SnpCollateral
from conclave.runtime.attestation.tdx_collateral import TdxCollateral

MAX_SHARED_BYTES = 256 * 1024   # far above a real set (~20 KiB); a larger one is not shipped


def _pem_chain(chain) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)


def _crl_hex(crl: x509.CertificateRevocationList | None) -> str:
    return crl.public_bytes(serialization.Encoding.DER).hex() if crl is not None else ""


def tdx_to_bytes(c: TdxCollateral) -> bytes:
    return json.dumps({
        "tcb_info": c.tcb_info_raw.decode(), "tcb_info_signature": c.tcb_info_signature.hex(),
        "tcb_info_issuer_chain": _pem_chain(c.tcb_info_issuer_chain),
        "qe_identity": c.qe_identity_raw.decode(), "qe_identity_signature": c.qe_identity_signature.hex(),
        "qe_identity_issuer_chain": _pem_chain(c.qe_identity_issuer_chain),
        "pck_crl_issuer_chain": _pem_chain(c.pck_crl_issuer_chain),
        "pck_crl": _crl_hex(c.pck_crl), "root_ca_crl": _crl_hex(c.root_ca_crl),
    }, sort_keys=True).encode()


def _pem_block(label: str, der: bytes) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def snp_to_bytes(c: SnpCollateral) -> bytes:
    certs = "".join(_pem_block("CERTIFICATE", cert.der) for cert in c.certs)
    crls = "".join(crl.public_bytes(serialization.Encoding.PEM).decode() for crl in c.crls)
    return (certs + crls).encode()


def to_bytes(tee: TeeType | str, collateral: object | None) -> bytes:
    """The shareable form of this node's collateral; b"" when there is none to share (other
    formats, nothing held, or larger than MAX_SHARED_BYTES)."""
    tee = TeeType(tee)
    if tee == TeeType.TDX and isinstance(collateral, TdxCollateral):
        blob = tdx_to_bytes(collateral)
    elif tee == TeeType.SNP and isinstance(collateral, SnpCollateral):
        blob = snp_to_bytes(collateral)
    else:
        return b""
    return blob if len(blob) <= MAX_SHARED_BYTES else b""


__all__ = ["MAX_SHARED_BYTES", "to_bytes", "tdx_to_bytes", "snp_to_bytes"]
