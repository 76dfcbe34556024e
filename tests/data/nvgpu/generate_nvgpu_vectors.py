"""Generate the NVIDIA GPU test vectors in this folder (a test CA shaped like NVIDIA's).

Run:  .venv/bin/python tests/data/nvgpu/generate_nvgpu_vectors.py [OUTPUT_DIR]

Why: the real vectors (../shared/vectors/nvgpu) are all valid; each verification step needs a
vector that is valid except for exactly one defect, and those can only be signed with keys we
hold. The chain copies the shape of NVIDIA's: root "Device Identity CA" -> "GH100 Identity" ->
"GH100 Provisioner ICA 1" -> per-chip "GSP BROM" -> per-boot "GSP FMC LF" leaf (P-384,
ECDSA-SHA384, DICE FWID extension 2.23.133.5.4.1 and NVIDIA's device-id SAN). The evidence is
an SPDM 1.1 GET_MEASUREMENTS request || MEASUREMENTS response signed by the leaf key.

Private keys live only in memory while this runs; nothing secret is written. Outputs are
described in PROVENANCE.md and expected.json (written here too).
"""
from __future__ import annotations

import base64
import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

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
                   record_len_delta: int = 0, trailing: bytes = b"", project_sku: bytes | None = None) -> bytes:
    """SPDM evidence signed by `sign_key`. project_sku (opaque type 18, e.g. b"0200") completes the
    board identity that names the VBIOS RIM (nvgpu_rim.vbios_rim_id); absent by default."""
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    record = b""
    for index, value in measurement_values().items():
        dmtf = bytes([0x01]) + len(value).to_bytes(2, "little") + value
        record += bytes([index, 0x01]) + len(dmtf).to_bytes(2, "little") + dmtf
    opaque = (_tlv(3, b"550.90.07\x00") + _tlv(6, bytes.fromhex("009f009601000000"))
              + _tlv(15, b"882\x00\x00\x00\x00\x00\x00") + _tlv(17, b"1010\x00")
              + _tlv(12, b"".join(i.to_bytes(4, "little") for i in (1, 1, 4, 1, 1, 1, 1, 1))))
    if project_sku is not None:
        opaque += _tlv(18, project_sku + b"\x00")
    if fwid is not None:
        opaque += _tlv(20, fwid)
    response = (bytes([0x11, 0x60, 0x00, 0x00, len(measurement_values())])
                + (len(record) + record_len_delta).to_bytes(3, "little") + record
                + hashlib.sha256(b"responder nonce").digest()
                + len(opaque).to_bytes(2, "little") + opaque)
    der = sign_key.sign(request + response, ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big") + trailing


# --- the vector set ------------------------------------------------------------------------

def _case(evidence: str, chain: str, outcome: str, *, step: str | None = None, nonce: bytes = NONCE,
          why: str) -> dict:
    return {"evidence": evidence, "chain": chain, "nonce": nonce.hex(), "outcome": outcome,
            "failed_step": step, "why": why}


def generate(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    pki = make_pki()
    other_pki = make_pki("Conclave Test Device Identity CA")  # same names, different keys
    device = make_device(pki, "4143000000000001")
    device2 = make_device(pki, "4143000000000002")
    expired = TestDevice(device.brom_key, device.brom, device.leaf_key,
                         _cert(device.leaf.subject, device.leaf_key, device.brom.subject, device.brom_key,
                               ca=False, leaf_fwid=FWID, not_after=EXPIRED_NOT_AFTER, serial=301))
    brom_not_ca = make_device(pki, "4143000000000003", brom_ca=False)
    untrusted = make_device(other_pki, "4143000000000004")
    stranger = _key()

    files: dict[str, bytes] = {
        "test_root.pem": _pem(pki.root),
        "chain.pem": _pem(*device.chain(pki)),
        "evidence.bin": build_evidence(device.leaf_key),
        "evidence_trailing_byte.bin": build_evidence(device.leaf_key, trailing=b"\x00"),
        "evidence_no_fwid.bin": build_evidence(device.leaf_key, fwid=None),
        "neg_parse_record_length.bin": build_evidence(device.leaf_key, record_len_delta=1),
        "neg_chain_untrusted_root.pem": _pem(*untrusted.chain(other_pki)),
        "neg_chain_untrusted_root.bin": build_evidence(untrusted.leaf_key),
        "neg_chain_expired_leaf.pem": _pem(*expired.chain(pki)),
        "neg_chain_missing_intermediate.pem": _pem(device.leaf, device.brom, pki.identity, pki.root),
        "neg_chain_no_leaf.pem": _pem(device.brom, pki.ica, pki.identity, pki.root),
        "neg_chain_brom_not_ca.pem": _pem(*brom_not_ca.chain(pki)),
        "neg_chain_brom_not_ca.bin": build_evidence(brom_not_ca.leaf_key),
        "neg_signature_wrong_key.bin": build_evidence(stranger),
        "neg_fwid_mismatch.bin": build_evidence(device.leaf_key, fwid=OTHER_FWID),
        "neg_nonce_other.bin": build_evidence(device.leaf_key, nonce=OTHER_NONCE),
    }
    bundle = [{"arch": "HOPPER", "nonce": NONCE.hex(), "version": "1.0",
               "evidence": base64.b64encode(build_evidence(d.leaf_key)).decode(),
               "certificate": base64.b64encode(_pem(*d.chain(pki))).decode()}
              for d in (device, device2)]
    files["evidence_bundle.json"] = json.dumps(bundle, indent=1).encode()
    bad_bundle = [dict(bundle[0]), dict(bundle[1])]
    bad_bundle[1]["evidence"] = base64.b64encode(build_evidence(stranger)).decode()
    files["neg_bundle_second_signature.json"] = json.dumps(bad_bundle, indent=1).encode()

    cases = {
        "valid": _case("evidence.bin", "chain.pem", "ok", why="all steps pass"),
        "valid_trailing_byte": _case("evidence_trailing_byte.bin", "chain.pem", "ok",
                                     why="one unsigned byte after the signature is ignored"),
        "valid_no_fwid": _case("evidence_no_fwid.bin", "chain.pem", "ok",
                               why="firmware without an FWID: comparison skipped with a note (nvtrust)"),
        "valid_bundle": _case("evidence_bundle.json", "", "ok", why="SDK JSON list, two GPUs, chains inside"),
        "parse_record_length": _case("neg_parse_record_length.bin", "chain.pem", "malformed",
                                     step="nvgpu.01.parse",
                                     why="MeasurementRecordLength one byte too long (signed correctly)"),
        "chain_untrusted_root": _case("neg_chain_untrusted_root.bin", "neg_chain_untrusted_root.pem",
                                      "chain_untrusted", step="nvgpu.02.cert_chain",
                                      why="a complete chain to another root with the same names"),
        "chain_expired_leaf": _case("evidence.bin", "neg_chain_expired_leaf.pem", "cert_expired",
                                    step="nvgpu.02.cert_chain",
                                    why="same leaf key, certificate expired 2026-01-01"),
        "chain_missing_intermediate": _case("evidence.bin", "neg_chain_missing_intermediate.pem",
                                            "chain_untrusted", step="nvgpu.02.cert_chain",
                                            why="the Provisioner ICA is left out"),
        "chain_no_leaf": _case("evidence.bin", "neg_chain_no_leaf.pem", "certs_missing",
                               step="nvgpu.02.cert_chain", why="the FMC leaf is left out"),
        "chain_brom_not_ca": _case("neg_chain_brom_not_ca.bin", "neg_chain_brom_not_ca.pem",
                                   "chain_untrusted", step="nvgpu.02.cert_chain",
                                   why="the BROM certificate that signs the leaf is not a CA"),
        "signature_wrong_key": _case("neg_signature_wrong_key.bin", "chain.pem", "signature_invalid",
                                     step="nvgpu.03.signature", why="signed by a key the leaf does not hold"),
        "fwid_mismatch": _case("neg_fwid_mismatch.bin", "chain.pem", "chain_untrusted", step="nvgpu.04.fwid",
                               why="reported FWID differs from the one certified in the leaf"),
        "nonce_mismatch": _case("neg_nonce_other.bin", "chain.pem", "nonce_mismatch", step="nvgpu.05.nonce",
                                why="the GPU answered another nonce"),
        "bundle_second_signature": _case("neg_bundle_second_signature.json", "", "signature_invalid",
                                         step="nvgpu.03.signature[1]",
                                         why="second device of a bundle signed by a stranger key"),
    }
    expected = {"verification_time": VERIFY_AT, "trusted_root": "test_root.pem", "nonce": NONCE.hex(),
                "fwid": FWID.hex(), "measurements": {str(k): v.hex() for k, v in measurement_values().items()},
                "driver_version": "550.90.07", "vbios_version": "96.00.9f.00.01", "cases": cases}
    files["expected.json"] = json.dumps(expected, indent=1, sort_keys=True).encode() + b"\n"
    for name, data in files.items():
        (out / name).write_bytes(data)
    return expected


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    generate(target)
    print(f"wrote NVIDIA test vectors to {target}")
