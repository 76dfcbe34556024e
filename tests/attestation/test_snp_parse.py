"""SNP report and certificate parsing: every bound, every reserved range, fuzzing (structure only)."""
from __future__ import annotations

import struct
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conclave.runtime.attestation import snp, snp_certs
from conclave.runtime.attestation.core import MalformedEvidence, Reason, VerificationFailed, claims_to_json
from conclave.runtime.attestation.snp_der import DerError, parse_certificate
from conclave.runtime.attestation.snp_report import decode_tcb, product_from_cpuid

DATA = Path(__file__).resolve().parent.parent / "data" / "snp"
V2 = (DATA / "milan" / "report_vcek_v2.bin").read_bytes()
V3 = (DATA / "milan" / "report_vlek_v3.bin").read_bytes()
V5 = (DATA / "turin" / "report_vcek_v5.bin").read_bytes()
VCEK = (DATA / "milan" / "vcek.der").read_bytes()


def patched(base: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(base)
    out[offset:offset + len(value)] = value
    return bytes(out)


def malformed(data: bytes) -> None:
    with pytest.raises(MalformedEvidence) as ei:
        snp.parse(data)
    assert ei.value.reason == Reason.MALFORMED


def test_valid_reports_parse():
    for data, version in ((V2, 2), (V3, 3), (V5, 5)):
        p = snp.parse(data)
        assert p.version == version and len(p.raw) == 1184 and p.signed_bytes == data[:0x2A0]


@pytest.mark.parametrize("size", [0, 1, 0x2A0, 1183])
def test_short_input(size):
    malformed(V2[:size])


@pytest.mark.parametrize("version", [0, 1, 6, 7, 0xFFFFFFFF])
def test_unsupported_versions(version):
    malformed(patched(V2, 0, struct.pack("<I", version)))


def test_vmpl_bound():
    malformed(patched(V2, 0x30, struct.pack("<I", 4)))
    assert snp.parse(patched(V2, 0x30, struct.pack("<I", 3))).vmpl == 3


@pytest.mark.parametrize("signer_info", [0x20, 0x80000000, 2 << 2, 6 << 2])
def test_signer_info_reserved(signer_info):
    malformed(patched(V2, 0x48, struct.pack("<I", signer_info)))


def test_unsigned_report_parses_but_does_not_verify():
    p = snp.parse(patched(V2, 0x48, struct.pack("<I", 7 << 2)))
    assert p.signing_key == "none"
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(p, at=datetime(2026, 1, 15, tzinfo=timezone.utc))
    assert ei.value.reason == Reason.UNSUPPORTED


@pytest.mark.parametrize("base,offset", [
    (V2, 0x4C), (V2, 0x188), (V2, 0x19F), (V3, 0x18B), (V3, 0x19F), (V2, 0x1EB), (V2, 0x1EF),
    (V2, 0x1F8), (V3, 0x200), (V2, 0x29F), (V5, 0x208), (V5, 0x29F),
])
def test_reserved_ranges_must_be_zero(base, offset):
    malformed(patched(base, offset, b"\x01"))


def test_version_specific_fields_are_not_reserved():
    assert snp.parse(patched(V3, 0x188, b"\x19\x11\x01")).cpuid_product == "genoa"
    p = snp.parse(patched(V5, 0x1F8, struct.pack("<QQ", 7, 9)))
    assert (p.launch_mit_vector, p.current_mit_vector) == (7, 9)
    assert snp.parse(V2).launch_mit_vector is None
    v4 = snp.parse(patched(V5, 0, struct.pack("<I", 4)))  # v4: read like v5
    assert v4.version == 4 and v4.launch_mit_vector == 3


@pytest.mark.parametrize("offset", [0x38 + 2, 0x180 + 5, 0x1E0 + 3, 0x1F0 + 4])
def test_tcb_reserved_bytes_milan_layout(offset):
    malformed(patched(V2, offset, b"\x01"))


@pytest.mark.parametrize("offset", [0x180 + 4, 0x180 + 6, 0x38 + 5])
def test_tcb_reserved_bytes_turin_layout(offset):
    malformed(patched(V5, offset, b"\x01"))


@pytest.mark.parametrize("offset", [0x2A0 + 48, 0x2A0 + 71, 0x2A0 + 72 + 48, 0x2A0 + 144, 0x49F])
def test_signature_padding_must_be_zero(offset):
    malformed(patched(V2, offset, b"\x01"))


def test_tcb_layouts():
    raw = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little")
    assert decode_tcb(raw, "turin") == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9}
    raw = int.from_bytes(bytes([3, 0, 0, 0, 0, 0, 8, 115]), "little")
    assert decode_tcb(raw, "milan") == decode_tcb(raw, "genoa") == decode_tcb(raw, None) == {
        "bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


def test_product_from_cpuid():
    assert product_from_cpuid(0x19, 0x01) == "milan"
    assert product_from_cpuid(0x19, 0x11) == "genoa"
    assert product_from_cpuid(0x19, 0xA0) == "genoa"
    assert product_from_cpuid(0x1A, 0x02) == "turin"
    assert product_from_cpuid(0x1A, 0x11) == "turin"
    assert product_from_cpuid(0x17, 0x31) is None
    assert product_from_cpuid(0x1A, 0x50) is None


def test_trailing_bytes_must_be_a_certificate_table():
    malformed(V2 + b"\x00")            # too short for a table entry
    malformed(V2 + b"\x01" * 24)       # no terminator
    good = (DATA / "milan" / "report_vcek_v2_extended.bin").read_bytes()
    table = bytearray(good[1184:])
    struct.pack_into("<I", table, 16, 0x10)  # first entry's offset points into the header
    malformed(V2 + bytes(table))
    table = bytearray(good[1184:])
    struct.pack_into("<I", table, 20, 0xFFFFFF)  # length past the end
    malformed(V2 + bytes(table))


def test_certificate_table_ignores_unknown_guids():
    unknown = uuid.UUID("ecae0c0f-9502-43b1-afa2-0ae2e0d565b6").bytes + struct.pack("<II", 48, 4)
    p = snp.parse(V2 + unknown + bytes(24) + b"abcd")
    assert dict(p.embedded_certs) == {}


def test_looks_like():
    assert snp.looks_like(V2) and snp.looks_like(V3) and snp.looks_like(V5)
    assert not snp.looks_like(V2[:1000])
    assert not snp.looks_like(patched(V2, 0, b"\x04\x00\x02\x00"))   # a TDX v4 quote header
    assert not snp.looks_like(patched(V2, 0x34, struct.pack("<I", 0)))
    assert not snp.looks_like(b'{"format": "conclave-sim"}' + bytes(1200))


def test_claims_names_and_types():
    c = snp.claims(snp.parse(V3))
    for name in ("version", "report_data", "debug", "tcb_status", "measurement", "host_data", "chip_id",
                 "vmpl", "policy", "guest_svn", "family_id", "image_id", "id_key_digest", "author_key_digest",
                 "report_id", "signing_key", "product", "reported_tcb", "committed_tcb", "current_tcb",
                 "launch_tcb", "platform_info", "smt_enabled"):
        assert name in c, name
    assert c["product"] == "milan" and c["signing_key"] == "vlek" and c["vmpl"] == 1
    assert isinstance(c["measurement"], bytes) and len(c["measurement"]) == 48
    assert c["debug"] is False and c["tcb_status"] is None
    assert snp.claims(snp.parse(V2))["product"] is None  # v2: no CPUID, unknown until verified
    debug = snp.claims(snp.parse(patched(V2, 0x08, struct.pack("<Q", 0x30000 | 1 << 19))))
    assert debug["debug"] is True
    j = claims_to_json(c)
    assert j["measurement"] == c["measurement"].hex() and j["reported_tcb"]["microcode"] == 219


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=1400))
def test_fuzz_parse_random_bytes_only_malformed(data):
    try:
        snp.parse(data)
    except MalformedEvidence:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1183), st.integers(1, 255)), min_size=1, max_size=8),
       st.sampled_from([V2, V3, V5]))
