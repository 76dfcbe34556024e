"""SPDM 1.1 GET_MEASUREMENTS request + MEASUREMENTS response, as NVIDIA GPUs return them.

Why a hand-written parser: the NVIDIA driver hands out "attestation reports" that are the raw
SPDM transcript the GPU signed (the nvtrust SDK concatenates the 37-byte request and the
response), and the offline verifier must read every field itself. Layout (DMTF DSP0274 1.1.x):

GET_MEASUREMENTS request (37 bytes when a signature is requested):
    0 SPDMVersion (0x11) | 1 RequestResponseCode (0xE0) | 2 Param1 (bit 0: signature requested)
    3 Param2 (measurement operation; 0xFF = all blocks) | 4..35 Nonce (32) | 36 SlotIDParam
MEASUREMENTS response:
    0 SPDMVersion | 1 RequestResponseCode (0x60) | 2 Param1 | 3 Param2
    4 NumberOfBlocks | 5..7 MeasurementRecordLength (LE24) | MeasurementRecord
    Nonce (32, responder's) | OpaqueLength (LE16) | OpaqueData | Signature (P-384: 96 bytes r||s)
Measurement block: Index (1) | MeasurementSpecification (1, bit 0 = DMTF) | MeasurementSize (LE16)
    | DMTF measurement: ValueType (1) | ValueSize (LE16) | Value
NVIDIA opaque data: a sequence of TLVs, Type (LE16) | Size (LE16) | Value (nvtrust's verifier
    names the types; see OPAQUE_FIELD_NAMES).

The size of the response comes from its own length fields only: real reports have been seen
with a trailing byte after the signature. Bytes after the signature are not signed; they are
counted in `trailing` and never interpreted. Everything here is pure: bytes in, values out;
any structural problem raises MalformedEvidence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from conclave.runtime.attestation.core import MalformedEvidence

SPDM_VERSION_1_1 = 0x11
SUPPORTED_SPDM_VERSIONS = frozenset({SPDM_VERSION_1_1})
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
REQUEST_LEN = 37  # with signature requested: 4 header bytes + 32-byte nonce + SlotIDParam
NONCE_LEN = 32
SIGNATURE_LEN = 96  # ECDSA P-384, raw big-endian r || s (TPM_ALG_ECDSA_ECC_NIST_P384)
PARAM1_SIGNATURE_REQUESTED = 0x01
DMTF_MEASUREMENT_SPEC = 0x01
DMTF_RAW_BITSTREAM_FLAG = 0x80  # DMTFSpecMeasurementValueType bit 7: raw bit stream, not a digest
MAX_OPAQUE_LEN = 1024  # DSP0274: OpaqueLength shall not exceed 1024

# NVIDIA opaque-data TLV types, named as in nvtrust's verifier (OPAQUE_FIELD_ID_<NAME>).
OPAQUE_FIELD_NAMES: Mapping[int, str] = MappingProxyType({
    1: "cert_issuer_name", 2: "cert_authority_key_identifier", 3: "driver_version",
    4: "gpu_info", 5: "sku", 6: "vbios_version", 7: "manufacturer_id", 8: "tamper_detection",
    9: "smc", 10: "vpr", 11: "nvdec0_status", 12: "msrscnt", 13: "cpr_info", 14: "board_id",
    15: "chip_sku", 16: "chip_sku_mod", 17: "project", 18: "project_sku", 19: "project_sku_mod",
    20: "fwid", 21: "protected_pcie_status", 22: "switch_pdi", 23: "floorswept_ports",
    24: "position_id", 25: "lock_switch_status", 32: "gpu_link_conn", 33: "sys_enable_status",
    34: "opaque_data_version", 35: "chip_info", 36: "feature_flag", 255: "invalid",
})
MSRSCNT_ENTRY_LEN = 4


def _le(data: bytes) -> int:
    return int.from_bytes(data, "little")


class _Reader:
    """Bounds-checked cursor: every read past the end is MalformedEvidence, never IndexError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field_name: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedEvidence(
                f"{self.what}: {field_name} needs {n} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, field_name: str) -> int:
        return self.take(1, field_name)[0]

    def le(self, n: int, field_name: str) -> int:
        return _le(self.take(n, field_name))

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


@dataclass(frozen=True)
class MeasurementRequest:
    spdm_version: int
    code: int
    param1: int
    param2: int
    nonce: bytes
    slot_id: int
    raw: bytes

    @property
    def signature_requested(self) -> bool:
        return bool(self.param1 & PARAM1_SIGNATURE_REQUESTED)


@dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block (SPDM 1.1 table 'Measurement block format')."""

    index: int
    spec: int
    value_type: int  # DMTFSpecMeasurementValueType (bits 6:0 type, bit 7 raw bit stream)
    value: bytes

    @property
    def raw_bitstream(self) -> bool:
        return bool(self.value_type & DMTF_RAW_BITSTREAM_FLAG)


@dataclass(frozen=True)
class OpaqueField:
    type: int
    name: str  # OPAQUE_FIELD_NAMES entry, or "type_<n>" for types nvtrust does not name
    value: bytes


@dataclass(frozen=True)
class MeasurementResponse:
    spdm_version: int
    code: int
    param1: int
    param2: int
    number_of_blocks: int
    record_length: int
    blocks: tuple[MeasurementBlock, ...]
    nonce: bytes  # the responder's own nonce (freshness is the request nonce)
    opaque_length: int
    opaque_fields: tuple[OpaqueField, ...]
    signature: bytes
    signature_offset: int  # offset of the signature within the response


@dataclass(frozen=True)
class SpdmEvidence:
    """The parsed transcript. `signed_bytes` is exactly what the GPU signed (request || response
    up to the signature), `trailing` counts unsigned bytes after the signature."""

    raw: bytes
    request: MeasurementRequest
    response: MeasurementResponse
    trailing: int
    opaque: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:REQUEST_LEN + self.response.signature_offset]

    @property
    def nonce(self) -> bytes:
        return self.request.nonce

    @property
    def measurements(self) -> dict[int, bytes]:
        return {b.index: b.value for b in self.response.blocks}

    @property
    def msrscnt(self) -> tuple[int, ...] | None:
        raw = self.opaque.get("msrscnt")
        if raw is None:
            return None
        return tuple(_le(raw[i:i + MSRSCNT_ENTRY_LEN]) for i in range(0, len(raw), MSRSCNT_ENTRY_LEN))

    @property
    def driver_version(self) -> str | None:
        return _text(self.opaque.get("driver_version"))

    @property
    def vbios_version(self) -> str | None:
        return format_vbios_version(self.opaque.get("vbios_version"))

    @property
    def fwid(self) -> bytes | None:
        return self.opaque.get("fwid")


def _text(raw: bytes | None) -> str | None:
    """NUL-padded ASCII fields (driver version, chip SKU, project...)."""
    if raw is None:
        return None
    return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace")


def format_vbios_version(raw: bytes | None) -> str | None:
    """GPU VBIOS versions are 8 bytes (e.g. 00 9f 00 96 01 00 00 00 -> "96.00.9f.00.01", nvtrust's
    format: the little-endian low word as four hex pairs, then byte 4). NVSwitch firmware reports
    the version as ASCII text ("96.10.73.00.01"), which is returned as is."""
    if raw is None:
        return None
    text = _text(raw)
    if text and "." in text and all(c.isalnum() or c == "." for c in text):
        return text
    if len(raw) == 8:
        word = raw[:4][::-1].hex()
        return ".".join([word[0:2], word[2:4], word[4:6], word[6:8], f"{raw[4]:02x}"])
    return raw.hex()


def _parse_request(r: _Reader) -> MeasurementRequest:
    version = r.u8("request SPDMVersion")
    code = r.u8("request RequestResponseCode")
    if code != GET_MEASUREMENTS:
        raise MalformedEvidence(f"request code is 0x{code:02x}, expected GET_MEASUREMENTS (0xe0)")
    if version not in SUPPORTED_SPDM_VERSIONS:
        raise MalformedEvidence(f"unsupported SPDM version 0x{version:02x} (SPDM 1.1 expected)")
    param1 = r.u8("request Param1")
    param2 = r.u8("request Param2")
    if not param1 & PARAM1_SIGNATURE_REQUESTED:
        # Without a requested signature the request has no nonce and the response is unsigned:
        # there is nothing to attest, so this is not evidence at all.
        raise MalformedEvidence("GET_MEASUREMENTS request did not ask for a signature")
    nonce = r.take(NONCE_LEN, "request Nonce")
    slot = r.u8("request SlotIDParam")
    return MeasurementRequest(version, code, param1, param2, nonce, slot, r.data[:REQUEST_LEN])


def _parse_blocks(record: bytes, count: int) -> tuple[MeasurementBlock, ...]:
    r = _Reader(record, "measurement record")
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    for n in range(count):
        index = r.u8(f"block {n} Index")
        spec = r.u8(f"block {n} MeasurementSpecification")
        size = r.le(2, f"block {n} MeasurementSize")
        body = _Reader(r.take(size, f"block {n} Measurement"), f"measurement block {index}")
        if spec != DMTF_MEASUREMENT_SPEC:
            raise MalformedEvidence(f"measurement block {index}: specification 0x{spec:02x} is not DMTF")
        if index in seen:
            raise MalformedEvidence(f"measurement block index {index} appears twice")
        if index in (0, 0xFF):
            raise MalformedEvidence(f"measurement block index {index} is reserved")
        value_type = body.u8("DMTFSpecMeasurementValueType")
        value_size = body.le(2, "DMTFSpecMeasurementValueSize")
        value = body.take(value_size, "DMTFSpecMeasurementValue")
        if body.remaining:
            raise MalformedEvidence(f"measurement block {index}: {body.remaining} bytes beyond its DMTF value")
        seen.add(index)
        blocks.append(MeasurementBlock(index, spec, value_type, value))
    if r.remaining:
        raise MalformedEvidence(f"measurement record has {r.remaining} bytes beyond {count} blocks")
    return tuple(blocks)


def _parse_opaque(data: bytes) -> tuple[OpaqueField, ...]:
    r = _Reader(data, "opaque data")
    fields: list[OpaqueField] = []
    seen: set[int] = set()
    while r.remaining:
        ftype = r.le(2, "opaque DataType")
        size = r.le(2, "opaque DataSize")
        value = r.take(size, f"opaque field {ftype}")
        if ftype in seen:
            raise MalformedEvidence(f"opaque field type {ftype} appears twice")
        seen.add(ftype)
        name = OPAQUE_FIELD_NAMES.get(ftype, f"type_{ftype}")
        if name == "msrscnt" and len(value) % MSRSCNT_ENTRY_LEN:
            raise MalformedEvidence("opaque MSRSCNT is not a list of 4-byte counters")
        fields.append(OpaqueField(ftype, name, value))
    return tuple(fields)


def _parse_response(r: _Reader, request: MeasurementRequest) -> MeasurementResponse:
    start = r.pos
    version = r.u8("response SPDMVersion")
    code = r.u8("response RequestResponseCode")
    if code != MEASUREMENTS:
        raise MalformedEvidence(f"response code is 0x{code:02x}, expected MEASUREMENTS (0x60)")
    if version != request.spdm_version:
        raise MalformedEvidence(f"response SPDM version 0x{version:02x} differs from the request's")
    param1 = r.u8("response Param1")
    param2 = r.u8("response Param2")
    count = r.u8("NumberOfBlocks")
    record_length = r.le(3, "MeasurementRecordLength")
    if count == 0:
        raise MalformedEvidence("the response carries no measurement blocks")
    blocks = _parse_blocks(r.take(record_length, "MeasurementRecord"), count)
    nonce = r.take(NONCE_LEN, "response Nonce")
    opaque_length = r.le(2, "OpaqueLength")
    if opaque_length > MAX_OPAQUE_LEN:
        raise MalformedEvidence(f"OpaqueLength {opaque_length} exceeds the SPDM limit of {MAX_OPAQUE_LEN}")
    opaque = _parse_opaque(r.take(opaque_length, "OpaqueData"))
    signature_offset = r.pos - start
    signature = r.take(SIGNATURE_LEN, "Signature")
    return MeasurementResponse(version, code, param1, param2, count, record_length, blocks, nonce,
                               opaque_length, opaque, signature, signature_offset)


def parse_spdm(data: bytes) -> SpdmEvidence:
    """Parse request || response; MalformedEvidence on anything structurally wrong."""
    data = bytes(data)
    r = _Reader(data, "SPDM evidence")
    request = _parse_request(r)
    response = _parse_response(r, request)
    opaque = MappingProxyType({f.name: f.value for f in response.opaque_fields})
    return SpdmEvidence(raw=data, request=request, response=response, trailing=r.remaining,
                        opaque=opaque)


def looks_like_spdm(data: bytes) -> bool:
    """Cheap sniff: SPDM 1.x GET_MEASUREMENTS header followed by a MEASUREMENTS header."""
    return (len(data) > REQUEST_LEN + 8 and data[0] & 0xF0 == 0x10 and data[1] == GET_MEASUREMENTS
            and data[REQUEST_LEN] == data[0] and data[REQUEST_LEN + 1] == MEASUREMENTS)
