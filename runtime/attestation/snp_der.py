"""A small, strict DER reader for the X.509 certificates of the AMD SEV-SNP chain.

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
from datetime import datetime, timezone
from typing import Any

# Universal tags used below.
TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_UTF8 = 0x0C
TAG_PRINTABLE = 0x13
TAG_IA5 = 0x16
TAG_UTCTIME = 0x17
TAG_GENERALIZEDTIME = 0x18
TAG_SEQUENCE = 0x30
TAG_SET = 0x31

OID_COMMON_NAME = "2.5.4.3"
OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_SHA384 = "2.16.840.1.101.3.4.2.2"
OID_SHA512 = "2.16.840.1.101.3.4.2.3"
OID_ECDSA_SHA384 = "1.2.840.10045.4.3.3"

MAX_CERT_BYTES = 16 * 1024


class DerError(ValueError):
    """The bytes are not the DER structure we expect (callers map this to their own reason)."""


def read_tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Returns (tag, value_start, value_end) of the element at `pos`, bounded by `end`."""
    if pos + 2 > end:
        raise DerError("truncated DER header")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte DER tags are not used in these certificates")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 3:
            raise DerError("unsupported DER length form")
        if pos + count > end:
            raise DerError("truncated DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        if length < 0x80 or (count > 1 and data[pos] == 0):
            raise DerError("non-minimal DER length")
        pos += count
    if pos + length > end:
        raise DerError("DER length runs past its container")
    return tag, pos, pos + length


def children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """All elements between start and end: (tag, element_start, value_start, value_end)."""
    out = []
    pos = start
    while pos < end:
        tag, vs, ve = read_tlv(data, pos, end)
        out.append((tag, pos, vs, ve))
        pos = ve
    return out


def expect(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    got, vs, ve = read_tlv(data, pos, end)
    if got != tag:
        raise DerError(f"expected DER tag 0x{tag:02x}, got 0x{got:02x}")
    return vs, ve


def decode_oid(value: bytes) -> str:
    if not value or value[-1] & 0x80:
        raise DerError("bad OID encoding")
    arcs: list[int] = []
    acc = 0
    for b in value:
        acc = (acc << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(acc)
            acc = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def decode_integer(value: bytes) -> int:
    if not value:
        raise DerError("empty INTEGER")
    return int.from_bytes(value, "big", signed=True)


def decode_time(tag: int, value: bytes) -> datetime:
    try:
        text = value.decode("ascii")
        if tag == TAG_UTCTIME:
            if len(text) != 13 or not text.endswith("Z"):
                raise DerError("UTCTime must be YYMMDDHHMMSSZ")
            year = int(text[0:2])
            year += 2000 if year < 50 else 1900
            rest = text[2:12]
        elif tag == TAG_GENERALIZEDTIME:
            if len(text) != 15 or not text.endswith("Z"):
                raise DerError("GeneralizedTime must be YYYYMMDDHHMMSSZ")
            year = int(text[0:4])
            rest = text[4:14]
        else:
            raise DerError("validity must be UTCTime or GeneralizedTime")
        return datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]),
                        int(rest[8:10]), tzinfo=timezone.utc)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, DerError):
            raise
        raise DerError(f"bad time value: {exc}") from None


def decode_string(tag: int, value: bytes) -> str:
    if tag not in (TAG_UTF8, TAG_PRINTABLE, TAG_IA5):
        raise DerError(f"unexpected string tag 0x{tag:02x}")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DerError("bad string encoding") from None


def common_name(data: bytes, start: int, end: int) -> str | None:
    """CN of a Name (SEQUENCE OF SET OF AttributeTypeAndValue), None when absent."""
    cn = None
    for tag, _, rs, re_ in children(data, start, end):
        if tag != TAG_SET:
            raise DerError("Name must hold SETs")
        for atag, _, as_, ae in children(data, rs, re_):
            if atag != TAG_SEQUENCE:
                raise DerError("RDN must hold SEQUENCEs")
            parts = children(data, as_, ae)
            if len(parts) != 2 or parts[0][0] != TAG_OID:
                raise DerError("bad AttributeTypeAndValue")
            if decode_oid(data[parts[0][2]:parts[0][3]]) == OID_COMMON_NAME:
                cn = decode_string(parts[1][0], data[parts[1][2]:parts[1][3]])
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
    s, e = expect(value, 0, len(value), TAG_INTEGER)
    if e != len(value):
        raise DerError("trailing bytes after INTEGER")
    return decode_integer(value[s:e])


def decode_extension_string(value: bytes) -> str:
    tag, s, e = read_tlv(value, 0, len(value))
    if e != len(value):
        raise DerError("trailing bytes after string")
    return decode_string(tag, value[s:e])
