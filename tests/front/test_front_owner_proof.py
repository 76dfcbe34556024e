"""The real head front serves each stage's owner enrolment, `conclave verify` (the real CLI, in a
subprocess) names each stage's owner as proven or refuses `owner_not_enrolled`, and the run report
at /v1/report carries each stage's owner proof (issue 16 hole 1)."""
from __future__ import annotations

import base64
import hashlib
import json
import ssl

import httpx

from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.canonical import canonical_json
from conclave.runtime.manifest.enrolment import SIGNING_CONTEXT
from conclave.runtime.report import ReportError, verify_report

from front_support import NODE_OWNER_KEYS, NODE_OWNERS, run_cli


def _verify(front, files, deployment):
    man, root = files
    return run_cli("verify", front.url, "--manifest", str(man), "--sim-root", str(root), "--timeout", "10",
                   "--json", "--owner-fingerprint", deployment.manifest.owner_fingerprint)


def _report(front) -> bytes:
    r = httpx.get(front.url + "/v1/report", verify=ssl.create_default_context(cafile=str(front.cert_path)),
                  timeout=10)
    assert r.status_code == 200, r.text
    return r.content


def test_verify_json_names_each_stage_owner_as_proven(make_front, files, deployment):
    front = make_front()
    rc, out, err = _verify(front, files, deployment)
    assert rc == 0, (out, err)
    assert [(o["stage"], o["owner"], o["proven"], o["owner_fingerprint"]) for o in out["stage_owners"]] == [
        ("node-0", "alice", True, keys.fingerprint(NODE_OWNERS["alice"])),
        ("node-1", "bob", True, keys.fingerprint(NODE_OWNERS["bob"]))]
    nodes = {n["name"]: n for n in out["nodes"]}
    assert {"step": "node-1.07.enrolment", "ok": True} in nodes["node-1"]["steps"]
    # the report the same front signs carries the very enrolments verify proved
    report = verify_report(_report(front), report_key=front.report.public_key, manifest=deployment.manifest)
    assert report.owners_proven
    for s in report.report.stages:
        assert s.owner_proof["enrolment_sha256"] == nodes[s.node]["owner_proof"]["enrolment_sha256"]
        assert s.owner_proof["issued"] == nodes[s.node]["owner_proof"]["issued"]


def test_worker_admitted_without_enrolment_fails_verify(make_front, files, deployment):
    front = make_front(admit_worker=False)
    front.on_peer_admitted(**deployment.worker_admission(enrolment=None))
    rc, out, err = _verify(front, files, deployment)
    assert (rc, out["ok"], out["reason"]) == (2, False, "owner_not_enrolled"), err
    worker = next(n for n in out["nodes"] if n["name"] == "node-1")
    assert worker["reason"] == "owner_not_enrolled" and worker["owner_proof"] is None
    assert {"step": "node-1.07.enrolment", "ok": False} in worker["steps"]
    assert {o["stage"]: o["proven"] for o in out["stage_owners"]} == {"node-0": True, "node-1": False}
    data = _report(front)
    try:
        verify_report(data, manifest=deployment.manifest)
    except ReportError as exc:
        assert exc.reason == "owner_not_enrolled" and "node-1" in exc.message
    else:
        raise AssertionError("a report with an unproven stage owner must not verify")


def test_worker_enrolled_by_another_owner_fails_verify(make_front, files, deployment):
    front = make_front(admit_worker=False)
    genuine = deployment.enrolment("node-1")
    # alice signs bob's stage: the same content under the wrong owner key
    content = json.loads(genuine)["enrolment"]
    forged = canonical_json({"enrolment": content, "signature": keys.b64(
        NODE_OWNER_KEYS["alice"].sign(SIGNING_CONTEXT + canonical_json(content)))})
    front.on_peer_admitted(**deployment.worker_admission(enrolment=forged))
    rc, out, _ = _verify(front, files, deployment)
    assert (rc, out["reason"]) == (2, "owner_not_enrolled")


def test_head_enrolment_is_read_when_its_owner_enrols_it(make_front, files, deployment, monkeypatch):
    monkeypatch.setattr(deployment, "head_enrolment", None)     # the head's owner has not enrolled it yet
    front = make_front()
    rc, out, _ = _verify(front, files, deployment)
    assert (rc, out["reason"]) == (2, "owner_not_enrolled")
    head = next(n for n in out["nodes"] if n["name"] == "node-0")
    assert head["reason"] == "owner_not_enrolled" and head["owner_proof"] is None
    assert next(s for s in verify_report(_report(front)).report.stages if s.node == "node-0").owner_proof is None
    enrolment = deployment.enrolment("node-0")
    monkeypatch.setattr(deployment, "head_enrolment", enrolment)   # `conclave owner enroll` reached the agent
    rc, out, err = _verify(front, files, deployment)
    assert rc == 0, (out, err)
    head = next(n for n in out["nodes"] if n["name"] == "node-0")
    assert head["owner_proof"]["enrolment_sha256"] == hashlib.sha256(enrolment).hexdigest()
    stage = next(s for s in verify_report(_report(front), manifest=deployment.manifest).report.stages
                 if s.node == "node-0")
    assert base64.b64decode(stage.owner_proof["enrolment"]) == enrolment
