"""Byte-level builders for AMD SEV-SNP evidence: AMD-shaped certificates, reports, the cert table.

Why here: the committed SNP test vectors (tests/data/snp/make_vectors.py) and the per-cluster
emulated SNP hardware (snp_issuer) share one serialisation, written from AMD's documents
independently of the parser under test:
- ATTESTATION_REPORT: SEV-SNP Firmware ABI specification (pub. 56860); signature ECDSA P-384
  over bytes 0x000-0x29F, r and s little-endian in 72-byte fields.
- VCEK/VLEK extensions (structVersion, productName, blSPL/teeSPL/snpSPL/ucodeSPL/fmcSPL,
  hwID, csp_id) and KDS chain shape: VCEK/KDS interface specification (pub. 57230).
- Certificate table of an extended guest request (what configfs-tsm returns as `auxblob`):
  GHCB specification (pub. 56421), GUID/offset/length entries ending in an all-zero entry.
Nothing here does I/O; private keys are arguments and are never serialised.
"""
from __future__ import annotations

import struct
import uuid
from datetime import datetime
from typing import Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
AMD_OID = "1.3.6.1.4.1.3704.1"
GUIDS = {"vcek": "63da758d-e664-4564-adc5-f4b93be8accd", "vlek": "a8074bc2-a25a-483e-aae6-39c045a0b8a1",
         "ask": "4ab7b379-bbac-4fe4-a02f-05aef327c782", "ark": "c0b406a4-a803-4952-9743-3fb6014cd0ae"}
_SPL_ARCS = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8", "fmc": "3.9"}


def name(cn: str, organization: str = "Conclave Test CA (not AMD)") -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def ia5(text: str) -> bytes:
    return bytes([0x16, len(text)]) + text.encode()


def certificate(subject: x509.Name, issuer: x509.Name, public_key, signing_key, serial: int, nb: datetime,
                na: datetime, extensions: Mapping[str, bytes] | None = None, ca: bool = False) -> x509.Certificate:
    """An AMD-shaped certificate signed RSASSA-PSS SHA-384 (salt 48) by an RSA ARK/ASK key."""
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(public_key).serial_number(serial).not_valid_before(nb).not_valid_after(na))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    for oid, value in (extensions or {}).items():
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return b.sign(signing_key, hashes.SHA384(), rsa_padding=PSS)


def ek_extensions(product: str, tcb: Mapping[str, int], hwid: bytes | None, *, wrap_hwid: bool = False,
                  csp: str | None = None) -> dict[str, bytes]:
    """VCEK/VLEK extensions as KDS issues them (raw DER values keyed by OID)."""
    ext = {AMD_OID + ".1": der_int(1), AMD_OID + ".2": ia5(product)}
    for k, v in tcb.items():
        ext[f"{AMD_OID}.{_SPL_ARCS[k]}"] = der_int(v)
    for unused in ("3.4", "3.5", "3.6", "3.7"):
        ext[f"{AMD_OID}.{unused}"] = der_int(0)
    if hwid is not None:
        ext[AMD_OID + ".4"] = (bytes([0x04, len(hwid)]) + hwid) if wrap_hwid else hwid
    if csp is not None:
        ext[AMD_OID + ".5"] = ia5(csp)
    return ext


def tcb_raw(product: str, t: Mapping[str, int]) -> bytes:
    """TCB_VERSION bytes in the product's layout (Turin: FMC first)."""
    if product == "turin":
        return bytes([t["fmc"], t["bootloader"], t["tee"], t["snp"], 0, 0, 0, t["microcode"]])
    return bytes([t["bootloader"], t["tee"], 0, 0, 0, 0, t["snp"], t["microcode"]])


def report(*, version: int, product: str, tcb: Mapping[str, int], chip_id: bytes, signer_info: int,
           key: ec.EllipticCurvePrivateKey, vmpl: int = 0, sig_algo: int = 1,
           cpuid: tuple[int, int, int] | None = None, policy: int = 0x30000,
           current_tcb: Mapping[str, int] | None = None, report_data: bytes = bytes([0xC5]) * 64,
           measurement: bytes = bytes(range(48)), host_data: bytes = bytes(32),
           report_id: bytes = bytes([0x11]) * 32) -> bytes:
    """An ATTESTATION_REPORT (ABI spec 56860) signed over 0x000-0x29F with `key`."""
    r = bytearray(0x4A0)
    struct.pack_into("<IIQ", r, 0, version, 1, policy)
    r[0x10:0x20] = bytes(range(0x10, 0x20))               # FAMILY_ID
    r[0x20:0x30] = bytes(range(0x20, 0x30))               # IMAGE_ID
    struct.pack_into("<II", r, 0x30, vmpl, sig_algo)
    r[0x38:0x40] = tcb_raw(product, current_tcb or tcb)   # CURRENT_TCB
    struct.pack_into("<QI", r, 0x40, 0x1, signer_info)    # PLATFORM_INFO (SMT), SIGNER_INFO
    r[0x50:0x90] = report_data                            # REPORT_DATA
    r[0x90:0xC0] = measurement                            # MEASUREMENT
    r[0xC0:0xE0] = host_data                              # HOST_DATA
    r[0x140:0x160] = report_id                            # REPORT_ID
    r[0x160:0x180] = bytes([0xFF]) * 32                   # REPORT_ID_MA
    r[0x180:0x188] = tcb_raw(product, tcb)                # REPORTED_TCB
    if cpuid is not None:
        r[0x188:0x18B] = bytes(cpuid)
    r[0x1A0:0x1E0] = chip_id
    r[0x1E0:0x1E8] = tcb_raw(product, tcb)                # COMMITTED_TCB
    r[0x1E8:0x1EB] = bytes([29, 55, 1])                   # CURRENT build/minor/major
    r[0x1EC:0x1EF] = bytes([29, 55, 1])                   # COMMITTED build/minor/major
    r[0x1F0:0x1F8] = tcb_raw(product, tcb)                # LAUNCH_TCB
    if version >= 5:
        struct.pack_into("<QQ", r, 0x1F8, 0x3, 0x3)       # LAUNCH/CURRENT_MIT_VECTOR
    sig = key.sign(bytes(r[:0x2A0]), ec.ECDSA(hashes.SHA384()))
    rr, ss = decode_dss_signature(sig)
    r[0x2A0:0x2A0 + 72] = rr.to_bytes(72, "little")
    r[0x2A0 + 72:0x2A0 + 144] = ss.to_bytes(72, "little")
    return bytes(r)


def cert_table(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """GHCB extended-report certificate table (GUID, offset, length; zero terminator)."""
    header = 24 * (len(entries) + 1)
    out, blobs, offset = bytearray(), bytearray(), header
    for role, blob in entries:
        out += uuid.UUID(GUIDS[role]).bytes + struct.pack("<II", offset, len(blob))
        blobs += blob
        offset += len(blob)
    return bytes(out + bytes(24) + blobs)


def crl(issuer: x509.Name, signing_key, revoked: Sequence[int], *, last: datetime, nxt: datetime,
        revoked_at: datetime | None = None) -> x509.CertificateRevocationList:
    """A KDS-shaped CRL: issued by the ARK, RSASSA-PSS SHA-384."""
    b = x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(last).next_update(nxt)
    for serial in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(revoked_at or last).build())
    return b.sign(signing_key, hashes.SHA384(), rsa_padding=PSS)


def pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def der(c) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)
