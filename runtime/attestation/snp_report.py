"""AMD SEV-SNP ATTESTATION_REPORT parser (structure only, no cryptography).

Layout: AMD SEV-SNP Firmware ABI specification (pub. 56860), "ATTESTATION_REPORT Structure".
All integers are little-endian. The report is 0x4A0 (1184) bytes; the signature covers
0x000-0x29F. Versions:
  2: base layout (firmware 1.51+).
  3: adds CPUID_FAM_ID / CPUID_MOD_ID / CPUID_STEP at 0x188-0x18A (firmware 1.55+).
  5: adds LAUNCH_MIT_VECTOR (0x1F8) and CURRENT_MIT_VECTOR (0x200).
  4: emitted by some firmware between the two; read like 5 (mitigation-vector bytes allowed;
     they are zero where the firmware does not fill them), as virtee/sev reads 3 and 4 alike.
Reserved ranges must be zero for the version that produced them (as go-sev-guest checks), so
a flipped reserved byte is rejected here, before any cryptography.

Optionally the report is followed by the GHCB certificate table of an extended guest request
(GUID, offset, length entries ending with an all-zero entry; offsets relative to the table),
which carries the VCEK/VLEK, ASK and ARK: they are handed to verification as embedded certs.

TCB_VERSION (8 bytes): Milan/Genoa: [0]=BOOT_LOADER [1]=TEE [2..5]=reserved [6]=SNP [7]=MICROCODE.
Turin: [0]=FMC [1]=BOOT_LOADER [2]=TEE [3]=SNP [4..6]=reserved [7]=MICROCODE.
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Mapping

from conclave.runtime.attestation.core import MalformedEvidence

REPORT_SIZE = 0x4A0
SIGNED_END = 0x2A0
SIGNATURE_OFFSET = 0x2A0
ECDSA_COMPONENT_SIZE = 72  # r and s, each a little-endian 72-byte field
P384_BYTES = 48
SUPPORTED_VERSIONS = (2, 3, 4, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

POLICY_SMT_BIT = 16
POLICY_RESERVED_ONE_BIT = 17
POLICY_MIGRATE_MA_BIT = 18
POLICY_DEBUG_BIT = 19
POLICY_SINGLE_SOCKET_BIT = 20

PRODUCTS = ("milan", "genoa", "turin")

# GHCB specification (pub. 56421), certificate table GUIDs.
GUID_ROLES = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "vlek",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ask",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark",
}
CERT_TABLE_ENTRY = 24
MAX_CERT_TABLE_ENTRIES = 16
MAX_TABLE_BYTES = 64 * 1024


def product_from_cpuid(family: int, model: int) -> str | None:
    """Product line from the CPUID family/model (AMD KDS product names), None when unknown."""
    if family == 0x19:
        if model <= 0x0F:
            return "milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "genoa"  # Genoa, Bergamo and Siena share Genoa's keys
    if family == 0x1A and model <= 0x11:
        return "turin"
    return None


def decode_tcb(raw: int, product: str | None) -> dict[str, int]:
    """TCB_VERSION as {bootloader, tee, snp, microcode[, fmc]} in the product's byte layout."""
    b = raw.to_bytes(8, "little")
    if product == "turin":
        return {"fmc": b[0], "bootloader": b[1], "tee": b[2], "snp": b[3], "microcode": b[7]}
    return {"bootloader": b[0], "tee": b[1], "snp": b[6], "microcode": b[7]}


def tcb_reserved_ok(raw: int, product: str | None) -> bool:
    b = raw.to_bytes(8, "little")
    return not any(b[4:7]) if product == "turin" else not any(b[2:6])


