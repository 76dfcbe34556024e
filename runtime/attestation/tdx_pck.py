"""Intel SGX PCK certificate extensions (OID 1.2.840.113741.1.13.1): FMSPC, PCE SVN, CPU SVN.

cryptography exposes the extension only as raw DER (UnrecognizedExtension), so this module
walks the DER itself with the shared strict walker (der.py: definite lengths only, every length
checked against the enclosing buffer); anything unexpected -> MalformedEvidence. Layout per
Intel's "SGX PCK Certificate and CRL Profile":

    SGXExtensions ::= SEQUENCE OF SEQUENCE { OID, value }
      .1 PPID OCTET STRING(16)   .2 TCB SEQUENCE OF SEQUENCE { OID .2.1..2.16 INTEGER,
      .2.17 PCESVN INTEGER, .2.18 CPUSVN OCTET STRING(16) }   .3 PCE-ID OCTET STRING(2)
      .4 FMSPC OCTET STRING(6)   .5 SGX Type ENUMERATED   .6/.7 optional (platform certs)
"""
from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from conclave.runtime.attestation.core import MalformedEvidence
from conclave.runtime.attestation.der import (
    TAG_ENUMERATED, TAG_INTEGER, TAG_OCTET_STRING, TAG_SEQUENCE,
    DerError, children, decode_unsigned, oid_and_value, read_single,
)

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_SGX_ARC = "1.2.840.113741.1.13.1"
_MAX_UINT_BYTES = 9


@dataclass(frozen=True)
class PckExtensions:
    """The values TCB evaluation needs from the PCK leaf certificate."""

    ppid: bytes
    sgx_tcb_components: tuple[int, ...]  # 16 SVNs (TCB .2.1 .. .2.16)
    pce_svn: int
    cpu_svn: bytes  # 16 bytes
    pce_id: bytes  # 2 bytes
    fmspc: bytes  # 6 bytes
    sgx_type: int


def _pairs(buf: bytes, start: int, end: int) -> dict[str, tuple[int, bytes, int, int]]:
    """SEQUENCE OF SEQUENCE {OID, value} -> {oid: (tag, value_bytes, value_start, value_end)}."""
    out: dict[str, tuple[int, bytes, int, int]] = {}
    for tag, _, vs, ve in children(buf, start, end):
        if tag != TAG_SEQUENCE:
            raise DerError("expected SEQUENCE { OID, value }")
        oid, (vtag, vvs, vve) = oid_and_value(buf, vs, ve)
        if oid in out:
            raise DerError(f"duplicate OID {oid}")
        out[oid] = (vtag, buf[vvs:vve], vvs, vve)
    return out


def _expect(pairs: dict, oid: str, tag: int, size: int | None = None) -> bytes:
    if oid not in pairs:
        raise DerError(f"missing {oid}")
    got_tag, value, _, _ = pairs[oid]
    if got_tag != tag:
        raise DerError(f"{oid} has DER tag {got_tag:#x}, expected {tag:#x}")
    if size is not None and len(value) != size:
        raise DerError(f"{oid} has {len(value)} bytes, expected {size}")
    return value


def _uint(pairs: dict, oid: str, tag: int = TAG_INTEGER) -> int:
    return decode_unsigned(_expect(pairs, oid, tag), max_bytes=_MAX_UINT_BYTES)


def parse_sgx_extensions(der: bytes) -> PckExtensions:
    """Parse the raw extension value (the bytes inside the extnValue OCTET STRING)."""
    try:
        return _parse(der)
    except DerError as exc:
        raise MalformedEvidence(f"SGX extension: {exc}") from None


def _parse(der: bytes) -> PckExtensions:
    tag, vs, ve = read_single(der)
    if tag != TAG_SEQUENCE:
        raise DerError("not a single SEQUENCE")
    top = _pairs(der, vs, ve)
    ppid = _expect(top, f"{_SGX_ARC}.1", TAG_OCTET_STRING, 16)
    _expect(top, f"{_SGX_ARC}.2", TAG_SEQUENCE)
    _, _, tcb_start, tcb_end = top[f"{_SGX_ARC}.2"]
    tcb = _pairs(der, tcb_start, tcb_end)
    components = tuple(_uint(tcb, f"{_SGX_ARC}.2.{i}") for i in range(1, 17))
    if any(c > 255 for c in components):
        raise DerError("TCB component SVN above 255")
    pce_svn = _uint(tcb, f"{_SGX_ARC}.2.17")
    if pce_svn > 0xFFFF:
        raise DerError("PCESVN above 65535")
    cpu_svn = _expect(tcb, f"{_SGX_ARC}.2.18", TAG_OCTET_STRING, 16)
    pce_id = _expect(top, f"{_SGX_ARC}.3", TAG_OCTET_STRING, 2)
    fmspc = _expect(top, f"{_SGX_ARC}.4", TAG_OCTET_STRING, 6)
    sgx_type = _uint(top, f"{_SGX_ARC}.5", TAG_ENUMERATED)
    return PckExtensions(ppid=ppid, sgx_tcb_components=components, pce_svn=pce_svn, cpu_svn=cpu_svn,
                         pce_id=pce_id, fmspc=fmspc, sgx_type=sgx_type)


def pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """The SGX extensions of a PCK leaf certificate; MalformedEvidence when absent or broken."""
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID)
    except x509.ExtensionNotFound:
        raise MalformedEvidence("PCK certificate has no Intel SGX extension") from None
    except ValueError as exc:  # duplicate or unparsable extensions
        raise MalformedEvidence(f"PCK certificate extensions unreadable: {exc}") from None
    value = ext.value
    raw = getattr(value, "value", None)
    if not isinstance(raw, bytes):
        raise MalformedEvidence("PCK certificate SGX extension is not raw DER")
    return parse_sgx_extensions(raw)
