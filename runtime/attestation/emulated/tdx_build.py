"""Byte-level builders for Intel TDX evidence and collateral (certificates, CRLs, quotes, PCS JSON).

Why here: the same serialisation serves the committed test vectors (tests/data/tdx/make_vectors.py)
and the per-cluster emulated hardware (tdx_issuer), so both produce exactly what Intel's
hardware and PCS produce and the real verifier (tdx.py) checks them unchanged. These builders
are written from Intel's specifications, independently of the parser under test:
- quote v4 / v5 (body type 3): "Intel TDX DCAP Quoting Library API", appendix "Quote Format";
  certification data type 6 (QE report certification data) wrapping type 5 (PCK chain, PEM).
- PCK certificate SGX extensions: "SGX PCK Certificate and CRL Profile".
- TCB info v3 (id TDX) and QE identity v2 (id TD_QE): Intel PCS API v4; signatures are raw
  ECDSA P-256 r||s over the exact bytes of the "tcbInfo" / "enclaveIdentity" value.
Nothing here does I/O; private keys are arguments and are never serialised.
"""
from __future__ import annotations

import hashlib
import json
import struct
from datetime import datetime
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

SGX_OID = "1.2.840.113741.1.13.1"
QE_VENDOR_ID_INTEL = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
TEE_TYPE_TDX = 0x81
ATT_KEY_TYPE_ECDSA_P256 = 2
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6
# Intel's QE attribute mask and value (PCS TD_QE identity), as real quoting enclaves carry.
QE_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")
QE_CPUSVN = bytes([3, 3, 0x19, 0x1B, 4, 0xFF, 0, 3]) + bytes(8)


def derive_p256(namespace: bytes, label: str) -> ec.EllipticCurvePrivateKey:
    """A deterministic P-256 key from a label (for reproducible committed test vectors only)."""
    scalar = int.from_bytes(hashlib.sha256(namespace + label.encode()).digest(), "big")
    return ec.derive_private_key(scalar % (2**256 - 2**224) + 1, ec.SECP256R1())


def sign_raw(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 as Intel encodes it: raw r||s, 32 bytes each (RFC 6979 nonces)."""
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_pub(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 64-byte x||y public key, as the quote's attestation key field holds it."""
    return key.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)[1:]


# ------------------------------------------------------------------------------ DER

def der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + body


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return der(0x06, bytes(out))


def der_int(v: int, tag: int = 0x02) -> bytes:
    return der(tag, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big"))


def _pair(oid: str, value: bytes) -> bytes:
    return der(0x30, der_oid(oid) + value)


def sgx_extension(*, components: Sequence[int], pce_svn: int, fmspc: bytes, pce_id: bytes,
                  ppid: bytes, sgx_type: int = 0) -> bytes:
    """Intel's SGX extension value (PPID, TCB components + PCESVN + CPUSVN, PCE-ID, FMSPC, type)."""
    tcb = b"".join(_pair(f"{SGX_OID}.2.{i + 1}", der_int(c)) for i, c in enumerate(components))
    tcb += _pair(f"{SGX_OID}.2.17", der_int(pce_svn)) + _pair(f"{SGX_OID}.2.18", der(0x04, bytes(components)))
    return der(0x30, b"".join([
        _pair(f"{SGX_OID}.1", der(0x04, ppid)),
        _pair(f"{SGX_OID}.2", der(0x30, tcb)),
        _pair(f"{SGX_OID}.3", der(0x04, pce_id)),
        _pair(f"{SGX_OID}.4", der(0x04, fmspc)),
        _pair(f"{SGX_OID}.5", der_int(sgx_type, 0x0A)),
    ]))


# ------------------------------------------------------------------------------ X.509

def name(cn: str, organization: str = "Conclave Test") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
                      x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
                      x509.NameAttribute(NameOID.COUNTRY_NAME, "US")])


def certificate(subject: x509.Name, subject_key, issuer: x509.Name, issuer_key, serial: int, *, ca: bool,
                not_before: datetime, not_after: datetime,
                extra: Iterable[x509.ExtensionType] = ()) -> x509.Certificate:
    """An Intel-shaped certificate (ECDSA-SHA256, basic constraints, key usage, SKI/AKI)."""
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(subject_key.public_key()).serial_number(serial)
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca and subject != issuer else None), True)
         .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=not ca, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                      encipher_only=False, decipher_only=False), True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False))
    for ext in extra:
        b = b.add_extension(ext, False)
    return b.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)


def pck_sgx_extension(value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), value)