@dataclass(frozen=True)
class ParsedSnpReport:
    """A structurally valid SNP report. Nothing here has been verified."""

    raw: bytes                      # exactly the 1184 report bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb_raw: int
    platform_info: int
    signer_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb_raw: int
    cpuid_fam_mod_step: tuple[int, int, int] | None
    chip_id: bytes
    committed_tcb_raw: int
    current_version: tuple[int, int, int]     # (major, minor, build)
    committed_version: tuple[int, int, int]
    launch_tcb_raw: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes               # little-endian, 72 bytes
    signature_s: bytes
    embedded_certs: Mapping[str, bytes]   # role -> DER/PEM from the GHCB certificate table

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_END]

    @property
    def signing_key_code(self) -> int:
        return (self.signer_info >> 2) & 0x7

    @property
    def signing_key(self) -> str:
        return {SIGNING_KEY_VCEK: "vcek", SIGNING_KEY_VLEK: "vlek"}.get(self.signing_key_code, "none")

    @property
    def mask_chip_id(self) -> bool:
        return bool(self.signer_info & 0x2)

    @property
    def author_key_en(self) -> bool:
        return bool(self.signer_info & 0x1)

    @property
    def debug(self) -> bool:
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    @property
    def cpuid_product(self) -> str | None:
        if self.cpuid_fam_mod_step is None:
            return None
        family, model, _ = self.cpuid_fam_mod_step
        return product_from_cpuid(family, model)


def _mbz(data: bytes, lo: int, hi: int, what: str) -> None:
    if any(data[lo:hi]):
        raise MalformedEvidence(f"SNP report: reserved bytes 0x{lo:03x}-0x{hi - 1:03x} ({what}) must be zero")


def looks_like(data: bytes) -> bool:
    """Cheap sniffing: size, a known version and signature algorithm, a sane VMPL."""
    if len(data) < REPORT_SIZE:
        return False
    version, = struct.unpack_from("<I", data, 0)
    vmpl, algo = struct.unpack_from("<II", data, 0x30)
    return version in SUPPORTED_VERSIONS and algo == SIG_ALGO_ECDSA_P384_SHA384 and vmpl <= 3


