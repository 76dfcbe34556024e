"""Real AMD SEV-SNP vectors (../shared/vectors/snp): parse to the values in expected.json and
verify against the embedded, pinned AMD ARKs at each vector's recorded verification time."""
from __future__ import annotations

import json
import re
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from conclave.runtime.attestation import snp, snp_certs
from conclave.runtime.attestation.core import Reason, VerificationFailed
from conclave.runtime.attestation.snp_der import parse_certificate

REPORT_VECTORS = ["go-sev-guest-milan-v2", "virtee-sev-milan-v2", "trustee-milan-v2-idblock",
                  "trustee-milan-v3-vlek-aws"]
ALL_STEPS = ["snp.01.parse", "snp.02.ark", "snp.03.ask", "snp.04.crl", "snp.05.endorsement_key",
             "snp.06.tcb", "snp.07.report_signature"]
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _load(folder: Path) -> dict:
    with open(folder / "expected.json") as f:
        return json.load(f)


def _times(text: str) -> list[datetime]:
    """expected.json records either one time or a range 'any time A..B' (both ends valid)."""
    return [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in _TS.findall(text)]


@pytest.fixture(params=REPORT_VECTORS)
def vector(request, vectors_dir) -> tuple[Path, dict]:
    folder = vectors_dir / "snp" / request.param
    assert folder.is_dir(), f"missing SNP vector {folder}"
    return folder, _load(folder)


def _tcb(d: dict) -> dict:
    return {"bootloader": d["bl"], "tee": d["tee"], "snp": d["snp"], "microcode": d["ucode"]}


def test_vector_parses_to_expected_values(vector):
    folder, exp = vector
    data = (folder / "report.bin").read_bytes()
    assert len(data) == exp["report_size"] == 1184
    assert snp.looks_like(data)
    parsed = snp.parse(data)
    rep = exp["report"]
    c = snp.claims(parsed)
    assert c["version"] == rep["version"]
    assert c["guest_svn"] == rep["guest_svn"]
    assert c["policy"] == int(rep["policy"], 16)
    assert c["vmpl"] == rep["vmpl"]
    assert c["signature_algo"] == rep["signature_algo"]
    assert c["platform_info"] == int(rep["platform_info"], 16)
    assert parsed.signer_info == int(rep["signer_info"], 16)
    for name in ("family_id", "image_id", "report_data", "measurement", "host_data", "id_key_digest",
                 "author_key_digest", "report_id", "report_id_ma", "chip_id"):
        assert c[name] == bytes.fromhex(rep[name]), name
    assert parsed.current_version == (rep["current_major"], rep["current_minor"], rep["current_build"])
    assert parsed.committed_version == (rep["committed_major"], rep["committed_minor"], rep["committed_build"])
    for which in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        assert c[which] == _tcb(rep[which]), which
        assert getattr(parsed, which + "_raw") == int(rep[which]["raw"], 16)
    fms = rep["cpuid_fam_mod_step"]
    assert parsed.cpuid_fam_mod_step == (tuple(fms) if fms else None)
    # DEBUG is policy bit 19 (ABI spec). Note: go-sev-guest's policy 0xb0000 HAS bit 19 set
    # (0xb = 0b1011 -> bits 16, 17, 19), although its PROVENANCE.md says "DEBUG bit 19 clear".
    assert c["debug"] is bool(int(rep["policy"], 16) >> 19 & 1)
    assert c["debug"] is (folder.name == "go-sev-guest-milan-v2")
    sig = exp["signature"]
    assert parsed.signature_r == bytes.fromhex(sig["r_le_hex"])
    assert parsed.signature_s == bytes.fromhex(sig["s_le_hex"])
    assert parsed.signed_bytes == data[exp["signed_region"]["start"]:exp["signed_region"]["end_exclusive"]]
    expected_key = "vlek" if (folder / "vlek.der").exists() else "vcek"
    assert c["signing_key"] == expected_key


def test_vector_verifies_at_recorded_time(vector):
    folder, exp = vector
    assert exp["crypto_checks"]["report_signature"] == "OK"
    parsed = snp.parse((folder / "report.bin").read_bytes())
    collateral = snp.load_collateral(folder)
    times = _times(exp["verification_time"])
    assert times, exp["verification_time"]
    for at in times:
        v = snp.verify(parsed, at=at, collateral=collateral)
        assert [s.step for s in v.steps] == ALL_STEPS and all(s.ok for s in v.steps)
        assert v.report_data == parsed.report_data
        assert v.claims["product"] == "milan"
        assert v.revocation_checked is False and v.notes
        assert v.simulated is False
        ext = exp["endorsement_cert"]["extensions"]
        assert v.claims["reported_tcb"] == {"bootloader": ext["spl_3.1"], "tee": ext["spl_3.2"],
                                            "snp": ext["spl_3.3"], "microcode": ext["spl_3.8"]}
        # Committed vs current TCB is exposed for policy, not judged here.
        same = v.claims["committed_tcb"] == v.claims["current_tcb"]
        assert same is exp["tcb_consistency"]["committed==current"]


