"""`conclave attest` CLI contract with simulated evidence: JSON shape, exit codes, reasons."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from conclave.runtime.attestation import binding, sim
from conclave.runtime.cli import main

from attest_helpers import MEASUREMENT, NOW

AT = "2026-01-15T12:00:00Z"
RD = b"\x5a" * 64


def run(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["attest", *argv, "--json"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json must print exactly one object, got: {out!r}"
    obj = json.loads(lines[0])
    assert set(obj) - {"revocation_checked", "collateral_age_s"} == {"ok", "tee", "reason", "claims",
                                                                     "violations", "steps"}
    assert obj["ok"] is (code == 0)
    return code, obj


@pytest.fixture()
def files(tmp_path: Path, sim_root, sim_attester):
    ev = tmp_path / "evidence.json"
    ev.write_bytes(sim_attester.evidence(RD, now=NOW))
    root = tmp_path / "root.pem"
    root.write_bytes(sim_root.cert_pem)
    return ev, root, tmp_path


def _policy(tmp_path: Path, **over) -> str:
    body = {"production": False, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
            "sim": {"measurement": [MEASUREMENT.hex()]}}
    body.update(over)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def test_verify_accepts(capsys, files):
    ev, root, _ = files
    code, obj = run(capsys, "verify", str(ev), "--certs", str(root), "--at", AT)
    assert code == 0 and obj["tee"] == "sim" and obj["reason"] is None
    assert obj["claims"]["measurement"] == MEASUREMENT.hex()
    assert obj["claims"]["report_data"] == RD.hex() and obj["claims"]["debug"] is False
    assert [s["step"] for s in obj["steps"]][0] == "sim.01.chain"
    assert all(s["ok"] for s in obj["steps"]) and obj["violations"] == []


def test_inspect(capsys, files):
    ev, _, _ = files
    code, obj = run(capsys, "inspect", str(ev))
    assert code == 0 and obj["tee"] == "sim" and obj["claims"]["node"] == "node-a"


def test_inspect_malformed_exit_5(capsys, tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00\x01garbage")
    code, obj = run(capsys, "inspect", str(bad))
    assert code == 5 and obj["reason"] == "malformed"
    code, obj = run(capsys, "verify", str(bad), "--tee", "sim")
    assert code == 5 and obj["reason"] == "malformed"


def test_sim_without_certs_is_untrusted(capsys, files):
    ev, _, _ = files
    code, obj = run(capsys, "verify", str(ev), "--at", AT)
    assert code == 2 and obj["reason"] == "chain_untrusted"
    assert obj["steps"] == [{"step": "sim.01.chain", "ok": False}]
    assert obj["claims"]["node"] == "node-a"  # parsed claims shown even on failure


def test_certs_bundle_any_order_and_der(capsys, files, sim_attester):
    ev, root, tmp = files
    other = sim.SimulatedRoot.generate("unrelated", now=NOW)
    bundle = tmp / "bundle.pem"
    bundle.write_bytes(sim_attester.certificate.public_bytes(serialization.Encoding.PEM)
                       + other.cert_pem + root.read_bytes())
    der = tmp / "root.der"
    der.write_bytes(_der(root))
    code, _ = run(capsys, "verify", str(ev), "--certs", str(bundle), "--at", AT)
    assert code == 0
    code, _ = run(capsys, "verify", str(ev), "--certs", str(der), "--at", AT)
    assert code == 0
    unrelated = tmp / "unrelated.pem"
    unrelated.write_bytes(other.cert_pem)
    code, _ = run(capsys, "verify", str(ev), "--certs", str(unrelated), "--certs", str(der), "--at", AT)
    assert code == 0


def _der(pem_path: Path) -> bytes:
    from cryptography import x509
    return x509.load_pem_x509_certificate(pem_path.read_bytes()).public_bytes(serialization.Encoding.DER)


def test_bad_cert_file_is_malformed(capsys, files):
    ev, _, tmp = files
    junk = tmp / "junk.pem"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    code, obj = run(capsys, "verify", str(ev), "--certs", str(junk), "--at", AT)
    assert code == 5 and obj["reason"] == "malformed"


@pytest.mark.parametrize("at,reason", [("2026-01-20T00:00:00Z", "cert_expired"),
                                        ("2026-01-15T13:00:00+01:00", None)])
def test_at_controls_verification_time(capsys, files, at, reason):
    ev, root, _ = files
    code, obj = run(capsys, "verify", str(ev), "--certs", str(root), "--at", at)
    assert obj["reason"] == reason and code == (0 if reason is None else 2)


@pytest.mark.parametrize("argv", [
    ["--at", "yesterday"], ["--at", "2026-01-15T12:00:00"], ["--report-data", "zz"],
    ["--report-data", "00" * 10], ["--nonce", "00" * 32], ["--certs", "/nonexistent/root.pem"],
])
def test_usage_errors_exit_1(capsys, files, argv):
    ev, root, _ = files
    code, obj = run(capsys, "verify", str(ev), "--certs", str(root), *argv)
    assert code == 1 and obj["ok"] is False


def test_missing_file_is_usage_error(capsys, tmp_path):
    code, obj = run(capsys, "inspect", str(tmp_path / "missing.bin"))
    assert code == 1


def test_argparse_errors_exit_1(capsys):
    with pytest.raises(SystemExit) as info:
        main(["attest", "verify"])
    assert info.value.code == 1
    with pytest.raises(SystemExit) as info:
        main(["attest", "inspect", "x", "--tee", "sgx"])
    assert info.value.code == 1


def test_report_data_binding(capsys, files):
    ev, root, _ = files
    code, obj = run(capsys, "verify", str(ev), "--certs", str(root), "--at", AT, "--report-data", RD.hex())
    assert code == 0 and obj["steps"][-1] == {"step": "binding.report_data", "ok": True}
    code, obj = run(capsys, "verify", str(ev), "--certs", str(root), "--at", AT,
                    "--report-data", "00" * 64)
    assert code == 2 and obj["reason"] == "report_data_mismatch"
    assert obj["steps"][-1] == {"step": "binding.report_data", "ok": False}


def test_report_data_from_binding(capsys, tmp_path, sim_root, sim_attester):
    rd = binding.report_data_for(purpose=binding.PURPOSE_NODE, manifest_digest=b"\1" * 32,
                                 wg_public_key=b"\2" * 32, hpke_public_key=b"\3" * 32, nonce=b"\4" * 32)
    ev = tmp_path / "e.json"
    ev.write_bytes(sim_attester.evidence(rd, now=NOW))
    root = tmp_path / "r.pem"
    root.write_bytes(sim_root.cert_pem)
    code, _ = run(capsys, "verify", str(ev), "--certs", str(root), "--at", AT, "--report-data", rd.hex())
    assert code == 0


def test_policy_accept_and_violations(capsys, files):
    ev, root, tmp = files
    code, obj = run(capsys, "verify", str(ev), "--certs", str(root), "--at", AT, "--policy", _policy(tmp))
    assert code == 0 and obj["steps"][-1] == {"step": "policy.validate", "ok": True}
    code, obj = run(capsys, "verify", str(ev), "--certs", str(root), "--at", AT, "--policy",
                    _policy(tmp, sim={"measurement": ["ff" * 48], "min_svn": 9}))
    assert code == 4 and obj["reason"] == "measurement_mismatch"
    assert sorted(v["reason"] for v in obj["violations"]) == ["measurement_mismatch", "svn_too_low"]
    assert obj["steps"][-1] == {"step": "policy.validate", "ok": False}


def test_policy_refuses_simulated_by_default(capsys, files):
    ev, root, tmp = files
    code, obj = run(capsys, "verify", str(ev), "--certs", str(root), "--at", AT, "--policy",
                    _policy(tmp, unsafe_allow_simulated=False))
    assert code == 4 and obj["reason"] == "simulated_not_allowed"


@pytest.mark.parametrize("over,reason", [({"sim": {}}, "policy_empty"),
                                         ({"production": True}, "policy_invalid")])
def test_bad_policy_is_usage_error(capsys, files, over, reason):
    ev, root, tmp = files
    code, obj = run(capsys, "verify", str(ev), "--certs", str(root), "--at", AT, "--policy",
                    _policy(tmp, **over))
    assert code == 1 and obj["reason"] == reason


def test_debug_evidence_refused_by_policy(capsys, tmp_path, sim_root):
    att = sim_root.issue_attester("dbg", measurement=MEASUREMENT, debug=True, now=NOW)
    ev = tmp_path / "e.json"
    ev.write_bytes(att.evidence(RD, now=NOW))
    root = tmp_path / "r.pem"
    root.write_bytes(sim_root.cert_pem)
    code, obj = run(capsys, "verify", str(ev), "--certs", str(root), "--at", AT, "--policy", _policy(tmp_path))
    assert code == 4 and obj["reason"] == "debug_enabled" and obj["claims"]["debug"] is True


def test_sim_takes_no_collateral(capsys, files):
    ev, root, tmp = files
    code, obj = run(capsys, "verify", str(ev), "--certs", str(root), "--at", AT, "--collateral", str(tmp))
    assert code == 2 and obj["reason"] == "collateral_invalid"


def test_human_output(capsys, files):
    ev, root, _ = files
    assert main(["attest", "verify", str(ev), "--certs", str(root), "--at", AT]) == 0
    out = capsys.readouterr().out
    assert "ACCEPTED" in out and "SIMULATED" in out and "sim.03.signature" in out
    assert main(["attest", "verify", str(ev), "--at", AT]) == 2
    captured = capsys.readouterr()
    assert "REJECTED [chain_untrusted]" in captured.out and "chain_untrusted" in captured.err


def test_console_script_end_to_end(files):
    """The installed `conclave` entry point (what operators run), not just main()."""
    ev, root, _ = files
    exe = Path(sys.executable).with_name("conclave")
    assert exe.exists(), f"console script missing at {exe} (pip install -e .)"
    proc = subprocess.run([str(exe), "attest", "verify", str(ev), "--certs", str(root), "--at", AT,
                           "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    proc = subprocess.run([str(exe), "attest", "verify", str(ev), "--at",
                           (NOW + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"), "--certs", str(root),
                           "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and json.loads(proc.stdout)["reason"] == "cert_expired"
