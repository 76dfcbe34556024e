"""Regression tests for corrupt certificates in NVIDIA evidence (found by benchmarks/fuzz_evidence.py).

cryptography decodes certificate fields lazily: a certificate with a corrupt issuer or subject
loads fine and raises ValueError/TypeError only when the field is read (chain building, arch
sniffing). parse() must turn that into MalformedEvidence, and verify() must do the same for
certificates passed via `certs`.
"""
from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from conclave.runtime.attestation import nvgpu
from conclave.runtime.attestation.core import AttestationError, MalformedEvidence, Reason

DATA = Path(__file__).resolve().parent.parent / "data" / "nvgpu"
EXPECTED = json.loads((DATA / "expected.json").read_text())
CHAIN = x509.load_pem_x509_certificates((DATA / "chain.pem").read_bytes())
ROOTS = x509.load_pem_x509_certificates((DATA / EXPECTED["trusted_root"]).read_bytes())
EVIDENCE = (DATA / "evidence.bin").read_bytes()
AT = datetime.fromisoformat(EXPECTED["verification_time"])


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at pos."""
    tag, length = der[pos], der[pos + 1]
    start = pos + 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(der[start:start + n], "big")
        start += n
    return tag, start, start + length


def _tbs_fields(der: bytes) -> list[tuple[int, int, int, int]]:
    """(tag, element start, content start, content end) of each TBSCertificate field."""
    _, cert_start, _ = _tlv(der, 0)
    _, pos, tbs_end = _tlv(der, cert_start)
    fields = []
    while pos < tbs_end:
        tag, start, end = _tlv(der, pos)
        fields.append((tag, pos, start, end))
        pos = end
    return fields


def _first_name_value(der: bytes, field_index: int) -> int:
    """Offset of the tag byte of the first AttributeValue in the Name at TBS field `field_index`."""
    _, _, name_start, _ = _tbs_fields(der)[field_index]
    _, rdn_start, _ = _tlv(der, name_start)          # SET (RDN)
    _, atv_start, _ = _tlv(der, rdn_start)           # SEQUENCE (AttributeTypeAndValue)
    _, _, oid_end = _tlv(der, atv_start)             # OID
    return oid_end


def _mutated_leaf(edit) -> bytes:
    der = bytearray(CHAIN[0].public_bytes(Encoding.DER))
    edit(der)
    return bytes(der)


def _retag_issuer_value(der: bytearray) -> None:
    der[_first_name_value(bytes(der), 3)] = 0x03  # BIT STRING where a string is expected (TypeError)


def _break_subject_value(der: bytearray) -> None:
    der[_first_name_value(bytes(der), 5)] = 0x01  # BOOLEAN with a multi-byte body (ValueError)


def _bad_version(der: bytearray) -> None:
    tag, _, start, end = _tbs_fields(bytes(der))[0]
    assert tag == 0xA0
    der[end - 1] = 0x07  # X.509 v8: x509.InvalidVersion


CORRUPTIONS = {"issuer": _retag_issuer_value, "subject": _break_subject_value, "version": _bad_version}


def _pem(der: bytes) -> str:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


def _bundle_with_leaf(leaf_der: bytes) -> bytes:
    pem = _pem(leaf_der) + "".join(c.public_bytes(Encoding.PEM).decode() for c in CHAIN[1:])
    entry = {"evidence": base64.b64encode(EVIDENCE).decode(), "certificate": pem, "arch": "HOPPER"}
    return json.dumps([entry]).encode()


def test_corruptions_reproduce_lazy_decoding_failures() -> None:
    """Guard: the inputs below really are the fuzzer's crash class, else the tests prove nothing."""
    issuer_broken = x509.load_der_x509_certificate(_mutated_leaf(_retag_issuer_value))
    with pytest.raises(TypeError):
        issuer_broken.issuer  # noqa: B018
    subject_broken = x509.load_der_x509_certificate(_mutated_leaf(_break_subject_value))
    with pytest.raises(ValueError):
        subject_broken.subject  # noqa: B018
    with pytest.raises(Exception) as info:  # noqa: PT011 - at load or at .version, depending on the version
        x509.load_der_x509_certificate(_mutated_leaf(_bad_version)).version  # noqa: B018
    assert not isinstance(info.value, AttestationError)


def test_intact_bundle_with_declared_arch_parses() -> None:
    parsed = nvgpu.parse(_bundle_with_leaf(CHAIN[0].public_bytes(Encoding.DER)))
    assert len(parsed.devices[0].chain) == len(CHAIN)


@pytest.mark.parametrize("field", sorted(CORRUPTIONS))
def test_corrupt_certificate_in_evidence_is_malformed_at_parse(field: str) -> None:
    with pytest.raises(MalformedEvidence) as info:
        nvgpu.parse(_bundle_with_leaf(_mutated_leaf(CORRUPTIONS[field])))
    assert info.value.reason == Reason.MALFORMED


@pytest.mark.parametrize("field", ["issuer", "subject"])
def test_corrupt_certificate_in_certs_argument_is_malformed_at_verify(field: str) -> None:
    corrupt = x509.load_der_x509_certificate(_mutated_leaf(CORRUPTIONS[field]))
    parsed = nvgpu.parse(EVIDENCE)
    with pytest.raises(MalformedEvidence) as info:
        nvgpu.verify(parsed, at=AT, certs=[corrupt, *CHAIN], nonce=bytes.fromhex(EXPECTED["nonce"]),
                     trusted_roots=ROOTS)
    assert info.value.reason == Reason.MALFORMED


def test_load_pem_chain_decodes_every_certificate() -> None:
    pem = (CHAIN[0].public_bytes(Encoding.PEM).decode() + _pem(_mutated_leaf(_retag_issuer_value))).encode()
    with pytest.raises(MalformedEvidence):
        nvgpu.load_pem_chain(pem)
    assert len(nvgpu.load_pem_chain(CHAIN[0].public_bytes(Encoding.PEM))) == 1