def test_vector_verifies_with_certs_argument(vector):
    """The same chain passed as x509.Certificate objects (the CLI's --certs) in reverse order."""
    folder, exp = vector
    parsed = snp.parse((folder / "report.bin").read_bytes())
    pems = [p for p in folder.glob("*.pem")]
    with warnings.catch_warnings():  # the test itself loads the serial-0 VCEK with cryptography
        warnings.simplefilter("ignore")
        certs = [c for p in pems for c in x509.load_pem_x509_certificates(p.read_bytes())]
        certs += [x509.load_der_x509_certificate(p.read_bytes()) for p in folder.glob("*.der")]
    at = _times(exp["verification_time"])[0]
    v = snp.verify(parsed, at=at, certs=list(reversed(certs)))
    assert v.steps[-1].step == "snp.07.report_signature"


def test_vector_rejected_outside_validity(vector):
    folder, exp = vector
    parsed = snp.parse((folder / "report.bin").read_bytes())
    collateral = snp.load_collateral(folder)
    nb = datetime.fromisoformat(exp["endorsement_cert"]["not_before"])
    na = datetime.fromisoformat(exp["endorsement_cert"]["not_after"])
    for at in (nb - timedelta(seconds=1), na + timedelta(seconds=1)):
        with pytest.raises(VerificationFailed) as ei:
            snp.verify(parsed, at=at, collateral=collateral)
        assert ei.value.reason == Reason.CERT_EXPIRED
        assert ei.value.steps[-1].step == "snp.05.endorsement_key"


def test_vector_upstream_negatives(vector):
    """The negatives the upstream projects assert: byte 42 += 1 fails the signature; bumping
    REPORTED_TCB.bl (0x180) fails the TCB check against the VCEK/VLEK."""
    folder, exp = vector
    data = bytearray((folder / "report.bin").read_bytes())
    collateral = snp.load_collateral(folder)
    at = _times(exp["verification_time"])[0]
    sig = bytearray(data)
    sig[42] = (sig[42] + 1) & 0xFF
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(snp.parse(bytes(sig)), at=at, collateral=collateral)
    assert ei.value.reason == Reason.SIGNATURE_INVALID
    tcb = bytearray(data)
    tcb[0x180] = (tcb[0x180] + 1) & 0xFF
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(snp.parse(bytes(tcb)), at=at, collateral=collateral)
    assert ei.value.reason == Reason.TCB_MISMATCH


def test_virtee_negative_vcek_tampered(vectors_dir):
    """virtee milan_chain_invalid: VCEK DER byte 40 ^= 0xff must fail the chain."""
    folder = vectors_dir / "snp" / "virtee-sev-milan-v2"
    exp = _load(folder)
    vcek = bytearray((folder / "vcek.der").read_bytes())
    vcek[40] ^= 0xFF
    parsed = snp.parse((folder / "report.bin").read_bytes())
    at = _times(exp["verification_time"])[0]
    chain = (folder / "ask_ark_milan.pem").read_bytes()
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(parsed, at=at, certs=[chain, bytes(vcek)])
    # Byte 40 lies in the TBS signature AlgorithmIdentifier: the inner and outer algorithms
    # then differ, which the strict certificate reader refuses before any signature check.
    assert ei.value.reason == Reason.COLLATERAL_INVALID
    resigned = bytearray((folder / "vcek.der").read_bytes())
    resigned[-5] ^= 0xFF  # inside the signature value: well-formed, but the ASK did not sign it
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(parsed, at=at, certs=[chain, bytes(resigned)])
    assert ei.value.reason == Reason.SIGNATURE_INVALID
    assert ei.value.steps[-1].step == "snp.05.endorsement_key"
    flipped = bytearray((folder / "report.bin").read_bytes())
    flipped[21] ^= 0x80  # milan_report_invalid: inside FAMILY_ID
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(snp.parse(bytes(flipped)), at=at, collateral=snp.load_collateral(folder))
    assert ei.value.reason == Reason.SIGNATURE_INVALID


# ------------------------------------------------------------------ amd-kds-certs

@pytest.fixture()
def kds(vectors_dir) -> tuple[Path, dict]:
    folder = vectors_dir / "snp" / "amd-kds-certs"
    assert folder.is_dir()
    return folder, _load(folder)


