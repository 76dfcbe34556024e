"""Peer-shared collateral on emulated TDX/SNP hosts, at the admission verifier (no cluster).

A node ships the vendor-signed collateral its own verifier's cache holds with its CPU evidence
(overlay/evidence.NodeEvidenceSource.share_collateral, runtime/attestation/collateral_share). A
verifier with nothing of its own (cold cache, vendor down) admits on it; what the shared copy
lacks (CRLs) or what is too old is refused with the stable reasons; a tampered copy is ignored."""
from __future__ import annotations

import dataclasses
import ipaddress
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from conclave.overlay.admission import AdmissionRejected
from conclave.overlay.evidence import NodeEvidenceSource
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.runtime import attestation
from conclave.runtime.agent.verifier import VendorServices, make_verifier
from conclave.runtime.attestation import collateral_share
from conclave.runtime.attestation.core import TeeType
from conclave.runtime.attestation.emulated import identity, service
from conclave.runtime.attestation.emulated.tsm import EmulatedSnpSource, EmulatedTdxSource
from conclave.runtime.local import trust as local_trust

from . import emulated_trust

STAGES = emulated_trust.stages("shr")
REPORT_DATA = bytes(range(64))


@pytest.fixture(scope="module")
def trust(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared-collateral") / "local-shr"
    return emulated_trust.create(folder, "shr", model_digest="cd" * 32, overlay_cidr="10.78.0.0/16")


@pytest.fixture(scope="module")
def manifest(trust):
    return emulated_trust.manifest_of(trust)


@pytest.fixture()
def vendors(trust):
    with emulated_trust.vendor_services(trust) as running:
        yield running


def verifier_for(manifest, vendors, folder):
    pcs, kds = vendors
    return make_verifier(policy=manifest.policy, manifest_digest=manifest.digest,
                         overlay=ipaddress.IPv4Network("10.78.0.0/16"),
                         services=VendorServices(pcs=pcs.base_url, pcs_root_crl=pcs.root_crl_url,
                                                 kds=kds.base_url, refresh_after_s=0),
                         collateral_dir=folder)


def source_of(trust, node: str) -> NodeEvidenceSource:
    host = identity.host_from_secret_bytes(trust.host_identity(node))
    return NodeEvidenceSource(EmulatedTdxSource(host) if trust.tees[node] == "tdx" else EmulatedSnpSource(host))


def as_item(item) -> pb.EvidenceItem:
    return pb.EvidenceItem(tee=str(item.tee), data=item.data, certs=list(item.certs), collateral=item.collateral)


def admit_item(verifier, item):
    """What admission does with the CPU item: verify (own + carried collateral) and validate."""
    verified = verifier._verify_item(as_item(item), TeeType(item.tee), nonce=None)
    return verified, verifier._validate(verified)


def vendors_down(vendors) -> None:
    for server in vendors:
        server.set_down(True)


@pytest.mark.parametrize("node", [n for n, _, _ in STAGES])
def test_cold_verifier_admits_on_peer_shared_collateral_while_vendors_are_down(trust, manifest, vendors,
                                                                              tmp_path, node):
    peer = verifier_for(manifest, vendors, tmp_path / "peer")
    source = source_of(trust, node)
    assert source.collect(REPORT_DATA)[0].collateral == b""     # nothing shared before the node holds any
    source.share_collateral(peer.collateral_for)
    item = source.collect(REPORT_DATA)[0]
    assert item.collateral, "the node ships the collateral its own cache fetched"
    vendors_down(vendors)
    cold = verifier_for(manifest, vendors, tmp_path / "cold")
    bare = dataclasses.replace(item, collateral=b"")
    with pytest.raises(AdmissionRejected) as exc:
        admit_item(cold, bare)                         # no collateral anywhere: refused
    assert str(exc.value.reason) in ("collateral_missing", "tcb_not_allowed", "certs_missing",
                                     "revocation_unchecked")
    verified, _ = admit_item(cold, item)               # the peer's copy, checked, carries the cold verifier
    assert verified.revocation_checked is True and verified.collateral_age_s is not None
    if item.tee == TeeType.TDX:
        assert verified.claims["tcb_status"] == "UpToDate"
    # the node keeps shipping its cached copy while its own vendor fetches fail
    again = source.collect(REPORT_DATA)[0]
    assert again.collateral == item.collateral


@pytest.mark.parametrize("node", ["cvshr-n0", "cvshr-n1"])
def test_shared_collateral_without_crls_is_revocation_unchecked(trust, manifest, vendors, tmp_path, node):
    peer = verifier_for(manifest, vendors, tmp_path / "peer")
    item = source_of(trust, node).collect(REPORT_DATA)[0]
    own = peer.collateral_for(item.tee, item.data)
    if item.tee == TeeType.TDX:
        stripped = dataclasses.replace(own, pck_crl=None, root_ca_crl=None, _sig_cache={})
    else:
        stripped = dataclasses.replace(own, crls=())
    item = dataclasses.replace(item, collateral=collateral_share.to_bytes(item.tee, stripped))
    vendors_down(vendors)
    cold = verifier_for(manifest, vendors, tmp_path / "cold")
    with pytest.raises(AdmissionRejected) as exc:
        admit_item(cold, item)
    assert str(exc.value.reason) == "revocation_unchecked"


def test_shared_crls_never_drop_a_revocation(trust, manifest, vendors, tmp_path):
    """A verifier that knows the host is revoked keeps refusing it, whatever older copy the host ships."""
    pcs, _ = vendors
    host = "cvshr-n0"
    peer = verifier_for(manifest, vendors, tmp_path / "peer")
    source = source_of(trust, host)
    source.share_collateral(peer.collateral_for)
    item = source.collect(REPORT_DATA)[0]                   # shipped before the revocation
    assert service.control(pcs, {"cmd": "revoke", "host": host}) == {"ok": True}
    try:
        verifier = verifier_for(manifest, vendors, tmp_path / "fresh")
        with pytest.raises(AdmissionRejected) as exc:
            admit_item(verifier, item)
        assert str(exc.value.reason) == "cert_revoked"
    finally:
        service.control(pcs, {"cmd": "unrevoke", "host": host})


def test_shared_collateral_older_than_the_policy_allows_is_collateral_expired(trust, manifest, vendors, tmp_path):
    peer = verifier_for(manifest, vendors, tmp_path / "peer")
    source = source_of(trust, "cvshr-n0")
    source.share_collateral(peer.collateral_for)
    item = source.collect(REPORT_DATA)[0]
    vendors_down(vendors)
    later = verifier_for(manifest, vendors, tmp_path / "later")
    later.clock = lambda: datetime.now(timezone.utc) + timedelta(seconds=local_trust.LOCAL_MAX_COLLATERAL_AGE_S + 120)
    with pytest.raises(AdmissionRejected) as exc:
        admit_item(later, item)
    assert str(exc.value.reason) == "collateral_expired"


def test_tampered_shared_collateral_is_not_used(trust, manifest, vendors, tmp_path):
    peer = verifier_for(manifest, vendors, tmp_path / "peer")
    item = source_of(trust, "cvshr-n0").collect(REPORT_DATA)[0]
    own = peer.collateral_for(item.tee, item.data)
    sig = bytearray(own.tcb_info_signature)
    sig[5] ^= 1
    forged = dataclasses.replace(own, tcb_info_signature=bytes(sig), _sig_cache={})
    item = dataclasses.replace(item, collateral=collateral_share.to_bytes(item.tee, forged))
    vendors_down(vendors)
    cold = verifier_for(manifest, vendors, tmp_path / "cold")
    with pytest.raises(AdmissionRejected) as exc:
        admit_item(cold, item)
    assert str(exc.value.reason) in ("collateral_missing", "tcb_not_allowed", "revocation_unchecked")


def test_shared_forms_read_back_as_the_same_collateral(trust, manifest, vendors, tmp_path):
    peer = verifier_for(manifest, vendors, tmp_path / "peer")
    for node in ("cvshr-n0", "cvshr-n1"):
        item = source_of(trust, node).collect(REPORT_DATA)[0]
        own = peer.collateral_for(item.tee, item.data)
        back = attestation.load_collateral_bytes(item.tee, collateral_share.to_bytes(item.tee, own))
        if item.tee == TeeType.TDX:
            assert back.tcb_info_raw == own.tcb_info_raw and back.qe_identity_raw == own.qe_identity_raw
            assert back.pck_crl == own.pck_crl and back.root_ca_crl == own.root_ca_crl
        else:
            assert [c.der for c in back.certs] == [c.der for c in own.certs]
            assert [c.public_bytes(Encoding.DER) for c in back.crls] == \
                   [c.public_bytes(Encoding.DER) for c in own.crls] and own.crls
    assert collateral_share.to_bytes(TeeType.SIM, object()) == b""
