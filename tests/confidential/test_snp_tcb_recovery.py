"""SNP's TCB recovery as AMD does it (issue 14): AMD publishes no TCB status to recover; after a security
bulletin the fixed firmware carries higher SPLs, the KDS keeps issuing VCEKs for every TCB (old ones
included), and verifiers raise their minimum TCB. So the emulated KDS has no tcb_recovery control
(it answers `unsupported`); the recovery is the signed policy's `snp.min_tcb` moving above a host's
REPORTED_TCB, which refuses that host `svn_too_low` while its VCEK still verifies."""
from __future__ import annotations

import ipaddress
from datetime import datetime, timezone

import pytest

from conclave.overlay.evidence import NodeEvidenceSource
from conclave.runtime import attestation
from conclave.runtime.agent.verifier import VendorServices, make_verifier
from conclave.runtime.attestation import policy as policy_mod
from conclave.runtime.attestation.core import PolicyViolated
from conclave.runtime.attestation.emulated import identity, service
from conclave.runtime.attestation.emulated.tsm import EmulatedSnpSource
from conclave.runtime.local import trust as local_trust
from conclave.runtime.manifest.document import DeploymentManifest

STAGES = [("cvrec-n0", "head", (0, 10)), ("cvrec-n1", "worker", (10, 20))]


@pytest.fixture(scope="module")
def trust(tmp_path_factory):
    return local_trust.create(tmp_path_factory.mktemp("snp-recovery") / "local-rec", stages=STAGES,
                              model_digest="ef" * 32, overlay_cidr="10.79.0.0/16",
                              rendezvous=["198.18.0.1:51822"], tee="mixed")


def test_snp_recovery_is_the_policy_min_tcb_moving_up(trust, tmp_path):
    manifest = DeploymentManifest.load(trust.manifest_path, trusted_owner=trust.owner_fingerprint)
    kds = service.start_vendor("kds", trust.vendor_state("kds"), "127.0.0.1", 0)
    pcs = service.start_vendor("pcs", trust.vendor_state("pcs"), "127.0.0.1", 0)
    try:
        assert service.control(kds, {"cmd": "tcb_recovery"}) == {"ok": False, "reason": "unsupported"}
        verifier = make_verifier(policy=manifest.policy, manifest_digest=manifest.digest,
                                 overlay=ipaddress.IPv4Network("10.79.0.0/16"),
                                 services=VendorServices(pcs=pcs.base_url, pcs_root_crl=pcs.root_crl_url,
                                                         kds=kds.base_url, refresh_after_s=0),
                                 collateral_dir=tmp_path / "collateral")
        node = "cvrec-n1"
        assert trust.tees[node] == "snp"
        host = identity.host_from_secret_bytes(trust.host_identity(node))
        item = NodeEvidenceSource(EmulatedSnpSource(host)).collect(bytes(64))[0]
        verified = attestation.verify_evidence(item.data, tee=item.tee, at=datetime.now(timezone.utc),
                                               collateral=verifier.collateral_for(item.tee, item.data),
                                               trusted_roots=verifier.trusted_roots[item.tee])
        policy_mod.validate(verified, manifest.policy)          # today's minimum: admitted
        raised = dict(manifest.policy_dict)
        raised["snp"] = dict(raised["snp"], min_tcb=dict(raised["snp"]["min_tcb"]))
        raised["snp"]["min_tcb"]["snp"] += 1                     # the bulletin's fixed SNP firmware SPL
        with pytest.raises(PolicyViolated) as exc:
            policy_mod.validate(verified, policy_mod.Policy.from_dict(raised))
        assert exc.value.reason == "svn_too_low" and \
            f"below the minimum {raised['snp']['min_tcb']['snp']}" in str(exc.value)
    finally:
        kds.stop()
        pcs.stop()
