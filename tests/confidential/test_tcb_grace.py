"""TCB recovery with and without the policy's grace, and production policies, at the admission
verifier of emulated TDX/SNP hosts (no cluster: changing a running cluster's policy would need a
new manifest, so the live test, test_revocation_live.py, covers the eviction path and this file the
grace path).

After the emulated Intel PCS publishes a TCB recovery, every emulated TDX host's TCB level is
OutOfDate. Under the local cluster's policy that is `tcb_not_allowed`; a policy with
`tcb_grace_until` keeps the host until then, and what the node shows names the node on grace and
until when: its peer record in the agent status (`tcb_grace_until`), the head's public status page
(stages[].tcb_grace_until) and /metrics (conclave_peer_tcb_grace_until_seconds{peer}). Past the
grace it is refused again. A production policy (no test roots) refuses every emulated host."""
from __future__ import annotations

import ipaddress
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conclave.overlay.admission import AdmissionRejected
from conclave.overlay.prover import answer_challenge
from conclave.overlay.identity import Announcement, NodeIdentity, Role
from conclave.overlay.nonces import NonceCache
from conclave.runtime.agent.admission_flow import _grace_epoch
from conclave.runtime.agent.peers import PeerRecord, PeerState
from conclave.runtime.agent.verifier import VendorServices, make_verifier
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.attestation.emulated import service
from conclave.runtime.metrics import ConclaveMetrics
from conclave.runtime.serving.status_view import StatusBoard, agent_facts, build_status

# the same emulated trust set-up (cluster "shr": TDX, SNP, TDX) and its PCS/KDS as the shared-collateral tests
from .test_collateral_sharing import STAGES, manifest, source_of, trust, vendors  # noqa: F401 (fixtures)

NET = ipaddress.IPv4Network("10.78.0.0/16")


@pytest.fixture()
def recovered(vendors):
    """The PCS has published a TCB recovery (withdrawn afterwards)."""
    pcs, _ = vendors
    assert service.control(pcs, {"cmd": "tcb_recovery"}) == {"ok": True}
    try:
        yield vendors
    finally:
        service.control(pcs, {"cmd": "tcb_restore"})


def rfc3339(t: datetime) -> str:
    return t.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def verifier(manifest, vendors, folder, policy=None):
    pcs, kds = vendors
    return make_verifier(policy=policy or manifest.policy, manifest_digest=manifest.digest, overlay=NET,
                         services=VendorServices(pcs=pcs.base_url, pcs_root_crl=pcs.root_crl_url,
                                                 kds=kds.base_url, refresh_after_s=0),
                         collateral_dir=folder)


def with_grace(manifest, until: datetime) -> Policy:
    return Policy.from_dict({**manifest.policy_dict, "tcb_grace_until": rfc3339(until)})


def announcement(node: str, role: Role, index: int) -> Announcement:
    ident = NodeIdentity.generate()
    return Announcement(node_id=node, owner="o", role=role, underlay_host=f"198.18.0.{10 + index}",
                        admission_port=51821, wireguard_port=51820, wg_public_key=ident.wg_public,
                        hpke_public_key=ident.hpke_public, overlay_address=ipaddress.IPv4Address(f"10.78.0.{10 + index}"))


def admit(v, trust, manifest, index: int):
    """The whole admission decision (challenge, evidence over our nonce, verify, validate)."""
    node, role, _ = STAGES[index]
    ann = announcement(node, Role(role), index)
    nonces = NonceCache()
    nonce = nonces.issue(ann.node_id)
    reply = answer_challenge(me=ann, source=source_of(trust, node), manifest_digest=manifest.digest, nonce=nonce)
    return ann, v.admit(challenged=ann, reply=reply, nonces=nonces)


def rejected(fn) -> AdmissionRejected:
    with pytest.raises(AdmissionRejected) as exc:
        fn()
    return exc.value