def test_kds_chains_parse_and_verify(kds):
    """Every ASK/ASVK/ARK in every chain file has the recorded subject/validity and verifies
    (RSA-PSS) against the embedded ARK of its product, which equals the one in the file."""
    folder, exp = kds
    checked = 0
    for rel, entries in exp["certs"].items():
        if "#" in rel or not rel.endswith(".pem"):
            continue
        certs = snp_certs.as_amd_certs([(folder / rel).read_bytes()])
        assert len(certs) == len(entries)
        for cert, entry in zip(certs, entries):
            assert cert.fingerprint.hex() == entry["sha256_der"]
            assert cert.subject_cn == entry["subject"].split(",")[0][3:]
            assert cert.not_before == datetime.fromisoformat(entry["not_before"])
            assert cert.not_after == datetime.fromisoformat(entry["not_after"])
            role = snp_certs.role_of(cert)
            ark = snp_certs.embedded_root(role.product)
            if role.kind == "ark":
                assert cert.fingerprint == ark.fingerprint
            assert snp_certs.signature_ok(cert, ark) is (exp["certs"][rel + "#checks"][
                "CN=" + cert.subject_cn] == "OK")
            checked += 1
    assert checked >= 20


def test_kds_turin_vcek(kds):
    folder, exp = kds
    vcek = parse_certificate((folder / "virtee-turin" / "vcek_turin.der").read_bytes())
    ext = exp["certs"]["virtee-turin/vcek_turin.der#ext"]
    assert snp_certs.role_of(vcek) == snp_certs.Role("vcek", "turin")
    assert snp_certs.hwid_of(vcek) == bytes.fromhex(ext["hwid"]) and len(snp_certs.hwid_of(vcek)) == 8
    assert snp_certs.tcb_of(vcek) == {"bootloader": ext["spl_3.1"], "tee": ext["spl_3.2"], "snp": ext["spl_3.3"],
                                      "microcode": ext["spl_3.8"], "fmc": ext["spl_3.9"]}
    chain = snp_certs.as_amd_certs([(folder / "go-sev-guest" / "ask_ark_turin_vcek.pem").read_bytes()])
    ask = [c for c in chain if snp_certs.role_of(c).kind == "ask"][0]
    assert exp["certs"]["virtee-turin/vcek_turin.der#signed_by_SEV-Turin"] == "OK"
    assert snp_certs.signature_ok(vcek, ask)
    assert snp_certs.valid_at(vcek, datetime.fromisoformat(exp["certs"]["virtee-turin/vcek_turin.der"][0]["not_before"]))


@pytest.mark.parametrize("name", ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"])
def test_kds_hwid_encodings_and_invalid_signature(kds, name):
    """Both hwID encodings (raw 64 bytes; DER OCTET STRING) give the same 64 bytes; the
    deliberately invalid VCEK signatures are rejected with signature_invalid at snp.05."""
    folder, exp = kds
    rel = f"trustee-hwid-encodings/{name}"
    vcek = parse_certificate((folder / rel).read_bytes())
    raw = bytes.fromhex(exp["certs"][rel + "#ext"]["hwid"])
    hwid = snp_certs.hwid_of(vcek)
    assert hwid == bytes(range(64)) and len(hwid) == 64
    assert raw in (hwid, b"\x04\x40" + hwid)
    chain = snp_certs.as_amd_certs([(folder / "go-sev-guest" / "ask_ark_milan.pem").read_bytes()])
    ask = [c for c in chain if snp_certs.role_of(c).kind == "ask"][0]
    assert exp["certs"][rel + "#signed_by_SEV-Milan"].startswith("FAIL")
    assert not snp_certs.signature_ok(vcek, ask)

    # Through verify: a report whose TCB and CHIP_ID match this VCEK still fails at snp.05.
    real = vectors_dir_report(folder)
    fake = bytearray(real)
    tcb = snp_certs.tcb_of(vcek)
    fake[0x180:0x188] = bytes([tcb["bootloader"], tcb["tee"], 0, 0, 0, 0, tcb["snp"], tcb["microcode"]])
    fake[0x1A0:0x1E0] = hwid
    at = vcek.not_before + timedelta(days=1)
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(snp.parse(bytes(fake)), at=at, certs=[(folder / rel).read_bytes(),
                                                          (folder / "go-sev-guest" / "ask_ark_milan.pem").read_bytes()])
    assert ei.value.reason == Reason.SIGNATURE_INVALID
    assert ei.value.steps[-1].step == "snp.05.endorsement_key"


def vectors_dir_report(kds_folder: Path) -> bytes:
    return (kds_folder.parent / "virtee-sev-milan-v2" / "report.bin").read_bytes()


def test_embedded_roots_match_pins_and_vectors(kds):
    folder, exp = kds
    for product in ("milan", "genoa", "turin"):
        ark = snp_certs.embedded_root(product)
        assert ark.fingerprint.hex() == snp_certs.FINGERPRINTS[product]
        assert ark.subject_cn == f"ARK-{product.title()}"
        assert ark.self_issued and snp_certs.signature_ok(ark, ark)
        chain = (folder / "go-sev-guest" / f"ask_ark_{product}{'_vcek' if product == 'turin' else ''}.pem")
        assert ark.fingerprint in {c.fingerprint for c in snp_certs.as_amd_certs([chain.read_bytes()])}
