"""GET /v1/report: the signed run report, checked with `conclave report verify` (real CLI)."""
from __future__ import annotations

import json
import ssl
from datetime import datetime, timezone

import httpx
import pytest

from conclave.runtime.endpoint.client import verify_endpoint
from conclave.runtime.report import ReportSigner, verify_report
from conclave.runtime.serving.front_report import ReportIncomplete, RunReportState, shard_digest

from front_support import ENGINE_DIGEST, model_manifest, run_cli


def _get(front, path: str) -> httpx.Response:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(front.cert_path)), timeout=10) as http:
        return http.get(front.url + path)


def test_report_verifies_with_the_attested_key(make_front, deployment, files, tmp_path):
    front = make_front()
    # the client first verifies the head, which pins the report key it binds
    v = verify_endpoint(front.url, manifest=deployment.manifest, trusted_roots=[deployment.root.certificate],
                        timeout=10)
    assert v.ok, v.to_json()
    pinned = v.result.head["report_pubkey"]
    front.on_peer_admitted(**deployment.worker_admission())              # a re-attestation
    front.on_reattested("node-1", "failed", reason="peer_unreachable")
    resp = _get(front, "/v1/report")
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
    path = tmp_path / "report.json"
    path.write_bytes(resp.content)
    man, _ = files
    rc, out, err = run_cli("report", "verify", str(path), "--manifest", str(man), "--report-pubkey", pinned,
                           "--json")
    assert rc == 0, (out, err)
    assert out["ok"] and out["key_pinned"] and out["manifest_checked"]
    assert out["engine_digest"] == ENGINE_DIGEST and out["model_digest"] == deployment.model_manifest["digest"]
    stages = {s["node"]: s for s in out["stages"]}
    assert stages["node-0"]["layers"] == [0, 3] and stages["node-1"]["owner"] == "bob"
    mm = deployment.model_manifest
    assert stages["node-0"]["shard_sha256"] == shard_digest(mm, 0, 3, first=True, last=False)
    assert stages["node-1"]["shard_sha256"] == shard_digest(mm, 3, 6, first=False, last=True)
    assert [(e["node"], e["result"], e["reason"]) for e in out["reattestations"]] == [
        ("node-1", "ok", None), ("node-1", "failed", "peer_unreachable")]
    assert out["reattestations"][0]["evidence_sha256"] == stages["node-1"]["evidence_sha256"]

    # a report key other than the attested one is refused
    other = ReportSigner.generate()
    forged = tmp_path / "forged.json"
    forged.write_bytes(other.sign(front.report.snapshot()))
    rc, out, _ = run_cli("report", "verify", str(forged), "--report-pubkey", pinned, "--json")
    assert (rc, out["reason"]) == (2, "report_key_mismatch")


def test_report_is_refused_until_complete(make_front):
    front = make_front(shards=False, admit_worker=False)
    resp = _get(front, "/v1/report")
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "report_incomplete"
    assert "node-1: evidence" in resp.json()["error"]["message"]


def test_head_evidence_is_recorded_at_start(make_front):
    front = make_front()
    doc = json.loads(_get(front, "/v1/report").content)
    report = verify_report(json.dumps(doc).encode(), report_key=front.report.public_key)
    head = report.report.stages[0]
    assert head.node == "node-0" and head.tee == "sim" and len(head.evidence_sha256) == 64


def test_shard_digest_covers_exactly_the_stage():
    base = model_manifest()

    def s0(m):
        return shard_digest(m, 0, 3, first=True, last=False)

    def s1(m):
        return shard_digest(m, 3, 6, first=False, last=True)

    # a changed layer 4 (same model digest field, to isolate the groups) changes stage 1 only
    changed = dict(base, groups=dict(base["groups"], **{"layer.4": {"digest": "77" * 32, "tensors": ["x"]}}))
    assert s0(changed) == s0(base) and s1(changed) != s1(base)
    # embeddings are on the first stage and, tied, on the last one too
    tied = dict(base, groups=dict(base["groups"], embeddings={"digest": "88" * 32, "tensors": ["e"]}))
    assert s0(tied) != s0(base) and s1(tied) != s1(base)
    # another model is another shard everywhere
    other = model_manifest(tweak="layer.0")
    assert s1(other) != s1(base) and s0(other) != s0(base)


def test_report_state_refuses_mismatches(deployment):
    state = RunReportState(manifest=deployment.manifest, signer=ReportSigner.generate(),
                           started_at=datetime(2026, 11, 25, tzinfo=timezone.utc))
    with pytest.raises(Exception) as exc:
        state.set_shards_from_model_manifest(model_manifest(tweak="layer.0"))   # another model
    assert getattr(exc.value, "reason", None) == "model_digest_mismatch"
    with pytest.raises(ValueError):
        state.record_evidence("node-9", tee="sim", evidence=b"x")
    with pytest.raises(ValueError):
        state.add_event("node-1", "maybe")
    with pytest.raises(ReportIncomplete) as incomplete:
        state.signed()
    assert incomplete.value.reason == "report_incomplete"
    assert "PRIVATE" not in repr(state) and "redacted" in repr(state)
