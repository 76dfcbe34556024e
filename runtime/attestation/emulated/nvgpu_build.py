"""Issuer side of NVIDIA H100 evidence: a device-identity hierarchy shaped like NVIDIA's and SPDM
GET_MEASUREMENTS evidence signed by a device's attestation key.

Why here (not in tests): local mode's emulated GPUs (emulated/nvgpu_device.py) sign their evidence
with it, and the test vectors (tests/data/nvgpu/generate_nvgpu_vectors.py) are built from it too.
The chain copies the shape of NVIDIA's (../shared/vectors/nvgpu): root "Device Identity CA" ->
"GH100 Identity" -> "GH100 Provisioner ICA 1" -> per-chip "GSP BROM" -> per-boot "GSP FMC LF"
leaf (P-384, ECDSA-SHA384, DICE FWID extension 2.23.133.5.4.1 and NVIDIA's device-id SAN). The
evidence is an SPDM 1.1 GET_MEASUREMENTS request || MEASUREMENTS response signed by the leaf key.
Nothing here is trusted by production verification: a verifier trusts this root only when a
caller passes it explicitly (trusted_roots).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

VERIFY_AT = "2026-06-01T00:00:00+00:00"
NOT_BEFORE = datetime(2025, 1, 1, tzinfo=timezone.utc)
NOT_AFTER = datetime(2036, 1, 1, tzinfo=timezone.utc)
EXPIRED_NOT_AFTER = datetime(2026, 1, 1, tzinfo=timezone.utc)
NONCE = bytes.fromhex("c0ffee00" * 8)
OTHER_NONCE = bytes.fromhex("0badf00d" * 8)
FWID = hashlib.sha384(b"conclave test GSP FMC firmware").digest()
OTHER_FWID = hashlib.sha384(b"some other firmware").digest()
SHA384_OID_DER = bytes.fromhex("0609608648016503040202")
DICE_TCB_INFO_OID = x509.ObjectIdentifier("2.23.133.5.4.1")
NVIDIA_DEVICE_ID_SAN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.412.274.1")


# --- DER helpers (just enough for the DICE extension and the SAN otherName) ----------------

def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def nvidia_dice_extension(fwid: bytes, key: ec.EllipticCurvePublicKey) -> bytes:
    """NVIDIA's shape: SEQUENCE { INTEGER 1, SubjectPublicKeyInfo, SEQUENCE { sha384, OCTET STRING } }."""
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fwid_seq = _der(0x30, SHA384_OID_DER + _der(0x04, fwid))
    return _der(0x30, _der(0x02, b"\x01") + spki + fwid_seq)


def _name(cn: str, serial: str | None = None, org: str = "Conclave Test NVIDIA-shaped CA") -> x509.Name:
    attrs = []
    if serial:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    attrs += [x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
              x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
              x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    return x509.Name(attrs)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _ski(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, not_after: datetime = NOT_AFTER,
          leaf_fwid: bytes | None = None, device_id: str | None = None,
          serial: int = 1) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(serial)
         .not_valid_before(NOT_BEFORE).not_valid_after(not_after)
         .add_extension(_ski(key), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                        critical=False))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                            critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                            critical=True)
    if leaf_fwid is not None:
        b = b.add_extension(x509.UnrecognizedExtension(DICE_TCB_INFO_OID,
                                                       nvidia_dice_extension(leaf_fwid, key.public_key())),
                            critical=False)
    if device_id is not None:
        other = x509.OtherName(NVIDIA_DEVICE_ID_SAN_OID, _der(0x0C, device_id.encode()))
        b = b.add_extension(x509.SubjectAlternativeName([other]), critical=False)
    return b.sign(issuer_key, hashes.SHA384())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class TestPki:
    __test__ = False  # not a pytest test class
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    identity_key: ec.EllipticCurvePrivateKey
    identity: x509.Certificate
    ica_key: ec.EllipticCurvePrivateKey
    ica: x509.Certificate


