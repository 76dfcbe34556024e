"""TDX MRTD from TD firmware (TDVF/OVMF IntelTdx) metadata.

Why compute it: MRTD is the TD's build-time measurement; the manifest must pin it, and the
value has to come from the firmware binary we ship, not from a running TD we would trust
blindly.

Layout (TDX Virtual Firmware Design Guide, ch. 11; edk2 ResetVectorVtf0.asm):
1. The OVMF GUIDed table ends 32 bytes before the end of the image; its footer is
   (u16 length, GUID 96b582de-1fb2-45f7-baea-a366c55a082d); entries run backwards, each
   ending with (u16 length, GUID).
2. The entry TDX_METADATA_OFFSET_GUID (e47a6535-984a-4798-865e-4685a7bf8ec2) holds a u32
   offset from the END of the image to the TDVF descriptor: "TDVF", u32 length, u32 version (1),
   u32 number of sections, then 32-byte sections (u32 DataOffset, u32 RawDataSize,
   u64 MemoryAddress, u64 MemoryDataSize, u32 Type, u32 Attributes).

Measurement (Intel TDX Module ABI spec, TDH.MEM.PAGE.ADD and TDH.MR.EXTEND; QEMU adds the
sections in metadata order). The order of ADD and EXTEND inside a section depends on the host
stack, so it is a parameter: "single-pass" (current upstream KVM: add a page, extend it, next
page) or "two-pass" (older TDX KVM trees: add every page of the section, then extend them).
3. For every 4 KiB page of every section (except PAGE_AUG sections, which are accepted later
   by the guest and never measured): SHA-384 absorbs a 128-byte block "MEM.PAGE.ADD" (padded to
   16 bytes) || GPA (u64 LE) || zeros.
4. If the section has MR_EXTEND, then for each 256-byte chunk of that page: a 128-byte block
   "MR.EXTEND" (padded to 16) || chunk GPA (u64 LE) || zeros, followed by the 256 bytes. Page
   content is the section's raw data from the image, zero-filled past RawDataSize.
5. MRTD = the SHA-384 of everything absorbed (TDH.MR.FINALIZE).
"""
from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum

from conclave.runtime.errors import ConclaveError, ExitCode

TABLE_FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
TDX_METADATA_OFFSET_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2")
TDVF_SIGNATURE = b"TDVF"
PAGE_SIZE = 4096
EXTEND_CHUNK = 256
ATTR_MR_EXTEND = 0x1
ATTR_PAGE_AUG = 0x2
_ENTRY_HEADER = 18  # u16 length + 16-byte GUID


class SectionType(IntEnum):
    BFV = 0
    CFV = 1
    TD_HOB = 2
    TEMP_MEM = 3
    PERM_MEM = 4
    PAYLOAD = 5
    PAYLOAD_PARAM = 6
    TD_INFO = 7


@dataclass(frozen=True)
class TdvfSection:
    data_offset: int
    raw_data_size: int
    memory_address: int
    memory_data_size: int
    type: int
    attributes: int

    @property
    def mr_extend(self) -> bool:
        return bool(self.attributes & ATTR_MR_EXTEND)

    @property
    def page_aug(self) -> bool:
        return bool(self.attributes & ATTR_PAGE_AUG)


def _malformed(message: str) -> ConclaveError:
    return ConclaveError("firmware_malformed", message, exit_code=ExitCode.MALFORMED)


def parse_guid_table(image: bytes) -> dict[uuid.UUID, bytes]:
    """Step 1: the OVMF GUIDed footer table, GUID -> entry data."""
    end = len(image) - 32
    if end < _ENTRY_HEADER:
        raise _malformed("firmware image too small for a GUIDed table")
    length, = struct.unpack_from("<H", image, end - _ENTRY_HEADER)
    if uuid.UUID(bytes_le=image[end - 16:end]) != TABLE_FOOTER_GUID:
        raise _malformed("no OVMF GUIDed table footer 32 bytes before the end of the image")
    if length < _ENTRY_HEADER or length > end:
        raise _malformed("GUIDed table length out of range")
    table = image[end - length:end - _ENTRY_HEADER]
    entries: dict[uuid.UUID, bytes] = {}
    while len(table) >= _ENTRY_HEADER:
        size, = struct.unpack_from("<H", table, len(table) - _ENTRY_HEADER)
        if size < _ENTRY_HEADER or size > len(table):
            raise _malformed("GUIDed table entry length out of range")
        guid = uuid.UUID(bytes_le=table[-16:])
        entries[guid] = table[-size:-_ENTRY_HEADER]
        table = table[:-size]
    return entries


