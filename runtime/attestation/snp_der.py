"""A small, strict X.509 reader for the certificates of the AMD SEV-SNP chain (on der.py).

Why our own reader: AMD's KDS issues VCEKs with serial number 0 (go-sev-guest's test VCEK is
one). RFC 5280 forbids that, and `cryptography` already warns that loading such a certificate
"will cause an exception in a future release". Verification must not break on a library
upgrade, and suppressing a warning process-wide is not ours to do. So every SNP certificate
(ARK, ASK/ASVK, VCEK/VLEK) is read here into `AmdCert`: only the fields verification needs,
with every length bounded. `cryptography` is used only for the public key (SubjectPublicKeyInfo)
and for the signature arithmetic. All fields we use come from the signed TBSCertificate.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from conclave.runtime.attestation.der import (
    TAG_BIT_STRING, TAG_BOOLEAN, TAG_INTEGER, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE, TAG_SET,
    DerError, children, decode_integer, decode_oid, decode_string, decode_time, expect, oid_and_value,
    read_single,
)

# DerError is re-exported: SNP callers catch it from here and map it to their reasons.
__all__ = ["AmdCert", "DerError", "SignatureAlgorithm", "decode_extension_integer",
           "decode_extension_string", "parse_certificate"]

OID_COMMON_NAME = "2.5.4.3"
OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_SHA384 = "2.16.840.1.101.3.4.2.2"
OID_SHA512 = "2.16.840.1.101.3.4.2.3"
OID_ECDSA_SHA384 = "1.2.840.10045.4.3.3"

MAX_CERT_BYTES = 16 * 1024


def common_name(data: bytes, start: int, end: int) -> str | None:
    """CN of a Name (SEQUENCE OF SET OF AttributeTypeAndValue), None when absent."""
    cn = None
    for tag, _, rs, re_ in children(data, start, end):
        if tag != TAG_SET:
            raise DerError("Name must hold SETs")
        for atag, _, as_, ae in children(data, rs, re_):
            if atag != TAG_SEQUENCE:
                raise DerError("RDN must hold SEQUENCEs")
            oid, (vtag, vs, ve) = oid_and_value(data, as_, ae)  # AttributeTypeAndValue
            if oid == OID_COMMON_NAME:
                cn = decode_string(vtag, data[vs:ve])
    return cn


@dataclass(frozen=True)
class SignatureAlgorithm:
    """The certificate's signatureAlgorithm: RSASSA-PSS (hash, mgf1 hash, salt) or ECDSA-SHA384."""

    oid: str
    hash_oid: str | None = None
    mgf_hash_oid: str | None = None
    salt_length: int | None = None


def parse_pss_params(data: bytes, start: int, end: int) -> SignatureAlgorithm:
    """RSASSA-PSS-params with the RFC 4055 defaults (SHA-1, MGF1-SHA-1, salt 20) when omitted."""
    hash_oid, mgf_hash, salt = "1.3.14.3.2.26", "1.3.14.3.2.26", 20
    for tag, _, vs, ve in children(data, start, end):
        if tag == 0xA0:
            s, e = expect(data, vs, ve, TAG_SEQUENCE)
            o, oe = expect(data, s, e, TAG_OID)
            hash_oid = decode_oid(data[o:oe])
        elif tag == 0xA1:
            s, e = expect(data, vs, ve, TAG_SEQUENCE)
            o, oe = expect(data, s, e, TAG_OID)
            if decode_oid(data[o:oe]) != OID_MGF1:
                raise DerError("PSS mask generation must be MGF1")
            hs, he = expect(data, oe, e, TAG_SEQUENCE)
            o2, o2e = expect(data, hs, he, TAG_OID)
            mgf_hash = decode_oid(data[o2:o2e])
        elif tag == 0xA2:
            s, e = expect(data, vs, ve, TAG_INTEGER)
            salt = decode_integer(data[s:e])
            if not 0 <= salt <= 512:
                raise DerError("PSS salt length out of range")
        elif tag == 0xA3:
            s, e = expect(data, vs, ve, TAG_INTEGER)
            if decode_integer(data[s:e]) != 1:
                raise DerError("PSS trailer field must be 1")
        else:
            raise DerError("unexpected field in RSASSA-PSS-params")
    return SignatureAlgorithm(OID_RSASSA_PSS, hash_oid, mgf_hash, salt)


def parse_algorithm(data: bytes, start: int, end: int) -> SignatureAlgorithm:
    o, oe = expect(data, start, end, TAG_OID)
    oid = decode_oid(data[o:oe])
    if oid == OID_RSASSA_PSS:
        ps, pe = expect(data, oe, end, TAG_SEQUENCE)
        if pe != end:
            raise DerError("trailing bytes after PSS parameters")
        return parse_pss_params(data, ps, pe)
    if oid == OID_ECDSA_SHA384:
        if oe != end:
            raise DerError("ECDSA algorithm identifier takes no parameters")
        return SignatureAlgorithm(oid, OID_SHA384)
    return SignatureAlgorithm(oid)