def test_tcb_recovery_without_grace_is_tcb_not_allowed(trust, manifest, recovered, tmp_path):
    v = verifier(manifest, recovered, tmp_path / "c")
    for index, (node, _, _) in enumerate(STAGES):
        if trust.tees[node] == "tdx":
            err = rejected(lambda: admit(v, trust, manifest, index))
            assert str(err.reason) == "tcb_not_allowed", err
        else:   # Intel's TCB recovery does not touch an AMD host
            _, peer = admit(v, trust, manifest, index)
            assert "tcb_grace_until" not in peer.claims_summary


def test_tcb_recovery_within_grace_is_kept_and_every_view_names_the_grace(trust, manifest, recovered, tmp_path):
    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=3)
    v = verifier(manifest, recovered, tmp_path / "c", with_grace(manifest, until))
    tdx_index = next(i for i, (n, _, _) in enumerate(STAGES) if trust.tees[n] == "tdx" and i > 0)
    snp_index = next(i for i, (n, _, _) in enumerate(STAGES) if trust.tees[n] == "snp")
    ann, peer = admit(v, trust, manifest, tdx_index)
    summary = peer.claims_summary
    assert summary["tcb_status"] == "OutOfDate" and summary["tcb_grace_until"] == rfc3339(until), summary
    assert summary["revocation_checked"] is True and summary["collateral_age_s"] is not None
    snp_ann, snp_peer = admit(v, trust, manifest, snp_index)      # not on grace: no grace named
    assert "tcb_grace_until" not in snp_peer.claims_summary

    # the node's agent status, per peer
    rec = PeerRecord(announcement=ann, state=PeerState.MESHED, admitted=peer)
    other = PeerRecord(announcement=snp_ann, state=PeerState.MESHED, admitted=snp_peer)
    view = rec.to_json(time.monotonic())
    assert view["tcb_status"] == "OutOfDate" and view["tcb_grace_until"] == rfc3339(until)
    assert view["revocation_checked"] is True
    assert other.to_json(time.monotonic())["tcb_grace_until"] is None
    assert PeerRecord(announcement=ann).to_json(time.monotonic())["tcb_grace_until"] is None   # not admitted

    # the head's public status page
    agent = SimpleNamespace(cfg=SimpleNamespace(node_name=STAGES[0][0]), stage_extra={},
                            peer_statements=lambda: {}, peers={"a": rec, "b": other})
    facts = agent_facts(agent)
    assert facts[ann.node_id]["tcb_grace_until"] == rfc3339(until)
    assert "tcb_grace_until" not in facts[snp_ann.node_id]
    doc = build_status(manifest=manifest, head=STAGES[0][0], board=StatusBoard(manifest),
                       admitted=frozenset({ann.node_id, snp_ann.node_id}), missing=[], figures={}, facts=facts)
    stages = {s["node"]: s for s in doc["stages"]}
    assert stages[ann.node_id]["tcb_status"] == "OutOfDate"
    assert stages[ann.node_id]["tcb_grace_until"] == rfc3339(until)
    assert stages[snp_ann.node_id]["tcb_grace_until"] is None

    # /metrics: set at admission, gone when the peer is admitted off grace or evicted
    metrics = ConclaveMetrics()

    def grace_series() -> dict[str, float]:
        families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
        fam = families.get("conclave_peer_tcb_grace_until_seconds")
        return {s.labels["peer"]: s.value for s in fam.samples} if fam else {}
    metrics.record_tcb_grace(ann.node_id, _grace_epoch(peer))
    metrics.record_tcb_grace(snp_ann.node_id, _grace_epoch(snp_peer))
    assert grace_series() == {ann.node_id: until.timestamp()}
    metrics.record_eviction(ann.node_id, "tcb_not_allowed")
    assert grace_series() == {}


