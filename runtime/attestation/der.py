"""A small, strict DER walker shared by the vendor certificate readers (AMD SEV-SNP chain in
snp_der, Intel SGX PCK extension in tdx_pck).

Why our own walker rather than a general ASN.1 library: both readers need only a handful of
universal types, and every length must be bounded by its container so that hostile evidence
cannot make us read past a buffer or allocate on its say-so. Rules: single-byte tags only,
definite lengths of at most 4 length bytes in minimal form, every element inside its parent.
Every failure is a DerError (a ValueError); callers map it to their own reason.
"""
from __future__ import annotations

from datetime import datetime, timezone

# Universal tags used by the readers.
TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_UTF8 = 0x0C
TAG_PRINTABLE = 0x13
TAG_IA5 = 0x16
TAG_UTCTIME = 0x17
TAG_GENERALIZEDTIME = 0x18
TAG_SEQUENCE = 0x30
TAG_SET = 0x31

_MAX_LENGTH_BYTES = 4


class DerError(ValueError):
    """The bytes are not the DER structure we expect (callers map this to their own reason)."""


def read_tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Returns (tag, value_start, value_end) of the element at `pos`, bounded by `end`."""
    if pos + 2 > end:
        raise DerError("truncated DER header")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte DER tags are not used here")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > _MAX_LENGTH_BYTES:
            raise DerError("indefinite or oversized DER length")
        if pos + count > end:
            raise DerError("truncated DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        if length < 0x80 or data[pos] == 0:
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
    """(value_start, value_end) of the element at `pos`, which must carry `tag`."""
    got, vs, ve = read_tlv(data, pos, end)
    if got != tag:
        raise DerError(f"expected DER tag 0x{tag:02x}, got 0x{got:02x}")
    return vs, ve


def read_single(data: bytes) -> tuple[int, int, int]:
    """(tag, value_start, value_end) of the one element that must fill `data` exactly."""
    tag, vs, ve = read_tlv(data, 0, len(data))
    if ve != len(data):
        raise DerError("trailing bytes after the DER element")
    return tag, vs, ve


def oid_and_value(data: bytes, start: int, end: int) -> tuple[str, tuple[int, int, int]]:
    """The body of a SEQUENCE { OID, value } (an X.509 attribute, an extension-style pair):
    (dotted OID, (value_tag, value_start, value_end))."""
    items = children(data, start, end)
    if len(items) != 2 or items[0][0] != TAG_OID:
        raise DerError("expected SEQUENCE { OID, value }")
    vtag, _, vs, ve = items[1]
    return decode_oid(data[items[0][2]:items[0][3]]), (vtag, vs, ve)


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


def decode_unsigned(value: bytes, *, max_bytes: int) -> int:
    """A non-negative INTEGER/ENUMERATED of at most max_bytes content bytes."""
    if not value or len(value) > max_bytes:
        raise DerError("bad INTEGER length")
    if value[0] & 0x80:
        raise DerError("negative INTEGER")
    return int.from_bytes(value, "big")


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