def parse(data: bytes) -> ParsedSnpReport:
    """Parses one report (optionally followed by a GHCB certificate table); MalformedEvidence only."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedEvidence("SNP report must be bytes")
    data = bytes(data)
    if len(data) < REPORT_SIZE:
        raise MalformedEvidence(f"SNP report is {len(data)} bytes, expected {REPORT_SIZE}")
    report, tail = data[:REPORT_SIZE], data[REPORT_SIZE:]

    version, guest_svn, policy = struct.unpack_from("<IIQ", report, 0x00)
    if version not in SUPPORTED_VERSIONS:
        raise MalformedEvidence(f"SNP report version {version} is not supported (2, 3, 4, 5)")
    vmpl, sig_algo, current_tcb, platform_info, signer_info = struct.unpack_from("<IIQQI", report, 0x30)
    if vmpl > 3:
        raise MalformedEvidence(f"SNP report VMPL {vmpl} out of range 0-3")
    if signer_info >> 5:
        raise MalformedEvidence("SNP report SIGNER_INFO reserved bits 5-31 must be zero")
    signing_key = (signer_info >> 2) & 0x7
    if signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, SIGNING_KEY_NONE):
        raise MalformedEvidence(f"SNP report SIGNING_KEY {signing_key} is reserved")
    _mbz(report, 0x4C, 0x50, "after SIGNER_INFO")
    reported_tcb, = struct.unpack_from("<Q", report, 0x180)

    if version >= 3:
        fms = (report[0x188], report[0x189], report[0x18A])
        _mbz(report, 0x18B, 0x1A0, "after CPUID")
    else:
        fms = None
        _mbz(report, 0x188, 0x1A0, "after REPORTED_TCB")
    committed_tcb, = struct.unpack_from("<Q", report, 0x1E0)
    current_version = (report[0x1EA], report[0x1E9], report[0x1E8])
    _mbz(report, 0x1EB, 0x1EC, "after CURRENT_VERSION")
    committed_version = (report[0x1EE], report[0x1ED], report[0x1EC])
    _mbz(report, 0x1EF, 0x1F0, "after COMMITTED_VERSION")
    launch_tcb, = struct.unpack_from("<Q", report, 0x1F0)
    if version >= 4:
        launch_mit, current_mit = struct.unpack_from("<QQ", report, 0x1F8)
        _mbz(report, 0x208, SIGNED_END, "after CURRENT_MIT_VECTOR")
    else:
        launch_mit = current_mit = None
        _mbz(report, 0x1F8, SIGNED_END, "after LAUNCH_TCB")

    sig = report[SIGNATURE_OFFSET:]
    r = sig[:ECDSA_COMPONENT_SIZE]
    s = sig[ECDSA_COMPONENT_SIZE:2 * ECDSA_COMPONENT_SIZE]
    if sig_algo == SIG_ALGO_ECDSA_P384_SHA384:
        # P-384 scalars are 48 bytes: the upper 24 bytes of each 72-byte field and the rest of
        # the 512-byte signature area are zero.
        if any(r[P384_BYTES:]) or any(s[P384_BYTES:]) or any(sig[2 * ECDSA_COMPONENT_SIZE:]):
            raise MalformedEvidence("SNP report signature has non-zero bytes outside r and s")

    product = None
    if fms is not None:
        product = product_from_cpuid(fms[0], fms[1])
    for name, raw_tcb in (("CURRENT_TCB", current_tcb), ("REPORTED_TCB", reported_tcb),
                          ("COMMITTED_TCB", committed_tcb), ("LAUNCH_TCB", launch_tcb)):
        # Without CPUID (v2) the layout is Milan/Genoa's; Turin firmware emits v3 or later.
        if not tcb_reserved_ok(raw_tcb, product):
            raise MalformedEvidence(f"SNP report {name} has non-zero reserved bytes")

    return ParsedSnpReport(
        raw=report, version=version, guest_svn=guest_svn, policy=policy,
        family_id=report[0x10:0x20], image_id=report[0x20:0x30], vmpl=vmpl,
        signature_algo=sig_algo, current_tcb_raw=current_tcb, platform_info=platform_info,
        signer_info=signer_info, report_data=report[0x50:0x90], measurement=report[0x90:0xC0],
        host_data=report[0xC0:0xE0], id_key_digest=report[0xE0:0x110],
        author_key_digest=report[0x110:0x140], report_id=report[0x140:0x160],
        report_id_ma=report[0x160:0x180], reported_tcb_raw=reported_tcb, cpuid_fam_mod_step=fms,
        chip_id=report[0x1A0:0x1E0], committed_tcb_raw=committed_tcb,
        current_version=current_version, committed_version=committed_version,
        launch_tcb_raw=launch_tcb, launch_mit_vector=launch_mit, current_mit_vector=current_mit,
        signature_r=r, signature_s=s, embedded_certs=_parse_cert_table(tail),
    )


def _parse_cert_table(table: bytes) -> dict[str, bytes]:
    """GHCB extended-report certificate table; empty input means no table."""
    if not table:
        return {}
    if len(table) > MAX_TABLE_BYTES:
        raise MalformedEvidence("SNP certificate table too large")
    entries: list[tuple[str, int, int]] = []
    pos = 0
    while True:
        if pos + CERT_TABLE_ENTRY > len(table):
            raise MalformedEvidence("SNP certificate table: missing terminating entry")
        guid = uuid.UUID(bytes=table[pos:pos + 16])  # RFC 4122 byte order, as go-sev-guest
        offset, length = struct.unpack_from("<II", table, pos + 16)
        pos += CERT_TABLE_ENTRY
        if guid.int == 0 and offset == 0 and length == 0:
            break
        if len(entries) >= MAX_CERT_TABLE_ENTRIES:
            raise MalformedEvidence("SNP certificate table has too many entries")
        role = GUID_ROLES.get(guid)
        if role is None:
            continue  # unknown GUIDs (e.g. extra platform info) are ignored
        entries.append((role, offset, length))
    out: dict[str, bytes] = {}
    for role, offset, length in entries:
        if offset < pos or length == 0 or offset + length > len(table):
            raise MalformedEvidence(f"SNP certificate table entry for {role} is out of bounds")
        if role in out:
            raise MalformedEvidence(f"SNP certificate table has two {role} entries")
        out[role] = table[offset:offset + length]
    return out