def revocation_list(issuer: x509.Name, issuer_key, revoked_serials: Iterable[int], *, last: datetime,
                    nxt: datetime, number: int = 1) -> x509.CertificateRevocationList:
    """A CRL shaped like Intel's (CRL number and AKI extensions)."""
    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer)
         .last_update(last).next_update(nxt)
         .add_extension(x509.CRLNumber(number), False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False))
    for serial in revoked_serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(last).build())
    return b.sign(issuer_key, hashes.SHA256(), ecdsa_deterministic=True)


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


# ------------------------------------------------------------------------------ quotes

def qe_report(report_data: bytes, *, mr_signer: bytes, isv_prod_id: int = 2, isv_svn: int = 7,
              mr_enclave: bytes = hashlib.sha256(b"qe mrenclave").digest()) -> bytes:
    """The 384-byte SGX report of the TD quoting enclave."""
    out = (QE_CPUSVN + struct.pack("<I", 0) + bytes(28)          # cpusvn, miscselect, reserved
           + QE_ATTRIBUTES + mr_enclave + bytes(32)              # attributes, mrenclave, reserved
           + mr_signer + bytes(96)                               # mrsigner, reserved
           + struct.pack("<HH", isv_prod_id, isv_svn) + bytes(60)
           + report_data)
    assert len(out) == 384
    return out


def td_body(*, tee_tcb_svn: bytes, mr_seam: bytes, mr_signer_seam: bytes, td_attributes: bytes, xfam: bytes,
            mr_td: bytes, mr_config_id: bytes, mr_owner: bytes, mr_owner_config: bytes,
            rtmrs: Sequence[bytes], report_data: bytes, tdx15: bool = False,
            seam_attributes: bytes = bytes(8)) -> bytes:
    """TD report body v4 (584 bytes) or, with tdx15, v5 type 3 (+TEE_TCB_SVN2, MRSERVICETD)."""
    body = (tee_tcb_svn + mr_seam + mr_signer_seam + seam_attributes + td_attributes + xfam + mr_td
            + mr_config_id + mr_owner + mr_owner_config + b"".join(rtmrs) + report_data)
    if tdx15:
        body += tee_tcb_svn + bytes(48)  # TEE_TCB_SVN2, MRSERVICETD (no service TD bound)
    return body


def quote_header(version: int, user_data: bytes) -> bytes:
    return (struct.pack("<HHI", version, ATT_KEY_TYPE_ECDSA_P256, TEE_TYPE_TDX) + bytes(4)
            + QE_VENDOR_ID_INTEL + user_data)


def quote(*, version: int, header: bytes, body: bytes, pck_chain_pem: str, report: bytes,
          pck_key: ec.EllipticCurvePrivateKey, att_key: ec.EllipticCurvePrivateKey,
          quote_signer: ec.EllipticCurvePrivateKey | None = None, auth: bytes = bytes(range(32)),
          trailing: bytes = b"") -> bytes:
    """Assemble and sign a quote: header+body signed by the attestation key; QE report (which
    must already bind the attestation key, see qe_report_data_for) signed by the PCK key."""
    signed = header + body if version == 4 else header + struct.pack("<HI", 3, len(body)) + body
    chain = pck_chain_pem.encode() + b"\x00"
    inner = struct.pack("<HI", CERT_DATA_PCK_CHAIN, len(chain)) + chain
    cert_data = report + sign_raw(pck_key, report) + struct.pack("<H", len(auth)) + auth + inner
    sig = sign_raw(quote_signer or att_key, signed)
    sig_data = sig + raw_pub(att_key) + struct.pack("<HI", CERT_DATA_QE_REPORT, len(cert_data)) + cert_data
    return signed + struct.pack("<I", len(sig_data)) + sig_data + trailing


def qe_report_data_for(att_key: ec.EllipticCurvePrivateKey, auth: bytes = bytes(range(32))) -> bytes:
    """QE REPORTDATA = SHA-256(attestation key || QE auth data) || 32 zero bytes."""
    return hashlib.sha256(raw_pub(att_key) + auth).digest() + bytes(32)


# ------------------------------------------------------------------------------ collateral JSON

def iso(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def tcb_level(sgx: Sequence[int], pce: int, tdx: Sequence[int], status: str, date: str,
              advisories: Sequence[str] = ()) -> dict:
    level = {"tcb": {"sgxtcbcomponents": [{"svn": s} for s in sgx], "pcesvn": pce,
                     "tdxtcbcomponents": [{"svn": s} for s in tdx]},
             "tcbDate": date, "tcbStatus": status}
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def compact(d: dict) -> str:
    """The JSON text that is signed and served (Intel's PCS serves compact JSON)."""
    return json.dumps(d, separators=(",", ":"))


def pcs_signed_response(member: str, body_text: str, signature: bytes) -> bytes:
    """A PCS v4 response body: {"<member>": <signed JSON>, "signature": "<hex r||s>"}."""
    return ('{"' + member + '":' + body_text + ',"signature":"' + signature.hex() + '"}').encode()
