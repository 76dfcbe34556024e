"""TDX RTMR values by replaying a CC event log (ACPI CCEL table + event log area).

Why: RTMR0..3 are extended at boot by firmware, bootloader and kernel; the expected values of
an image are those of its reference boot's event log. Replaying the log both yields the values
for the manifest and checks that a log matches a quote (each RTMR must equal the replay).

Formats (TCG PC Client Platform Firmware Profile, crypto-agile log; UEFI 2.10 CC measurement;
ACPI 6.5 CCEL):
1. CCEL table: 36-byte ACPI header "CCEL", u8 CC type (2 = TDX), u8 subtype, u16 reserved,
   u64 LAML (log area minimum length), u64 LASA (log area start address).
2. The first event is a TCG_PCR_EVENT (SHA-1 format) of type EV_NO_ACTION carrying
   "Spec ID Event03" and the list of (algorithm id, digest size) used by the other events.
3. Each further event is TCG_PCR_EVENT2: u32 MR index, u32 type, u32 digest count, per digest
   (u16 alg id, digest), u32 event size, event data. The log ends at an all-0xFF or all-zero
   header (unused area).
4. MR index 1..4 are RTMR0..3 (0 is MRTD, which the log never extends). EV_NO_ACTION events
   are informational and never extended.
5. RTMR[i] starts as 48 zero bytes; each event: RTMR[i] = SHA-384(RTMR[i] || SHA-384 digest).
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from conclave.runtime.errors import ConclaveError, ExitCode

EV_NO_ACTION = 0x3
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
CC_TYPE_TDX = 2
RTMR_COUNT = 4
_MAX_EVENT_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class CcelTable:
    cc_type: int
    cc_subtype: int
    log_area_minimum_length: int
    log_area_start_address: int


@dataclass(frozen=True)
class CcEvent:
    mr_index: int
    event_type: int
    digests: dict[int, bytes]
    data: bytes


def _malformed(message: str) -> ConclaveError:
    return ConclaveError("event_log_malformed", message, exit_code=ExitCode.MALFORMED)


def parse_ccel_table(raw: bytes) -> CcelTable:
    """Step 1."""
    if len(raw) < 56 or raw[:4] != b"CCEL":
        raise _malformed("not an ACPI CCEL table")
    length, = struct.unpack_from("<I", raw, 4)
    if length != len(raw) or length < 56:
        raise _malformed("CCEL table length mismatch")
    if sum(raw) % 256 != 0:
        raise _malformed("CCEL table checksum mismatch")
    cc_type, subtype = raw[36], raw[37]
    laml, lasa = struct.unpack_from("<QQ", raw, 40)
    return CcelTable(cc_type, subtype, laml, lasa)


def parse_event_log(data: bytes) -> list[CcEvent]:
    """Steps 2-3: every event after the Spec ID header, in log order."""
    if len(data) < 32:
        raise _malformed("event log shorter than its header event")
    mr, etype = struct.unpack_from("<II", data, 0)
    size, = struct.unpack_from("<I", data, 28)
    spec = data[32:32 + size]
    if etype != EV_NO_ACTION or not spec.startswith(SPEC_ID_SIGNATURE) or len(spec) < 28:
        raise _malformed("event log does not start with a Spec ID Event03 header")
    n_algs, = struct.unpack_from("<I", spec, 24)
    if 28 + 4 * n_algs > len(spec):
        raise _malformed("Spec ID event algorithm list truncated")
    sizes = {}
    for i in range(n_algs):
        alg, dsize = struct.unpack_from("<HH", spec, 28 + 4 * i)
        sizes[alg] = dsize
    if TPM_ALG_SHA384 not in sizes:
        raise _malformed("event log has no SHA-384 digests (required for RTMRs)")
    pos = 32 + size
    events: list[CcEvent] = []
    while pos + 12 <= len(data):
        header = data[pos:pos + 8]
        if header in (b"\xff" * 8, b"\0" * 8):
            break  # unused log area
        mr, etype, count = struct.unpack_from("<III", data, pos)
        pos += 12
        if count == 0 or count > len(sizes):
            raise _malformed(f"event at offset {pos - 12}: bad digest count {count}")
        digests = {}
        for _ in range(count):
            if pos + 2 > len(data):
                raise _malformed("event digest truncated")
            alg, = struct.unpack_from("<H", data, pos)
            if alg not in sizes:
                raise _malformed(f"event digest algorithm {alg:#x} not declared in the header")
            digests[alg] = data[pos + 2:pos + 2 + sizes[alg]]
            pos += 2 + sizes[alg]
        if pos + 4 > len(data):
            raise _malformed("event size truncated")
        esize, = struct.unpack_from("<I", data, pos)
        pos += 4
        if esize > _MAX_EVENT_SIZE or pos + esize > len(data):
            raise _malformed("event data runs past the log")
        events.append(CcEvent(mr, etype, digests, data[pos:pos + esize]))
        pos += esize
    return events


def replay_rtmrs(events: list[CcEvent]) -> list[bytes]:
    """Steps 4-5: the four RTMR values the log produces."""
    rtmrs = [bytes(48) for _ in range(RTMR_COUNT)]
    for event in events:
        if event.event_type == EV_NO_ACTION:
            continue
        if not 1 <= event.mr_index <= RTMR_COUNT:
            raise _malformed(f"event extends MR index {event.mr_index}, not an RTMR")
        digest = event.digests.get(TPM_ALG_SHA384)
        if digest is None or len(digest) != 48:
            raise _malformed("event without a SHA-384 digest")
        i = event.mr_index - 1
        rtmrs[i] = hashlib.sha384(rtmrs[i] + digest).digest()
    return rtmrs


def rtmrs_from_ccel(table: bytes, log_area: bytes) -> list[bytes]:
    """Parse the CCEL table (must be TDX), then replay the log area it describes."""
    parsed = parse_ccel_table(table)
    if parsed.cc_type != CC_TYPE_TDX:
        raise _malformed(f"CCEL table CC type {parsed.cc_type} is not TDX ({CC_TYPE_TDX})")
    if len(log_area) < min(parsed.log_area_minimum_length, 32):
        raise _malformed("log area shorter than the CCEL table says")
    return replay_rtmrs(parse_event_log(log_area[:parsed.log_area_minimum_length]))
