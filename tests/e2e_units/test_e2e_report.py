"""Signed run report: sign, verify, tamper, pinned key, manifest agreement, CLI."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from conclave.runtime.cli import main
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.report import (ReattestationEvent, ReportError, ReportSigner, RunReport,
                                     verify_report)


@pytest.fixture
def report(deployment) -> RunReport:
    r = RunReport.for_manifest(deployment.manifest, started_at=datetime(2026, 11, 25, 22, 0, tzinfo=timezone.utc),
                               evidence={"node-0": ("sim", b"head-evidence"),
                                         "node-1": ("sim", deployment.worker_evidence)},
                               shards={"node-0": "01" * 32, "node-1": "02" * 32},
                               enrolments={n: deployment.enrolment(n) for n in ("node-0", "node-1")})
    return r.with_event(ReattestationEvent("2026-11-25T22:30:00Z", "node-1", "ok", None, "03" * 32))


def _reason(fn) -> str:
    with pytest.raises(ReportError) as exc:
        fn()
    return exc.value.reason


def test_sign_verify_roundtrip(deployment, report):
    signer = deployment.report_signer
    data = signer.sign(report)
    v = verify_report(data, report_key=signer.public_key, manifest=deployment.manifest)
    assert v.key_pinned and v.manifest_checked
    assert v.report.stages[1].layer_start == 15 and v.report.stages[1].owner == "bob"
    assert v.report.reattestations[0].node == "node-1"
    assert v.report.model_digest == deployment.manifest.model_digest
    assert "redacted" in repr(signer)


@pytest.mark.parametrize("edit", [
    lambda r: r["stages"][0].update(shard_sha256="ff" * 32),
    lambda r: r.update(engine_digest="00" * 32),
    lambda r: r["reattestations"].clear(),
    lambda r: r["stages"][1].update(layers=[15, 29]),
])
def test_tamper_is_signature_invalid(deployment, report, edit):
    doc = json.loads(deployment.report_signer.sign(report))
    edit(doc["report"])
    assert _reason(lambda: verify_report(json.dumps(doc).encode())) == "signature_invalid"


def test_other_signer_is_report_key_mismatch(deployment, report):
    forged = ReportSigner.generate().sign(report)
    assert verify_report(forged).key_pinned is False  # self-consistent, but...
    assert _reason(lambda: verify_report(forged, report_key=deployment.report_signer.public_key)) \
        == "report_key_mismatch"


def test_manifest_disagreement(deployment, report):
    from conclave.runtime.report import StageRecord
    moved = RunReport(report.manifest_digest, report.engine_digest, report.model_digest,
                      report.started_at,
                      (report.stages[0], StageRecord("node-1", "mallory", "worker", 15, 30, "sim",
                                                     "02" * 32, "02" * 32)))
    data = deployment.report_signer.sign(moved)
    assert _reason(lambda: verify_report(data, manifest=deployment.manifest)) == "manifest_mismatch"


def test_malformed(deployment, report):
    doc = json.loads(deployment.report_signer.sign(report))
    doc["report_key"] = keys.b64(ReportSigner.generate().public_key)
    assert _reason(lambda: verify_report(json.dumps(doc).encode())) == "malformed"
    assert _reason(lambda: verify_report(b"[]")) == "malformed"


def test_cli_report_verify(deployment, report, tmp_path, capsys):
    rpt, man = tmp_path / "report.json", tmp_path / "manifest.json"
    rpt.write_bytes(deployment.report_signer.sign(report))
    man.write_bytes(deployment.manifest_bytes)
    pub = keys.b64(deployment.report_signer.public_key)
    assert main(["report", "verify", str(rpt), "--manifest", str(man), "--report-pubkey", pub,
                 "--owner-fingerprint", deployment.manifest.owner_fingerprint, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["key_pinned"] and out["manifest_checked"] and out["manifest_owner_pinned"]
    assert main(["report", "verify", str(rpt), "--report-pubkey",
                 keys.b64(ReportSigner.generate().public_key), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["reason"] == "report_key_mismatch"
    doc = json.loads(rpt.read_text())
    doc["report"]["model_digest"] = "00" * 32
    rpt.write_text(json.dumps(doc))
    assert main(["report", "verify", str(rpt), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["reason"] == "signature_invalid"
    rpt.write_text("{}")
    assert main(["report", "verify", str(rpt), "--json"]) == 5