def test_past_the_grace_the_out_of_date_host_is_refused(trust, manifest, recovered, tmp_path):
    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=60)
    v = verifier(manifest, recovered, tmp_path / "c", with_grace(manifest, until))
    index = next(i for i, (n, _, _) in enumerate(STAGES) if trust.tees[n] == "tdx")
    _, peer = admit(v, trust, manifest, index)
    assert peer.claims_summary["tcb_grace_until"] == rfc3339(until)
    v.clock = lambda: until + timedelta(seconds=61)
    err = rejected(lambda: admit(v, trust, manifest, index))
    assert str(err.reason) == "tcb_not_allowed", err


def test_grace_does_not_admit_a_revoked_host(trust, manifest, recovered, tmp_path):
    pcs, _ = recovered
    node = next(n for n, _, _ in STAGES if trust.tees[n] == "tdx")
    until = datetime.now(timezone.utc) + timedelta(days=3)
    assert service.control(pcs, {"cmd": "revoke", "host": node}) == {"ok": True}
    try:
        v = verifier(manifest, recovered, tmp_path / "c", with_grace(manifest, until))
        err = rejected(lambda: admit(v, trust, manifest, [n for n, _, _ in STAGES].index(node)))
        assert str(err.reason) == "cert_revoked", err
    finally:
        service.control(pcs, {"cmd": "unrevoke", "host": node})


def test_production_policy_refuses_every_emulated_host(trust, manifest, vendors, tmp_path):
    """The local policy made production (which refuses unsafe_test_roots, so without them): the
    verifier trusts only the pinned Intel and AMD roots, and no emulated host reaches them."""
    data = {k: v for k, v in manifest.policy_dict.items() if k != "unsafe_test_roots"}
    production = Policy.from_dict({**data, "production": True})
    assert production.production is True and not production.test_roots
    v = verifier(manifest, vendors, tmp_path / "c", production)
    for index in range(len(STAGES)):
        err = rejected(lambda: admit(v, trust, manifest, index))
        assert str(err.reason) == "chain_untrusted", (STAGES[index], err)


def test_run_report_names_the_stage_on_grace_and_until_when(manifest):
    """The signed run report carries tcb_grace_until for a stage on grace (from the head agent's view),
    verify_report reads it back, and a malformed value is refused."""
    import json as _json

    from conclave.runtime.report import ReportSigner
    from conclave.runtime.report.document import verify_report
    from conclave.runtime.serving.front_report import RunReportState
    signer = ReportSigner.generate()
    state = RunReportState(manifest=manifest, signer=signer)
    for node, _, _ in STAGES:
        state.record_evidence(node, tee="tdx", evidence=node.encode())
        state.set_shard(node, "ee" * 32)
    worker = STAGES[2][0]
    state.grace_source = lambda: {worker: "2031-05-06T07:08:09.250000Z", "not-a-stage": "2031-01-01T00:00:00Z"}
    report = verify_report(state.signed(), report_key=signer.public_key).report
    graces = {s.node: s.tcb_grace_until for s in report.stages}
    assert graces == {STAGES[0][0]: None, STAGES[1][0]: None, worker: "2031-05-06T07:08:09Z"}
    assert "tcb_grace_until" not in _json.dumps([s.to_json() for s in report.stages if s.node != worker])
    state.grace_source = lambda: (_ for _ in ()).throw(RuntimeError("agent stopping"))
    assert all(s.tcb_grace_until is None for s in verify_report(state.signed()).report.stages)
    state.grace_source = lambda: {worker: "soon"}
    assert all(s.tcb_grace_until is None for s in verify_report(state.signed()).report.stages)

    from conclave.runtime.report.document import StageRecord
    from conclave.runtime.report import ReportError
    good = next(s for s in report.stages if s.node == worker).to_json()
    assert StageRecord.from_json(good, 2).tcb_grace_until == "2031-05-06T07:08:09Z"
    with pytest.raises(ReportError) as exc:
        StageRecord.from_json({**good, "tcb_grace_until": "tomorrow"}, 2)
    assert exc.value.reason == "malformed"
