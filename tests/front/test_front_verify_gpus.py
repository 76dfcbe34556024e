"""`conclave verify` runs the same per-stage GPU requirement check as admission: a manifest whose
worker stage asks for a GPU, served by a front whose worker presented none, fails `gpu_missing`
(the real CLI in a subprocess against the head's /v1/attestation, simulated CPU evidence)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from conclave.runtime.attestation.nvgpu_requirement import GpuRequirement
from conclave.runtime.endpoint.tls import generate_head_identity
from conclave.runtime.serving.front import HeadFront
from conclave.runtime.serving.front_report import RunReportState

from front_support import STAGES, Deployment, new_report_signer, run_cli


def _deployment(stages) -> Deployment:
    return Deployment.create(stages)


@pytest.fixture
def served(tmp_path, vllm):
    """start(stages) -> (front, manifest path, sim root path); fronts stopped after the test."""
    started: list[HeadFront] = []

    def start(stages):
        d = _deployment(stages)
        identity = generate_head_identity(["127.0.0.1", "localhost"])
        signer = new_report_signer()
        report = RunReportState(manifest=d.manifest, signer=signer)
        report.set_shards_from_model_manifest(d.model_manifest)
        front = HeadFront(builder=d.builder(identity.spki_sha256, signer.public_key), report=report,
                          upstream=vllm.address, identity=identity, listen_host="127.0.0.1", listen_port=0)
        front.on_peer_admitted(**d.worker_admission())
        front.start_in_thread()
        started.append(front)
        man, root = tmp_path / f"manifest-{len(started)}.json", tmp_path / f"root-{len(started)}.pem"
        man.write_bytes(d.manifest_bytes)
        root.write_bytes(d.root.cert_pem)
        return front, man, root, d.manifest.owner_fingerprint

    yield start
    for f in started:
        f.stop_thread()


def _verify(front, man, root, fingerprint):
    return run_cli("verify", front.url, "--manifest", str(man), "--sim-root", str(root), "--timeout", "10",
                   "--json", "--owner-fingerprint", fingerprint)


def test_stage_requiring_a_gpu_without_gpu_evidence_fails_gpu_missing(served):
    stages = (STAGES[0], replace(STAGES[1], gpus=GpuRequirement.from_json({"count": 1, "models": ["H100"]})))
    rc, out, err = _verify(*served(stages))
    assert rc != 0 and out is not None, err
    assert (out["ok"], out["reason"]) == (False, "gpu_missing")
    nodes = {n["name"]: n for n in out["nodes"]}
    assert nodes["node-0"]["ok"] is True
    worker = nodes["node-1"]
    assert worker["ok"] is False and worker["reason"] == "gpu_missing"
    assert [v["reason"] for v in worker["violations"]] == ["gpu_missing"]
    assert {"step": "node-1.06.gpus", "ok": False} in worker["steps"]


def test_same_front_without_a_gpu_requirement_verifies(served):
    rc, out, err = _verify(*served(STAGES))
    assert rc == 0, (out, err)
    worker = next(n for n in out["nodes"] if n["name"] == "node-1")
    assert {"step": "node-1.06.gpus", "ok": True} in worker["steps"]