@dataclass(frozen=True, eq=False)
class AmdCert:
    """The fields of one X.509 certificate that SNP verification uses. Built by parse_certificate."""

    der: bytes
    tbs: bytes
    serial_number: int
    signature_algorithm: SignatureAlgorithm
    signature: bytes
    issuer_der: bytes
    subject_der: bytes
    issuer_cn: str | None
    subject_cn: str | None
    not_before: datetime
    not_after: datetime
    spki_der: bytes
    extensions: dict[str, bytes]
    fingerprint: bytes = field(repr=False)  # SHA-256 of the DER encoding
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def self_issued(self) -> bool:
        return self.issuer_der == self.subject_der

    def public_key(self) -> Any:
        """The cryptography public key object (loaded once)."""
        key = self._cache.get("public_key")
        if key is None:
            from cryptography.hazmat.primitives.serialization import load_der_public_key
            key = load_der_public_key(self.spki_der)
            self._cache["public_key"] = key
        return key


def parse_certificate(der: bytes) -> AmdCert:
    """Reads one DER certificate; raises DerError on anything malformed or out of bounds."""
    der = bytes(der)
    if len(der) > MAX_CERT_BYTES:
        raise DerError("certificate too large")
    cs, ce = expect(der, 0, len(der), TAG_SEQUENCE)
    if ce != len(der):
        raise DerError("trailing bytes after certificate")
    parts = children(der, cs, ce)
    if len(parts) != 3 or parts[0][0] != TAG_SEQUENCE or parts[1][0] != TAG_SEQUENCE \
            or parts[2][0] != TAG_BIT_STRING:
        raise DerError("certificate must be SEQUENCE { tbs, algorithm, signature }")
    _, tbs_start, ts, te = parts[0]
    tbs = der[tbs_start:te]
    outer_alg_bytes = der[parts[1][2]:parts[1][3]]
    sig_value = der[parts[2][2]:parts[2][3]]
    if not sig_value or sig_value[0] != 0:
        raise DerError("signature BIT STRING must have no unused bits")
    signature = sig_value[1:]

    fields = children(der, ts, te)
    idx = 0
    if fields and fields[0][0] == 0xA0:  # [0] EXPLICIT version
        vs, ve = expect(der, fields[0][2], fields[0][3], TAG_INTEGER)
        if decode_integer(der[vs:ve]) != 2:
            raise DerError("only X.509 v3 certificates are used by AMD")
        idx = 1
    else:
        raise DerError("X.509 v3 certificate required (extensions carry the TCB)")
    need = fields[idx:idx + 6]
    if len(need) < 6:
        raise DerError("TBSCertificate too short")
    (serial_t, _, ss, se), (alg_t, _, as_, ae), (iss_t, iss_el, is_, ie), (val_t, _, vs_, ve_), \
        (sub_t, sub_el, su_s, su_e), (spki_t, spki_el, _, spki_e) = need
    if (serial_t, alg_t, iss_t, val_t, sub_t, spki_t) != (
            TAG_INTEGER, TAG_SEQUENCE, TAG_SEQUENCE, TAG_SEQUENCE, TAG_SEQUENCE, TAG_SEQUENCE):
        raise DerError("TBSCertificate fields out of order")
    if der[as_:ae] != outer_alg_bytes:
        raise DerError("inner and outer signature algorithms differ")
    algorithm = parse_algorithm(der, as_, ae)
    validity = children(der, vs_, ve_)
    if len(validity) != 2:
        raise DerError("validity must hold two times")
    not_before = decode_time(validity[0][0], der[validity[0][2]:validity[0][3]])
    not_after = decode_time(validity[1][0], der[validity[1][2]:validity[1][3]])

    extensions: dict[str, bytes] = {}
    for tag, _, xs, xe in fields[idx + 6:]:
        if tag in (0x81, 0x82):  # issuerUniqueID / subjectUniqueID
            continue
        if tag != 0xA3:
            raise DerError("unexpected element in TBSCertificate")
        es, ee = expect(der, xs, xe, TAG_SEQUENCE)
        if ee != xe:
            raise DerError("trailing bytes after extensions")
        for etag, _, ext_s, ext_e in children(der, es, ee):
            if etag != TAG_SEQUENCE:
                raise DerError("extension must be a SEQUENCE")
            items = children(der, ext_s, ext_e)
            if len(items) not in (2, 3) or items[0][0] != TAG_OID or items[-1][0] != TAG_OCTET_STRING:
                raise DerError("bad extension")
            if len(items) == 3 and items[1][0] != TAG_BOOLEAN:
                raise DerError("bad extension criticality")
            oid = decode_oid(der[items[0][2]:items[0][3]])
            if oid in extensions:
                raise DerError(f"duplicate extension {oid}")
            extensions[oid] = der[items[-1][2]:items[-1][3]]

    return AmdCert(
        der=der, tbs=tbs, serial_number=decode_integer(der[ss:se]),
        signature_algorithm=algorithm, signature=signature,
        issuer_der=der[iss_el:ie], subject_der=der[sub_el:su_e],
        issuer_cn=common_name(der, is_, ie), subject_cn=common_name(der, su_s, su_e),
        not_before=not_before, not_after=not_after, spki_der=der[spki_el:spki_e],
        extensions=extensions, fingerprint=hashlib.sha256(der).digest(),
    )


def decode_extension_integer(value: bytes) -> int:
    """An AMD SPL extension value: a DER INTEGER (0..255 in practice)."""
    tag, s, e = read_single(value)
    if tag != TAG_INTEGER:
        raise DerError(f"expected DER tag 0x{TAG_INTEGER:02x}, got 0x{tag:02x}")
    return decode_integer(value[s:e])


def decode_extension_string(value: bytes) -> str:
    tag, s, e = read_single(value)
    return decode_string(tag, value[s:e])
