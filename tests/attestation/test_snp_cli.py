"""SNP through the dispatcher and `conclave attest`: autodetection, exit codes, reasons."""
from __future__ import annotations

import json
import warnings
from datetime import datetime
from pathlib import Path

from conclave.runtime.attestation import detect_tee, verify_evidence
from conclave.runtime.attestation.core import TeeType
from conclave.runtime.cli import main
from conclave.runtime.errors import ExitCode

DATA = Path(__file__).resolve().parent.parent / "data" / "snp" / "milan"


def run(capsys, *argv: str) -> tuple[int, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CLI's own handling of serial-0 VCEKs is not under test
        code = main(["attest", *argv, "--json"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    return code, json.loads(lines[-1])


def test_dispatcher_detects_and_verifies_snp():
    report = (DATA / "report_vcek_v2_extended.bin").read_bytes()
    assert detect_tee(report) == TeeType.SNP
    from cryptography import x509
    root = x509.load_pem_x509_certificate((DATA / "ark.pem").read_bytes())
    v = verify_evidence(report, at=datetime.fromisoformat("2026-01-15T00:00:00+00:00"), trusted_roots=[root])
    assert v.tee == TeeType.SNP and v.claims["product"] == "milan"


def test_cli_verifies_real_vlek_report(capsys, vectors_dir):
    folder = vectors_dir / "snp" / "trustee-milan-v3-vlek-aws"
    code, obj = run(capsys, "verify", str(folder / "report.bin"), "--collateral", str(folder),
                    "--at", "2025-06-01T00:00:00Z")
    assert code == ExitCode.OK and obj["tee"] == "snp"
    assert obj["claims"]["signing_key"] == "vlek" and obj["claims"]["product"] == "milan"
    assert obj["steps"][-1] == {"step": "snp.07.report_signature", "ok": True}


def test_cli_real_vcek_with_certs_and_expiry(capsys, vectors_dir):
    folder = vectors_dir / "snp" / "go-sev-guest-milan-v2"
    certs = [str(folder / "vcek.der"), str(folder / "ask_ark_milan.pem")]
    code, obj = run(capsys, "verify", str(folder / "report.bin"), "--certs", *certs,
                    "--at", "2022-09-24T01:00:00Z")
    assert code == ExitCode.OK
    code, obj = run(capsys, "verify", str(folder / "report.bin"), "--certs", *certs,
                    "--at", "2030-01-01T00:00:00Z")
    assert code == ExitCode.VERIFICATION_FAILED and obj["reason"] == "cert_expired"


def test_cli_inspect_and_malformed(capsys, tmp_path):
    code, obj = run(capsys, "inspect", str(DATA / "report_vlek_v3.bin"))
    assert code == ExitCode.OK and obj["claims"]["vmpl"] == 1
    bad = tmp_path / "bad.bin"
    data = bytearray((DATA / "report_vcek_v2.bin").read_bytes())
    data[0x29F] = 1  # reserved byte
    bad.write_bytes(bytes(data))
    code, obj = run(capsys, "inspect", str(bad), "--tee", "snp")
    assert code == ExitCode.MALFORMED and obj["reason"] == "malformed"
