"""Intel SGX PCK certificate extensions (OID 1.2.840.113741.1.13.1): FMSPC, PCE SVN, CPU SVN.

cryptography exposes the extension only as raw DER (UnrecognizedExtension), so this module
walks the DER itself. The walker is tiny and strict: definite lengths only, every length
checked against the enclosing buffer, anything unexpected -> MalformedEvidence. Layout per
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

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_SGX_ARC = "1.2.840.113741.1.13.1"

_TAG_INTEGER = 0x02
_TAG_OCTET_STRING = 0x04
_TAG_OID = 0x06
_TAG_ENUMERATED = 0x0A
_TAG_SEQUENCE = 0x30


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


def _read_tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Returns (tag, value_start, value_end) of the TLV at buf[pos:end]."""
    if pos + 2 > end:
        raise MalformedEvidence("SGX extension: truncated DER header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise MalformedEvidence("SGX extension: multi-byte DER tags are not used by Intel")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise MalformedEvidence("SGX extension: indefinite or oversized DER length")
        if pos + count > end:
            raise MalformedEvidence("SGX extension: truncated DER length")
        length = int.from_bytes(buf[pos:pos + count], "big")
        pos += count
    if pos + length > end:
        raise MalformedEvidence("SGX extension: DER value runs past its container")
    return tag, pos, pos + length


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, vs, ve = _read_tlv(buf, pos, end)
        out.append((tag, vs, ve))
        pos = ve
    return out


def _decode_oid(raw: bytes) -> str:
    if not raw:
        raise MalformedEvidence("SGX extension: empty OID")
    arcs: list[int] = []
    value = 0
    for i, byte in enumerate(raw):
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
        elif i == len(raw) - 1:
            raise MalformedEvidence("SGX extension: truncated OID")
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


def _decode_uint(raw: bytes) -> int:
    if not raw or len(raw) > 9:
        raise MalformedEvidence("SGX extension: bad INTEGER length")
    if raw[0] & 0x80:
        raise MalformedEvidence("SGX extension: negative INTEGER")
    return int.from_bytes(raw, "big")


def _pairs(buf: bytes, start: int, end: int) -> dict[str, tuple[int, bytes, int, int]]:
    """SEQUENCE OF SEQUENCE {OID, value} -> {oid: (tag, value_bytes, value_start, value_end)}."""
    out: dict[str, tuple[int, bytes, int, int]] = {}
    for tag, vs, ve in _children(buf, start, end):
        if tag != _TAG_SEQUENCE:
            raise MalformedEvidence("SGX extension: expected SEQUENCE {OID, value}")
        items = _children(buf, vs, ve)
        if len(items) != 2 or items[0][0] != _TAG_OID:
            raise MalformedEvidence("SGX extension: expected SEQUENCE {OID, value}")
        oid = _decode_oid(buf[items[0][1]:items[0][2]])
        vtag, vvs, vve = items[1]
        if oid in out:
            raise MalformedEvidence(f"SGX extension: duplicate OID {oid}")
        out[oid] = (vtag, buf[vvs:vve], vvs, vve)
    return out


def _expect(pairs: dict, oid: str, tag: int, size: int | None = None) -> bytes:
    if oid not in pairs:
        raise MalformedEvidence(f"SGX extension: missing {oid}")
    got_tag, value, _, _ = pairs[oid]
    if got_tag != tag:
        raise MalformedEvidence(f"SGX extension: {oid} has DER tag {got_tag:#x}, expected {tag:#x}")
    if size is not None and len(value) != size:
        raise MalformedEvidence(f"SGX extension: {oid} has {len(value)} bytes, expected {size}")
    return value


def parse_sgx_extensions(der: bytes) -> PckExtensions:
    """Parse the raw extension value (the bytes inside the extnValue OCTET STRING)."""
    tag, vs, ve = _read_tlv(der, 0, len(der))
    if tag != _TAG_SEQUENCE or ve != len(der):
        raise MalformedEvidence("SGX extension: not a single SEQUENCE")
    top = _pairs(der, vs, ve)
    ppid = _expect(top, f"{_SGX_ARC}.1", _TAG_OCTET_STRING, 16)
    _expect(top, f"{_SGX_ARC}.2", _TAG_SEQUENCE)
    _, _, tcb_start, tcb_end = top[f"{_SGX_ARC}.2"]
    tcb = _pairs(der, tcb_start, tcb_end)
    components = tuple(_decode_uint(_expect(tcb, f"{_SGX_ARC}.2.{i}", _TAG_INTEGER)) for i in range(1, 17))
    if any(c > 255 for c in components):
        raise MalformedEvidence("SGX extension: TCB component SVN above 255")
    pce_svn = _decode_uint(_expect(tcb, f"{_SGX_ARC}.2.17", _TAG_INTEGER))
    if pce_svn > 0xFFFF:
        raise MalformedEvidence("SGX extension: PCESVN above 65535")
    cpu_svn = _expect(tcb, f"{_SGX_ARC}.2.18", _TAG_OCTET_STRING, 16)
    pce_id = _expect(top, f"{_SGX_ARC}.3", _TAG_OCTET_STRING, 2)
    fmspc = _expect(top, f"{_SGX_ARC}.4", _TAG_OCTET_STRING, 6)
    sgx_type = _decode_uint(_expect(top, f"{_SGX_ARC}.5", _TAG_ENUMERATED))
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
