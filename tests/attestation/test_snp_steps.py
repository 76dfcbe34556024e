"""One test per SNP verification step, each with evidence valid except for that one defect.

Vectors: tests/data/snp (our own test CA shaped like AMD's; see PROVENANCE.md there). Tests
pass trusted_roots=[test ARK]; the embedded AMD roots must refuse the test chain.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from conclave.runtime.attestation import snp, snp_certs
from conclave.runtime.attestation.core import MalformedEvidence, Reason, VerificationFailed
from conclave.runtime.attestation.snp_collateral import SnpCollateral, parse_collateral_bytes

DATA = Path(__file__).resolve().parent.parent / "data" / "snp"
MILAN = DATA / "milan"
GENOA = DATA / "genoa"
TURIN = DATA / "turin"
with open(DATA / "manifest.json") as _f:
    AT = datetime.fromisoformat(json.load(_f)["verification_time"].replace("Z", "+00:00"))
ALL_STEPS = ["snp.01.parse", "snp.02.ark", "snp.03.ask", "snp.04.crl", "snp.05.endorsement_key",
             "snp.06.tcb", "snp.07.report_signature"]


def rd(folder: Path, name: str) -> bytes:
    return (folder / name).read_bytes()


def root(folder: Path = MILAN, name: str = "ark.pem") -> x509.Certificate:
    data = rd(folder, name)
    return x509.load_pem_x509_certificate(data) if name.endswith(".pem") else x509.load_der_x509_certificate(data)


def collateral(*blobs: tuple[str, bytes]) -> SnpCollateral:
    return parse_collateral_bytes(list(blobs))


def verify(report: str = "report_vcek_v2.bin", *, certs=None, roots=None, crl: str | None = None,
           at: datetime = AT, folder: Path = MILAN, **kw):
    certs = [rd(folder, "cert_chain.pem"), rd(folder, "vcek.der")] if certs is None else certs
    col = collateral((crl, rd(folder, crl))) if crl else None
    return snp.verify(snp.parse(rd(folder, report)), at=at, certs=certs, collateral=col,
                      trusted_roots=[root(folder)] if roots is None else roots, **kw)


def fails(reason: Reason, step: str, **kw) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as ei:
        verify(**kw)
    assert ei.value.reason == reason, ei.value
    assert ei.value.steps[-1].step == step and not ei.value.steps[-1].ok
    assert all(s.ok for s in ei.value.steps[:-1])
    return ei.value


# ------------------------------------------------------------------ positives

def test_vcek_v2_valid():
    v = verify()
    assert [s.step for s in v.steps] == ALL_STEPS
    assert v.claims["product"] == "milan" and v.claims["signing_key"] == "vcek"
    assert v.report_data == b"\xc5" * 64
    assert v.revocation_checked is False


def test_vcek_v2_valid_with_crl_checks_revocation():
    v = verify(crl="crl.der")
    assert v.revocation_checked is True and not v.notes


def test_vlek_v3_valid_via_asvk():
    v = verify("report_vlek_v3.bin", certs=[rd(MILAN, "asvk.pem"), rd(MILAN, "vlek.der")])
    assert v.claims["signing_key"] == "vlek" and v.claims["vmpl"] == 1
    assert v.claims["csp_id"] == "CN=conclave-test-csp"
    # Provisional firmware (current ucode 220 > committed 219) is exposed, not judged.
    assert v.claims["current_tcb"]["microcode"] == 220 and v.claims["committed_tcb"]["microcode"] == 219


def test_hwid_wrapped_in_octet_string_valid():
    verify(certs=[rd(MILAN, "cert_chain.pem"), rd(MILAN, "vcek_hwid_wrapped.der")])


def test_masked_chip_id_valid_with_note():
    v = verify("report_vcek_v3_masked.bin")
    assert v.claims["mask_chip_id"] is True and any("masked" in n for n in v.notes)


def test_extended_report_uses_embedded_certificate_table():
    parsed = snp.parse(rd(MILAN, "report_vcek_v2_extended.bin"))
    assert set(parsed.embedded_certs) == {"vcek", "ask", "ark"}
    v = snp.verify(parsed, at=AT, trusted_roots=[root()])
    assert v.steps[-1].ok


def test_turin_v5_valid_layout_and_8_byte_hwid():
    v = verify("report_vcek_v5.bin", folder=TURIN)
    c = v.claims
    assert c["product"] == "turin" and c["version"] == 5
    assert c["reported_tcb"] == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9}
    assert c["launch_mit_vector"] == 3 and c["current_mit_vector"] == 3
    assert c["cpuid_family"] == 0x1A and c["chip_id"][:8] == bytes.fromhex("1e550a8ee5cf9f4d")


def test_genoa_v3_product_from_cpuid():
    v = verify("report_vcek_v3.bin", folder=GENOA)
    assert v.claims["product"] == "genoa" and v.claims["cpuid_model"] == 0x11


def test_genoa_report_with_milan_chain_is_refused():
    """CPUID says Genoa: the Milan ASK/VCEK are not its chain, whatever roots are trusted."""
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(snp.parse(rd(GENOA, "report_vcek_v3.bin")), at=AT,
                   certs=[rd(MILAN, "cert_chain.pem"), rd(MILAN, "vcek.der")], trusted_roots=[root(MILAN)])
    assert ei.value.reason == Reason.CHAIN_UNTRUSTED and ei.value.steps[-1].step == "snp.02.ark"
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(snp.parse(rd(GENOA, "report_vcek_v3.bin")), at=AT,
                   certs=[rd(GENOA, "cert_chain.pem"), rd(MILAN, "vcek.der")], trusted_roots=[root(GENOA)])
    assert ei.value.reason == Reason.CHAIN_UNTRUSTED and ei.value.steps[-1].step == "snp.05.endorsement_key"


def test_certs_in_any_order_and_as_x509_objects():
    objs = [x509.load_der_x509_certificate(rd(MILAN, "vcek.der")),
            *x509.load_pem_x509_certificates(rd(MILAN, "cert_chain.pem"))]
    verify(certs=list(reversed(objs)))
    verify(certs=objs + [rd(MILAN, "asvk.pem"), rd(MILAN, "vlek.der")])  # extra roles are ignored


def test_load_collateral_folder_and_single_file(tmp_path):
    (tmp_path / "vcek.der").write_bytes(rd(MILAN, "vcek.der"))
    (tmp_path / "cert_chain.pem").write_bytes(rd(MILAN, "cert_chain.pem"))
    (tmp_path / "crl.der").write_bytes(rd(MILAN, "crl.der"))
    (tmp_path / "notes.txt").write_text("ignored")
    col = snp.load_collateral(tmp_path)
    assert len(col.certs) == 3 and len(col.crls) == 1
    v = snp.verify(snp.parse(rd(MILAN, "report_vcek_v2.bin")), at=AT, collateral=col, trusted_roots=[root()])
    assert v.revocation_checked
    single = snp.load_collateral(MILAN / "cert_chain.pem")
    assert [snp_certs.role_of(c).kind for c in single.certs] == ["ask", "ark"]


def test_load_collateral_errors(tmp_path):
    with pytest.raises(VerificationFailed) as ei:
        snp.load_collateral(tmp_path / "absent")
    assert ei.value.reason == Reason.COLLATERAL_MISSING
    with pytest.raises(VerificationFailed) as ei:
        snp.load_collateral(tmp_path)  # empty folder
    assert ei.value.reason == Reason.COLLATERAL_INVALID
    (tmp_path / "vcek.der").write_bytes(b"\x30\x03\x02\x01")
    with pytest.raises(VerificationFailed) as ei:
        snp.load_collateral(tmp_path)
    assert ei.value.reason == Reason.COLLATERAL_INVALID


# ------------------------------------------------------------------ snp.01 parse

def test_step01_unsupported_signature_algorithm():
    fails(Reason.UNSUPPORTED, "snp.01.parse", report="report_sigalgo2.bin")


def test_step01_malformed_certificate_in_certs():
    fails(Reason.COLLATERAL_INVALID, "snp.01.parse", certs=[rd(MILAN, "cert_chain.pem"), b"\x30\x01"])


def test_step01_product_hint_must_match_cpuid():
    fails(Reason.CHAIN_UNTRUSTED, "snp.01.parse", report="report_vlek_v3.bin",
          certs=[rd(MILAN, "asvk.pem"), rd(MILAN, "vlek.der")], product="genoa")


# ------------------------------------------------------------------ snp.02 ARK

def test_step02_embedded_amd_roots_refuse_test_chain():
    """Default roots: the pinned AMD ARK-Milan did not issue the test ASK."""
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(snp.parse(rd(MILAN, "report_vcek_v2.bin")), at=AT,
                   certs=[rd(MILAN, "cert_chain.pem"), rd(MILAN, "vcek.der")])
    assert ei.value.reason == Reason.CHAIN_UNTRUSTED
    assert ei.value.steps[-1].step == "snp.03.ask"


def test_step02_no_trusted_root_for_product():
    fails(Reason.CHAIN_UNTRUSTED, "snp.02.ark", roots=[root(TURIN)])


def test_step02_ark_self_signature_invalid():
    fails(Reason.SIGNATURE_INVALID, "snp.02.ark", roots=[rd(MILAN, "ark_badsig.der")])


def test_step02_ark_not_valid_at_time():
    fails(Reason.CERT_EXPIRED, "snp.02.ark", at=datetime.fromisoformat("2024-12-31T00:00:00+00:00"))


def test_step02_product_unknown_without_endorsement_key():
    fails(Reason.CERTS_MISSING, "snp.02.ark", certs=[])


def test_step02_ark_in_certs_is_not_trusted_by_itself():
    """An ARK arriving with the evidence never becomes a root: the trusted set decides."""
    fails(Reason.SIGNATURE_INVALID, "snp.03.ask", roots=[root(MILAN, "rogue_ark.pem")])


# ------------------------------------------------------------------ snp.03 ASK / ASVK

def test_step03_ask_missing():
    fails(Reason.CERTS_MISSING, "snp.03.ask", certs=[rd(MILAN, "ark.pem"), rd(MILAN, "vcek.der")])


def test_step03_ask_signature_invalid():
    fails(Reason.SIGNATURE_INVALID, "snp.03.ask", certs=[rd(MILAN, "ask_badsig.pem"), rd(MILAN, "vcek.der")])


def test_step03_ask_expired():
    fails(Reason.CERT_EXPIRED, "snp.03.ask", certs=[rd(MILAN, "ask_expired.pem"), rd(MILAN, "vcek.der")])


def test_step03_asvk_missing_for_vlek():
    fails(Reason.CERTS_MISSING, "snp.03.ask", report="report_vlek_v3.bin",
          certs=[rd(MILAN, "cert_chain.pem"), rd(MILAN, "vlek.der")])


# ------------------------------------------------------------------ snp.04 CRL

def test_step04_ask_revoked():
    fails(Reason.CERT_REVOKED, "snp.04.crl", crl="crl_revokes_ask.der")


def test_step04_crl_signature_invalid():
    fails(Reason.COLLATERAL_INVALID, "snp.04.crl", crl="crl_badsig.der")


def test_step04_crl_stale():
    fails(Reason.COLLATERAL_EXPIRED, "snp.04.crl", crl="crl_stale.der")


def test_step04_crl_from_another_ark():
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(snp.parse(rd(TURIN, "report_vcek_v5.bin")), at=AT,
                   certs=[rd(TURIN, "cert_chain.pem"), rd(TURIN, "vcek.der")],
                   collateral=collateral(("crl.der", rd(MILAN, "crl.der"))), trusted_roots=[root(TURIN)])
    assert ei.value.reason == Reason.COLLATERAL_INVALID and ei.value.steps[-1].step == "snp.04.crl"


# ------------------------------------------------------------------ snp.05 VCEK / VLEK

def test_step05_vcek_missing():
    fails(Reason.CERTS_MISSING, "snp.05.endorsement_key", certs=[rd(MILAN, "cert_chain.pem")], product="milan")


def test_step05_vcek_signature_invalid():
    fails(Reason.SIGNATURE_INVALID, "snp.05.endorsement_key",
          certs=[rd(MILAN, "cert_chain.pem"), rd(MILAN, "vcek_badsig.der")])


def test_step05_vcek_expired():
    fails(Reason.CERT_EXPIRED, "snp.05.endorsement_key",
          certs=[rd(MILAN, "cert_chain.pem"), rd(MILAN, "vcek_expired.der")])


def test_step05_vlek_must_chain_to_asvk():
    fails(Reason.CHAIN_UNTRUSTED, "snp.05.endorsement_key", report="report_vlek_v3.bin",
          certs=[rd(MILAN, "cert_chain.pem"), rd(MILAN, "asvk.pem"), rd(MILAN, "vlek_under_ask.der")])


def test_step05_vcek_offered_for_vlek_report():
    fails(Reason.CERTS_MISSING, "snp.05.endorsement_key", report="report_vlek_v3.bin",
          certs=[rd(MILAN, "asvk.pem"), rd(MILAN, "vcek.der")])


# ------------------------------------------------------------------ snp.06 TCB / chip ID

def test_step06_tcb_mismatch():
    fails(Reason.TCB_MISMATCH, "snp.06.tcb", certs=[rd(MILAN, "cert_chain.pem"), rd(MILAN, "vcek_wrong_tcb.der")])


def test_step06_chip_id_mismatch():
    fails(Reason.CHIP_ID_MISMATCH, "snp.06.tcb",
          certs=[rd(MILAN, "cert_chain.pem"), rd(MILAN, "vcek_wrong_hwid.der")])


def test_step06_turin_fmc_mismatch():
    fails(Reason.TCB_MISMATCH, "snp.06.tcb", report="report_vcek_v5.bin", folder=TURIN,
          certs=[rd(TURIN, "cert_chain.pem"), rd(TURIN, "vcek_wrong_fmc.der")])


def test_step06_turin_chip_id_tail_must_be_zero():
    data = bytearray(rd(TURIN, "report_vcek_v5.bin"))
    data[0x1A0 + 8] = 1  # beyond the 8-byte Turin hwID
    with pytest.raises(VerificationFailed) as ei:
        snp.verify(snp.parse(bytes(data)), at=AT, certs=[rd(TURIN, "cert_chain.pem"), rd(TURIN, "vcek.der")],
                   trusted_roots=[root(TURIN)])
    assert ei.value.reason == Reason.CHIP_ID_MISMATCH


# ------------------------------------------------------------------ snp.07 signature

def test_step07_report_signature_invalid():
    fails(Reason.SIGNATURE_INVALID, "snp.07.report_signature", report="report_badsig.bin")


def test_flipped_byte_anywhere_in_signed_region_is_rejected():
    good = rd(MILAN, "report_vcek_v2.bin")
    certs = [rd(MILAN, "cert_chain.pem"), rd(MILAN, "vcek.der")]
    roots = [root()]
    outcomes: dict[str, int] = {}
    for i in range(0x2A0):
        bad = bytearray(good)
        bad[i] ^= 0x01
        try:
            snp.verify(snp.parse(bytes(bad)), at=AT, certs=certs, trusted_roots=roots)
        except MalformedEvidence:
            outcomes["malformed"] = outcomes.get("malformed", 0) + 1
            continue
        except VerificationFailed as exc:
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
            continue
        pytest.fail(f"flipping byte 0x{i:03x} was accepted")
    assert sum(outcomes.values()) == 0x2A0
    # Reserved bytes fail parsing; TCB and CHIP_ID bytes fail their step; the rest the signature.
    assert outcomes["signature_invalid"] > 300 and outcomes["malformed"] > 200
    assert outcomes["tcb_mismatch"] >= 4 and outcomes["chip_id_mismatch"] == 64


def test_signature_area_mutations_are_rejected():
    good = rd(MILAN, "report_vcek_v2.bin")
    for i in (0x2A0, 0x2A0 + 47, 0x2A0 + 72, 0x2A0 + 72 + 47):
        bad = bytearray(good)
        bad[i] ^= 0x80
        with pytest.raises(VerificationFailed) as ei:
            snp.verify(snp.parse(bytes(bad)), at=AT, certs=[rd(MILAN, "cert_chain.pem"), rd(MILAN, "vcek.der")],
                       trusted_roots=[root()])
        assert ei.value.reason == Reason.SIGNATURE_INVALID


# ------------------------------------------------------------------ performance

def test_verification_under_10ms_per_report():
    parsed = snp.parse(rd(MILAN, "report_vcek_v2.bin"))
    certs = [rd(MILAN, "cert_chain.pem"), rd(MILAN, "vcek.der")]
    roots = [root()]
    snp.verify(parsed, at=AT, certs=certs, trusted_roots=roots)  # warm the chain caches
    n = 50
    start = time.perf_counter()
    for _ in range(n):
        snp.verify(parsed, at=AT, certs=certs, trusted_roots=roots)
    per_report = (time.perf_counter() - start) / n
    assert per_report < 0.010, f"{per_report * 1000:.2f} ms per report"


def test_expired_evidence_is_never_cached_as_valid():
    """The verified-chain cache holds signatures only; validity is checked at every call."""
    verify()
    fails(Reason.CERT_EXPIRED, "snp.05.endorsement_key", at=AT + timedelta(days=365 * 7))