def make_pki(label: str = "Conclave Test Device Identity CA") -> TestPki:
    root_key, identity_key, ica_key = _key(), _key(), _key()
    root_name = _name(label)
    identity_name = _name("Conclave Test GH100 Identity")
    ica_name = _name("Conclave Test GH100 Provisioner ICA 1")
    root = _cert(root_name, root_key, root_name, root_key, ca=True, serial=100)
    identity = _cert(identity_name, identity_key, root_name, root_key, ca=True, serial=101)
    ica = _cert(ica_name, ica_key, identity_name, identity_key, ca=True, serial=102)
    return TestPki(root_key, root, identity_key, identity, ica_key, ica)


@dataclass
class TestDevice:
    __test__ = False
    brom_key: ec.EllipticCurvePrivateKey
    brom: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate

    def chain(self, pki: TestPki) -> list[x509.Certificate]:
        return [self.leaf, self.brom, pki.ica, pki.identity, pki.root]


def make_device(pki: TestPki, serial: str, *, fwid: bytes = FWID, brom_ca: bool = True,
                leaf_not_after: datetime = NOT_AFTER) -> TestDevice:
    brom_key, leaf_key = _key(), _key()
    brom_name = _name("GH100 A01 GSP BROM", serial)
    leaf_name = _name("GH100 A01 GSP FMC LF", hashlib.sha1(serial.encode()).hexdigest().upper())
    brom = _cert(brom_name, brom_key, pki.ica.subject, pki.ica_key, ca=brom_ca, serial=200)
    leaf = _cert(leaf_name, leaf_key, brom_name, brom_key, ca=False, leaf_fwid=fwid,
                 device_id=f"NVIDIA:GH100:{serial[:16]}", serial=300, not_after=leaf_not_after)
    return TestDevice(brom_key, brom, leaf_key, leaf)


# --- SPDM evidence -------------------------------------------------------------------------

def _tlv(ftype: int, value: bytes) -> bytes:
    return ftype.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


def measurement_values(count: int = 8) -> dict[int, bytes]:
    return {i: hashlib.sha384(f"conclave test measurement {i}".encode()).digest() for i in range(1, count + 1)}


def build_evidence(sign_key: ec.EllipticCurvePrivateKey, *, nonce: bytes = NONCE, fwid: bytes | None = FWID,
                   record_len_delta: int = 0, trailing: bytes = b"", project_sku: bytes | None = None,
                   measurements: Mapping[int, bytes] | None = None) -> bytes:
    """SPDM evidence signed by `sign_key`. project_sku (opaque type 18, e.g. b"0200") completes the
    board identity that names the VBIOS RIM (nvgpu_rim.vbios_rim_id); absent by default.
    measurements: SPDM block index -> 48-byte value (default measurement_values())."""
    values = dict(measurement_values() if measurements is None else measurements)
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    record = b""
    for index, value in sorted(values.items()):
        dmtf = bytes([0x01]) + len(value).to_bytes(2, "little") + value
        record += bytes([index, 0x01]) + len(dmtf).to_bytes(2, "little") + dmtf
    opaque = (_tlv(3, b"550.90.07\x00") + _tlv(6, bytes.fromhex("009f009601000000"))
              + _tlv(15, b"882\x00\x00\x00\x00\x00\x00") + _tlv(17, b"1010\x00")
              + _tlv(12, b"".join(i.to_bytes(4, "little") for i in (1, 1, 4, 1, 1, 1, 1, 1))))
    if project_sku is not None:
        opaque += _tlv(18, project_sku + b"\x00")
    if fwid is not None:
        opaque += _tlv(20, fwid)
    response = (bytes([0x11, 0x60, 0x00, 0x00, len(values)])
                + (len(record) + record_len_delta).to_bytes(3, "little") + record
                + hashlib.sha256(b"responder nonce").digest()
                + len(opaque).to_bytes(2, "little") + opaque)
    der = sign_key.sign(request + response, ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big") + trailing


def pem(*certs: x509.Certificate) -> bytes:
    return _pem(*certs)


__all__ = ["VERIFY_AT", "NOT_BEFORE", "NOT_AFTER", "EXPIRED_NOT_AFTER", "NONCE", "OTHER_NONCE", "FWID", "OTHER_FWID",
           "nvidia_dice_extension", "TestPki", "make_pki", "TestDevice", "make_device", "measurement_values",
           "build_evidence", "pem"]