def parse_tdvf_metadata(image: bytes) -> list[TdvfSection]:
    """Step 2: the TDVF section list. A firmware without TDX metadata cannot launch a TD."""
    entries = parse_guid_table(image)
    entry = entries.get(TDX_METADATA_OFFSET_GUID)
    if entry is None or len(entry) < 4:
        raise _malformed("firmware has no TDX metadata (not a TDVF / OVMF IntelTdx build)")
    offset, = struct.unpack_from("<I", entry)
    base = len(image) - offset
    if offset > len(image) or base + 16 > len(image):
        raise _malformed("TDX metadata offset points outside the image")
    signature, length, version, count = struct.unpack_from("<4sIII", image, base)
    if signature != TDVF_SIGNATURE:
        raise _malformed("TDVF descriptor signature missing")
    if version != 1:
        raise _malformed(f"unsupported TDVF descriptor version {version}")
    if length != 16 + 32 * count or base + length > len(image):
        raise _malformed("TDVF descriptor length does not match its section count")
    sections = []
    for i in range(count):
        fields = struct.unpack_from("<IIQQII", image, base + 16 + 32 * i)
        section = TdvfSection(*fields)
        if section.memory_address % PAGE_SIZE or section.memory_data_size % PAGE_SIZE:
            raise _malformed(f"TDVF section {i} is not page aligned")
        if section.raw_data_size > section.memory_data_size:
            raise _malformed(f"TDVF section {i} raw data larger than its memory")
        if section.data_offset + section.raw_data_size > len(image):
            raise _malformed(f"TDVF section {i} data lies outside the image")
        if section.mr_extend and section.raw_data_size == 0:
            raise _malformed(f"TDVF section {i} is MR_EXTEND without data")
        sections.append(section)
    return sections


def _block(tag: bytes, gpa: int) -> bytes:
    return tag.ljust(16, b"\0") + struct.pack("<Q", gpa) + bytes(128 - 24)


PAGE_ORDERS = ("single-pass", "two-pass")


def compute_mrtd(image: bytes, sections: list[TdvfSection] | None = None,
                 page_order: str = "single-pass") -> bytes:
    """Steps 3-5: the 48-byte MRTD the TDX module reports for a TD launched from `image`."""
    if page_order not in PAGE_ORDERS:
        raise ValueError(f"page_order must be one of {PAGE_ORDERS}")
    if sections is None:
        sections = parse_tdvf_metadata(image)
    h = hashlib.sha384()

    def add(section: TdvfSection, page_off: int) -> None:
        if not section.page_aug:
            h.update(_block(b"MEM.PAGE.ADD", section.memory_address + page_off))

    def extend(section: TdvfSection, data: bytes, page_off: int) -> None:
        if section.mr_extend:
            gpa = section.memory_address + page_off
            for chunk_off in range(0, PAGE_SIZE, EXTEND_CHUNK):
                h.update(_block(b"MR.EXTEND", gpa + chunk_off))
                h.update(data[page_off + chunk_off:page_off + chunk_off + EXTEND_CHUNK])

    for section in sections:
        data = image[section.data_offset:section.data_offset + section.raw_data_size]
        data = data.ljust(section.memory_data_size, b"\0")
        pages = range(0, section.memory_data_size, PAGE_SIZE)
        if page_order == "single-pass":
            for page_off in pages:
                add(section, page_off)
                extend(section, data, page_off)
        else:
            for page_off in pages:
                add(section, page_off)
            for page_off in pages:
                extend(section, data, page_off)
    return h.digest()
