#!/usr/bin/env python3
"""Pin a PE file's TimeDateStamp (and fix its CheckSum), so rebuilt UKIs are byte-identical.

    python3 images/cvm/pe_timestamp.py FILE EPOCH

Why: binutils 2.40's objcopy (which mkosi 14 uses to assemble the unified kernel image) writes
the current time into the PE header and ignores SOURCE_DATE_EPOCH; two builds of the same
recipe then differ in exactly those 4 bytes plus the checksum (measured). The timestamp is
covered by the Authenticode digest that the firmware measures (TDX RTMR1), so it must repeat.
The checksum is recomputed the way PE defines it (16-bit one's-complement sum of the file
with the CheckSum field as zero, plus the file length).
"""
from __future__ import annotations

import array
import struct
import sys
from pathlib import Path


def pe_checksum(data: bytes, checksum_offset: int) -> int:
    body = bytearray(data)
    body[checksum_offset:checksum_offset + 4] = b"\0\0\0\0"
    if len(body) % 2:
        body.append(0)
    words = array.array("H")
    words.frombytes(bytes(body))
    if sys.byteorder == "big":
        words.byteswap()
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(data)) & 0xFFFFFFFF


def offsets(data: bytes) -> tuple[int, int]:
    """(TimeDateStamp, CheckSum) offsets of a PE32+ image."""
    if data[:2] != b"MZ":
        raise ValueError("not a PE file")
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe:pe + 4] != b"PE\0\0":
        raise ValueError("not a PE file")
    return pe + 8, pe + 24 + 64  # COFF header field; optional header offset 64 (PE32 and PE32+)


def pin(path: Path, epoch: int) -> None:
    data = bytearray(path.read_bytes())
    stamp_at, checksum_at = offsets(bytes(data))
    struct.pack_into("<I", data, stamp_at, epoch & 0xFFFFFFFF)
    struct.pack_into("<I", data, checksum_at, pe_checksum(bytes(data), checksum_at))
    path.write_bytes(bytes(data))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    pin(Path(sys.argv[1]), int(sys.argv[2]))