def test_fuzz_mutated_reports_parse_or_malformed(edits, base):
    data = bytearray(base)
    for pos, xor in edits:
        data[pos] ^= xor
    try:
        p = snp.parse(bytes(data))
    except MalformedEvidence:
        return
    snp.claims(p)  # claims never crash on a parsed report


# ------------------------------------------------------------------ certificates

def test_der_reader_matches_cryptography():
    from cryptography import x509
    ours = parse_certificate(VCEK)
    theirs = x509.load_der_x509_certificate(VCEK)
    assert ours.tbs == theirs.tbs_certificate_bytes and ours.signature == theirs.signature
    assert ours.serial_number == theirs.serial_number
    assert ours.not_after == theirs.not_valid_after_utc and ours.subject_cn == "SEV-VCEK"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VCEK) - 1), st.integers(1, 255))
def test_fuzz_der_reader_only_der_errors(pos, xor):
    data = bytearray(VCEK)
    data[pos] ^= xor
    try:
        parse_certificate(bytes(data))
    except DerError:
        pass


@pytest.mark.parametrize("value,expected", [
    (bytes(range(64)), bytes(range(64))),
    (b"\x04\x40" + bytes(range(64)), bytes(range(64))),
    (bytes(range(8)), bytes(range(8))),
    (b"\x04\x08" + bytes(range(8)), bytes(range(8))),
])
def test_hwid_encodings(value, expected):
    cert = parse_certificate(VCEK)
    fake = type(cert)(**{**cert.__dict__, "extensions": {**cert.extensions, snp_certs.OID_HWID: value}})
    assert snp_certs.hwid_of(fake) == expected


def test_hwid_bad_length():
    cert = parse_certificate(VCEK)
    fake = type(cert)(**{**cert.__dict__, "extensions": {**cert.extensions, snp_certs.OID_HWID: bytes(63)}})
    with pytest.raises(DerError):
        snp_certs.hwid_of(fake)


def test_serial_zero_vcek_loads_without_warnings(vectors_dir):
    """Deliberate choice: AMD VCEKs with serial 0 are read by our own DER reader, so no
    CryptographyDeprecationWarning is raised (or suppressed) and a future cryptography that
    refuses such certificates cannot break verification."""
    folder = vectors_dir / "snp" / "go-sev-guest-milan-v2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        col = snp.load_collateral(folder)
        vcek = [c for c in col.certs if c.subject_cn == "SEV-VCEK"][0]
        assert vcek.serial_number == 0
        snp.verify(snp.parse((folder / "report.bin").read_bytes()),
                   at=datetime.fromisoformat("2022-09-24T01:00:00+00:00"),
                   collateral=col)


def test_embedded_root_tampering_is_refused(monkeypatch, tmp_path):
    for name in ("amd_ark_milan.pem",):
        (tmp_path / name).write_bytes((DATA / "milan" / "ark.pem").read_bytes())
    monkeypatch.setattr(snp_certs, "ROOTS_DIR", tmp_path)
    with pytest.raises(snp_certs.CertError):
        snp_certs.embedded_root("milan")
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(snp.parse(V2), at=datetime.fromisoformat("2026-01-15T00:00:00+00:00"),
                   certs=[(DATA / "milan" / "cert_chain.pem").read_bytes(), VCEK])
    assert ei.value.reason == Reason.CHAIN_UNTRUSTED and ei.value.steps[-1].step == "snp.02.ark"
