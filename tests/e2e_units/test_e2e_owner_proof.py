"""Each stage's owner is proven to clients (issue 16 hole 1): verify_bundle step <node>.07.enrolment
checks the stage owner's enrolment over exactly the keys the entry's binding names, and the
result names each stage's owner as proven; the signed run report carries each stage's owner
proof and verify_report (and `conclave report verify`) refuse a stage whose owner is not proven.

Real cryptography throughout: simulated TEE evidence, Ed25519 owner, node-owner, statement and
report keys, enrolments signed by runtime.manifest.enrolment.sign_enrolment."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
from datetime import datetime, timedelta, timezone

import pytest

from conclave.overlay import stage_statement
from conclave.runtime.cli import main
from conclave.runtime.endpoint import verify_bundle
from conclave.runtime.endpoint.binding import node_report_data
from conclave.runtime.endpoint.bundle import BundleBuilder
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.report import ReportError, RunReport, verify_report

from e2e_support import NODE_OWNERS

TLS = secrets.token_bytes(32)
STARTED = datetime(2026, 11, 25, 22, 0, tzinfo=timezone.utc)


@pytest.fixture
def nonce() -> bytes:
    return secrets.token_bytes(32)


def _verify(deployment, bundle, nonce):
    return verify_bundle(json.dumps(bundle).encode(), manifest=deployment.manifest, tls_spki_sha256=TLS,
                         nonce=nonce, at=datetime.now(timezone.utc), trusted_roots=[deployment.root.certificate])


def _node(result, name):
    return next(n for n in result.nodes if n.name == name)


def _with_worker_enrolment(deployment, nonce, enrolment: bytes | None) -> dict:
    """A bundle whose worker entry presents `enrolment` (its evidence and binding unchanged)."""
    bundle = deployment.builder(TLS).build(nonce)
    bundle["nodes"][1]["enrolment"] = base64.b64encode(enrolment).decode() if enrolment else None
    return bundle


def test_every_stage_owner_is_named_as_proven(deployment, nonce):
    r = _verify(deployment, deployment.builder(TLS).build(nonce), nonce)
    assert r.ok, r.to_json()
    out = r.to_json()
    assert out["stage_owners"] == [
        {"stage": "node-0", "role": "head", "owner": "alice", "proven": True,
         "owner_fingerprint": keys.fingerprint(NODE_OWNERS["alice"])},
        {"stage": "node-1", "role": "worker", "owner": "bob", "proven": True,
         "owner_fingerprint": keys.fingerprint(NODE_OWNERS["bob"])}]
    for node in out["nodes"]:
        assert {"step": f"{node['name']}.07.enrolment", "ok": True} in node["steps"]
        proof = node["owner_proof"]
        assert proof["proven"] is True and proof["stage"] == node["name"] and proof["owner"] == node["owner"]
    served = base64.b64decode(deployment.builder(TLS).build(nonce)["nodes"][1]["enrolment"])
    assert _node(r, "node-1").owner_proof["enrolment_sha256"] == hashlib.sha256(served).hexdigest()


@pytest.mark.parametrize("case", ["none", "other_owner", "other_stage", "other_boot", "expired", "garbage"])
def test_worker_without_a_valid_enrolment_fails_owner_not_enrolled(deployment, nonce, case):
    enrolment = {
        "none": lambda: None,
        "other_owner": lambda: deployment.enrolment("node-1", owner="carol"),     # not bob's key
        "other_stage": lambda: deployment.enrolment("node-0"),                     # alice's head enrolment
        "other_boot": lambda: _other_boot_enrolment(deployment),                   # keys the evidence does not bind
        "expired": lambda: deployment.enrolment("node-1", issued=datetime.now(timezone.utc) - timedelta(hours=3),
                                                validity=timedelta(hours=1)),
        "garbage": lambda: b'{"enrolment": {}, "signature": "AA=="}',
    }[case]()
    r = _verify(deployment, _with_worker_enrolment(deployment, nonce, enrolment), nonce)
    assert (r.ok, r.reason, r.exit_code) == (False, "owner_not_enrolled", 2), r.to_json()
    worker = _node(r, "node-1")
    assert worker.reason == "owner_not_enrolled" and worker.owner_proof is None
    assert worker.steps[-1] == {"step": "node-1.07.enrolment", "ok": False}
    assert _node(r, "node-0").ok    # the head's own proof still holds
    owners = {o["stage"]: o["proven"] for o in r.to_json()["stage_owners"]}
    assert owners == {"node-0": True, "node-1": False}


def _other_boot_enrolment(deployment) -> bytes:
    """bob's genuine enrolment of node-1, but of another boot's keys (a replayed or stolen one)."""
    saved = dict(deployment.wg)
    try:
        deployment.wg["node-1"] = secrets.token_bytes(32)
        return deployment.enrolment("node-1")
    finally:
        deployment.wg.clear()
        deployment.wg.update(saved)


def test_head_not_enrolled_fails_owner_not_enrolled(deployment, nonce):
    builder = deployment.builder(TLS)
    builder._head_enrolment = lambda: b""      # its owner has not enrolled this boot yet
    r = _verify(deployment, builder.build(nonce), nonce)
    assert (r.ok, r.reason) == (False, "owner_not_enrolled")
    head = _node(r, "node-0")
    assert head.reason == "owner_not_enrolled" and head.steps[-1] == {"step": "node-0.07.enrolment", "ok": False}


def test_a_binding_without_statement_key_cannot_be_matched(deployment, nonce):
    """A worker whose evidence binds no statement key: its enrolment covers a key nothing attests."""
    extra = deployment.admission_extra("node-1")          # no statement_key
    worker_nonce = secrets.token_bytes(32)
    evidence = deployment.worker_attester.evidence(node_report_data(
        manifest_digest=deployment.manifest.digest, wg_public_key=deployment.wg["node-1"],
        hpke_public_key=deployment.hpke["node-1"], nonce=worker_nonce, extra=extra))
    builder = deployment.builder(TLS, include_worker=False)
    builder.set_peer("node-1", tee="sim", evidence=evidence, extra=extra, wg_public_key=deployment.wg["node-1"],
                     hpke_public_key=deployment.hpke["node-1"], nonce=worker_nonce,
                     enrolment=deployment.enrolment("node-1"))
    r = _verify(deployment, builder.build(nonce), nonce)
    assert (r.ok, r.reason) == (False, "owner_not_enrolled")
    assert "statement key" in _node(r, "node-1").message


def test_enrolment_that_is_not_base64_is_malformed(deployment, nonce):
    bundle = deployment.builder(TLS).build(nonce)
    bundle["nodes"][1]["enrolment"] = "not base64!"
    r = _verify(deployment, bundle, nonce)
    assert (r.ok, r.reason, r.exit_code) == (False, "malformed", 5)


def test_bundle_without_the_enrolment_field_is_malformed(deployment, nonce):
    bundle = deployment.builder(TLS).build(nonce)
    del bundle["nodes"][1]["enrolment"]
    assert _verify(deployment, bundle, nonce).reason == "malformed"


# ---------------------------------------------------------------- the run report's owner proofs
def _report(deployment, *, enrolments=None, statements=None) -> RunReport:
    enrolments = {n: deployment.enrolment(n) for n in ("node-0", "node-1")} if enrolments is None else enrolments
    report = RunReport.for_manifest(deployment.manifest, started_at=STARTED,
                                    evidence={"node-0": ("sim", b"head"), "node-1": ("sim", deployment.worker_evidence)},
                                    shards={"node-0": "01" * 32, "node-1": "02" * 32}, enrolments=enrolments)
    if statements:
        stages = tuple(dataclasses.replace(s, shard_statement=statements.get(s.node)) for s in report.stages)
        report = dataclasses.replace(report, stages=stages)
    return report


def _statement(key, node: str, digest: str) -> dict:
    body, signature = stage_statement.sign(key, {"stage": node, "node_id": node,
                                                 "shard": {"digest": digest, "verified": True}})
    return {"body": base64.b64encode(body).decode(), "signature": base64.b64encode(signature).decode()}


def _reason(fn) -> str:
    with pytest.raises(ReportError) as exc:
        fn()
    return exc.value.reason


def test_report_carries_each_stages_owner_proof(deployment):
    signer = deployment.report_signer
    statements = {n: _statement(deployment.statement_keys[n], n, d)
                  for n, d in (("node-0", "01" * 32), ("node-1", "02" * 32))}
    v = verify_report(signer.sign(_report(deployment, statements=statements)), report_key=signer.public_key,
                      manifest=deployment.manifest)
    assert v.owners_proven and v.to_json()["owners_proven"] is True
    for s in v.report.stages:
        enrolment = deployment.enrolment(s.node)
        assert s.owner_proof["enrolment_sha256"] == hashlib.sha256(base64.b64decode(s.owner_proof["enrolment"])).hexdigest()
        assert json.loads(base64.b64decode(s.owner_proof["enrolment"]))["enrolment"]["owner"] == s.owner
        assert s.owner_proof["issued"] == json.loads(enrolment)["enrolment"]["issued"]


@pytest.mark.parametrize("case", ["missing", "other_owner", "other_stage", "digest", "issued"])
def test_report_with_an_unproven_owner_is_refused(deployment, case):
    signer = deployment.report_signer
    enrolments = {n: deployment.enrolment(n) for n in ("node-0", "node-1")}
    if case == "missing":
        enrolments.pop("node-1")
    elif case == "other_owner":
        enrolments["node-1"] = deployment.enrolment("node-1", owner="carol")
    elif case == "other_stage":
        enrolments["node-1"] = enrolments["node-0"]
    report = _report(deployment, enrolments=enrolments)
    if case in ("digest", "issued"):
        proof = dict(report.stages[1].owner_proof)
        proof["enrolment_sha256" if case == "digest" else "issued"] = \
            "00" * 32 if case == "digest" else "2020-01-01T00:00:00Z"
        report = dataclasses.replace(report, stages=(report.stages[0],
                                                      dataclasses.replace(report.stages[1], owner_proof=proof)))
    data = signer.sign(report)       # the attested head itself signs the false attribution
    assert _reason(lambda: verify_report(data, report_key=signer.public_key,
                                         manifest=deployment.manifest)) == "owner_not_enrolled"
    assert verify_report(data, report_key=signer.public_key).owners_proven is False   # no manifest: not checked


def test_shard_statement_not_by_the_enrolled_statement_key_is_refused(deployment):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    signer = deployment.report_signer
    statements = {"node-0": _statement(deployment.statement_keys["node-0"], "node-0", "01" * 32),
                  "node-1": _statement(ed25519.Ed25519PrivateKey.generate(), "node-1", "02" * 32)}
    data = signer.sign(_report(deployment, statements=statements))
    with pytest.raises(ReportError) as exc:
        verify_report(data, manifest=deployment.manifest)
    assert exc.value.reason == "owner_not_enrolled" and "statement key" in exc.value.message


def test_cli_report_verify_names_an_unproven_owner(deployment, tmp_path, capsys):
    man, rpt = tmp_path / "manifest.json", tmp_path / "report.json"
    man.write_bytes(deployment.manifest_bytes)
    fingerprint = deployment.manifest.owner_fingerprint
    rpt.write_bytes(deployment.report_signer.sign(_report(deployment)))
    assert main(["report", "verify", str(rpt), "--manifest", str(man), "--owner-fingerprint", fingerprint,
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["owners_proven"] is True and all(s["owner_proof"] for s in out["stages"])
    rpt.write_bytes(deployment.report_signer.sign(_report(deployment, enrolments={"node-0": deployment.enrolment("node-0")})))
    assert main(["report", "verify", str(rpt), "--manifest", str(man), "--owner-fingerprint", fingerprint,
                 "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["reason"]) == (False, "owner_not_enrolled") and "node-1" in out["error"]


def test_builder_reads_the_head_enrolment_per_bundle(deployment):
    """The builder reads the head's enrolment per bundle: a later enrolment shows up at once."""
    held = {"enrolment": b""}
    builder = BundleBuilder(manifest=deployment.manifest, head_node="node-0", tee="sim",
                            attest=deployment.head_attester.evidence, wg_public_key=deployment.wg["node-0"],
                            hpke_public_key=deployment.hpke["node-0"], tls_spki_sha256=TLS,
                            report_key=deployment.report_signer.public_key,
                            statement_key=deployment.statement_key("node-0"),
                            head_enrolment=lambda: held["enrolment"])
    n1 = secrets.token_bytes(32)
    assert builder.build(n1)["nodes"][0]["enrolment"] is None
    held["enrolment"] = deployment.enrolment("node-0")
    assert base64.b64decode(builder.build(n1)["nodes"][0]["enrolment"]) == held["enrolment"]
