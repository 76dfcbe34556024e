"""Emulated TDX/SNP hardware in local mode without a cluster: per-host TEE assignment, the strict
local policy with its unsafe_test_roots, host identities and vendor state over stdin, the emulator
process's admin controls, the node's evidence/collateral arguments and `conclave verify --local`."""
from __future__ import annotations

import argparse
import base64
import ipaddress
import json
from datetime import datetime, timezone
import pytest

from conclave.overlay.evidence import NodeEvidenceSource
from conclave.runtime import attestation
from conclave.runtime.agent.verifier import VendorServices, make_verifier
from conclave.runtime.attestation import policy as policy_mod
from conclave.runtime.attestation.core import PolicyError, TeeType, VerificationFailed
from conclave.runtime.attestation.emulated import identity, service
from conclave.runtime.attestation.emulated.tsm import EmulatedSnpSource, EmulatedTdxSource
from conclave.runtime.errors import UsageError
from conclave.runtime.local import trust as local_trust

from . import emulated_trust

STAGES = emulated_trust.stages("abc")


@pytest.fixture(scope="module")
def trust(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emulated") / "local-abc"
    return emulated_trust.create(folder, "abc", model_digest="ab" * 32, overlay_cidr="10.77.0.0/16")


@pytest.fixture(scope="module")
def manifest(trust):
    return emulated_trust.manifest_of(trust)


@pytest.fixture(scope="module")
def vendors(trust):
    with emulated_trust.vendor_services(trust) as running:
        yield running


def evidence_of(trust, node: str) -> tuple[TeeType, bytes]:
    host = identity.host_from_secret_bytes(trust.host_identity(node))
    source = NodeEvidenceSource(EmulatedTdxSource(host) if trust.tees[node] == "tdx" else EmulatedSnpSource(host))
    item = source.collect(bytes(range(64)))[0]
    return item.tee, item.data


def test_tee_modes_assign_tdx_snp_alternately():
    assert local_trust.node_tees("mixed", 3) == ["tdx", "snp", "tdx"]
    assert local_trust.node_tees("mixed", 4) == ["tdx", "snp", "tdx", "snp"]
    assert local_trust.node_tees("snp", 2) == ["snp", "snp"]
    assert local_trust.node_tees("sim", 1) == ["sim"]
    with pytest.raises(ValueError):
        local_trust.node_tees("sev", 3)


def test_local_policy_is_strict_and_names_the_test_roots_only_as_unsafe(trust, manifest):
    assert trust.tees == {"cvabc-n0": "tdx", "cvabc-n1": "snp", "cvabc-n2": "tdx"}
    policy = manifest.policy_dict
    measurement = local_trust.local_measurement().hex()
    assert policy["production"] is False and policy["allowed_tee"] == ["snp", "tdx"]
    assert "unsafe_allow_simulated" not in policy
    assert policy["require_revocation_check"] is True
    assert policy["max_collateral_age"] == local_trust.LOCAL_MAX_COLLATERAL_AGE_S
    assert policy["tdx"] == {"mr_td": [measurement], "xfam": ["e702060000000000"]}   # xfam as production requires
    assert policy["snp"]["measurement"] == [measurement] and policy["snp"]["min_tcb"]
    pem = trust.test_roots_pem_path.read_bytes()
    assert oct(trust.test_roots_pem_path.stat().st_mode & 0o777) == "0o644"
    assert pem == (policy["unsafe_test_roots"]["tdx"][0] + policy["unsafe_test_roots"]["snp"][0]).encode()
    assert set(manifest.policy.test_roots) == {TeeType.TDX, TeeType.SNP}
    assert "PRIVATE" not in trust.manifest_path.read_text() and "PRIVATE" not in pem.decode()
    assert "PRIVATE" not in repr(trust)


def test_production_refuses_unsafe_test_roots(manifest):
    strict = dict(manifest.policy_dict, production=True)
    strict["snp"] = dict(strict["snp"])
    with pytest.raises(PolicyError) as exc:
        policy_mod.Policy.from_dict(strict)
    assert exc.value.reason == "policy_invalid" and "unsafe_test_roots" in exc.value.message
    bad = dict(manifest.policy_dict, unsafe_test_roots={"tdx": ["-----BEGIN CERTIFICATE-----\nnope\n"]})
    with pytest.raises(PolicyError) as exc:
        policy_mod.Policy.from_dict(bad)
    assert exc.value.reason == "policy_invalid"


def test_every_emulated_host_verifies_with_own_collateral_and_revocation(trust, manifest, vendors, tmp_path):
    pcs, kds = vendors
    verifier = make_verifier(policy=manifest.policy, manifest_digest=manifest.digest,
                             overlay=ipaddress.IPv4Network("10.77.0.0/16"),
                             services=VendorServices(pcs=pcs.base_url, pcs_root_crl=pcs.root_crl_url,
                                                     kds=kds.base_url, refresh_after_s=0),
                             collateral_dir=tmp_path / "collateral")
    for node, kind in trust.tees.items():
        tee, data = evidence_of(trust, node)
        assert str(tee) == kind
        verified = attestation.verify_evidence(data, tee=tee, at=datetime.now(timezone.utc),
                                               collateral=verifier.collateral_for(tee, data),
                                               trusted_roots=verifier.trusted_roots[tee])
        policy_mod.validate(verified, manifest.policy)
        assert verified.revocation_checked is True and verified.collateral_age_s is not None
        if tee == TeeType.TDX:
            assert verified.claims["tcb_status"] == "UpToDate"
    # against the pinned vendor roots the same evidence is untrusted
    tee, data = evidence_of(trust, "cvabc-n0")
    with pytest.raises(VerificationFailed) as exc:
        attestation.verify_evidence(data, tee=tee, at=datetime.now(timezone.utc),
                                    collateral=verifier.collateral_for(tee, data))
    assert exc.value.reason == "chain_untrusted"
    # the emulated PCS revokes the host: the next fetch says so; unrevoke heals
    assert service.control(pcs, {"cmd": "revoke", "host": "cvabc-n0"}) == {"ok": True}
    try:
        with pytest.raises(VerificationFailed) as exc:
            attestation.verify_evidence(data, tee=tee, at=datetime.now(timezone.utc),
                                        collateral=verifier.collateral_for(tee, data),
                                        trusted_roots=verifier.trusted_roots[tee])
        assert exc.value.reason == "cert_revoked"
    finally:
        service.control(pcs, {"cmd": "unrevoke", "host": "cvabc-n0"})
    assert service.control(pcs, {"cmd": "status"})["revoked"] == []


def test_identity_blobs_are_typed_and_keep_keys_out_of_repr(trust):
    host = identity.host_from_secret_bytes(trust.host_identity("cvabc-n1"))
    assert "PRIVATE" not in repr(host) and "cvabc-n1" in repr(host)
    vendor = identity.vendor_from_secret_bytes(trust.vendor_state("kds"))
    assert vendor.host_names() == ["cvabc-n1"] and "PRIVATE" not in repr(vendor)
    for blob in (b"{}", b"not json", json.dumps({"format": identity.HOST_FORMAT, "tee": "tdx"}).encode()):
        with pytest.raises(ValueError):
            identity.host_from_secret_bytes(blob)
        with pytest.raises(ValueError):
            identity.vendor_from_secret_bytes(blob)
    with pytest.raises(ValueError):
        service.start_vendor("pcs", trust.vendor_state("kds"), "127.0.0.1", 0)


def test_admin_socket_controls_and_reasons(trust, tmp_path):
    pcs = service.start_vendor("pcs", trust.vendor_state("pcs"), "127.0.0.1", 0)
    sock = tmp_path / "pcs.sock"
    admin = service.serve_admin(pcs, sock)
    try:
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        assert service.request(sock, "revoke", host="nobody") == {"ok": False, "reason": "host_unknown"}
        assert service.request(sock, "explode") == {"ok": False, "reason": "command_unknown"}
        assert service.request(sock, "tcb_recovery") == {"ok": True}
        assert service.request(sock, "status")["recoveries"] == 1
        assert service.request(sock, "tcb_restore") == {"ok": True}
        assert service.request(sock, "down") == {"ok": True} and service.request(sock, "status")["down"] is True
        assert service.request(sock, "up") == {"ok": True} and service.request(sock, "status")["down"] is False
    finally:
        admin.shutdown()
        admin.server_close()
        pcs.stop()
    kds = service.start_vendor("kds", trust.vendor_state("kds"), "127.0.0.1", 0)
    try:
        assert service.control(kds, {"cmd": "tcb_recovery"}) == {"ok": False, "reason": "unsupported"}
    finally:
        kds.stop()


def test_node_argv_never_holds_keys_and_bundle_builds_the_source(trust, tmp_path):
    from conclave.runtime.cli import node as node_cli
    from conclave.runtime.local.attested import AttestedOverlayNetwork
    from conclave.runtime.local.network import ClusterContext
    net = AttestedOverlayNetwork()
    net.trust = trust
    net.context = ClusterContext(cluster_id="abc", run_dir=tmp_path, state_dir=tmp_path, layer_ranges=[],
                                 model_digest="ab" * 32, public_port=8443)
    net._emulators = {"pcs": {"url": "http://198.18.0.4:51840"}, "kds": {"url": "http://198.18.0.4:51841"}}
    argv = net._evidence_args("cvabc-n1")
    assert argv[:2] == ["--evidence", "emulated"]
    assert argv[argv.index("--pcs-url") + 1] == "http://198.18.0.4:51840"
    assert argv[argv.index("--kds-url") + 1] == "http://198.18.0.4:51841"
    assert argv[argv.index("--pcs-root-crl-url") + 1].endswith("/IntelSGXRootCA.der")
    assert not any("PRIVATE" in a or len(a) > 200 for a in argv)
    bundle = net._bundle_identity("cvabc-n1")
    assert set(bundle) == {"emulated_host"}
    source = node_cli.emulated_evidence_source(bundle)
    assert source.tee == TeeType.SNP and "PRIVATE" not in repr(source)
    with pytest.raises(UsageError) as exc:
        node_cli.emulated_evidence_source({})
    assert exc.value.reason == "attester_missing"
    with pytest.raises(UsageError) as exc:
        node_cli.emulated_evidence_source({"emulated_host": base64.b64encode(b"{}").decode()})
    assert exc.value.reason == "bundle_invalid"
    sim = AttestedOverlayNetwork()
    sim.trust = local_trust.create(tmp_path / "local-sim", stages=STAGES, model_digest="ab" * 32,
                                   overlay_cidr="10.77.0.0/16", rendezvous=[], tee="sim")
    assert sim._evidence_args("cvabc-n0")[:2] == ["--evidence", "sim"]
    assert set(sim._bundle_identity("cvabc-n0")) == {"sim_attester"}


def test_vendor_urls_must_be_http(tmp_path):
    from conclave.runtime.cli import node as node_cli
    args = argparse.Namespace(pcs_url="ftp://x", pcs_root_crl_url=None, kds_url=None, collateral_refresh=None)
    with pytest.raises(UsageError) as exc:
        node_cli.vendor_services(args)
    assert exc.value.reason == "vendor_url_invalid"
    ok = node_cli.vendor_services(argparse.Namespace(pcs_url=None, pcs_root_crl_url=None, kds_url=None,
                                                     collateral_refresh=5))
    assert ok.pcs.startswith("https://api.trustedservices.intel.com") and ok.refresh_after_s == 5


def _verify_args(**over):
    base = dict(url=None, local=True, manifest=None, owner_pubkey=None, owner_fingerprint=None,
                unsafe_unpinned=False, sim_root=None, ca=None, timeout=5.0, pcs_url=None,
                pcs_root_crl_url=None, kds_url=None, max_cached_age=None, json=True)
    base.update(over)
    return argparse.Namespace(**base)


def test_verify_local_resolves_everything_from_the_status(tmp_path, monkeypatch, trust):
    from conclave.runtime.cli import verify as verify_cli
    from conclave.runtime.local import state as state_mod
    monkeypatch.setenv("CONCLAVE_STATE_DIR", str(tmp_path))
    state_mod.write({"phase": "ready", "endpoint": "https://127.0.0.1:8443/v1", "ca_cert": str(tmp_path / "ca.pem"),
                     "manifest": str(trust.manifest_path), "supervisor_pid": None,
                     "network": {"manifest": str(trust.manifest_path), "owner_fingerprint": trust.owner_fingerprint,
                                 "sim_root": str(trust.root_pem_path), "test_roots_pem": str(trust.test_roots_pem_path),
                                 "emulators": {"pcs": {"url": "http://198.18.0.4:51840"},
                                               "kds": {"url": "http://198.18.0.4:51841"}}}})
    args = _verify_args()
    verify_cli.resolve_local(args)
    assert args.url == "https://127.0.0.1:8443" and args.manifest == trust.manifest_path
    assert args.owner_fingerprint == trust.owner_fingerprint and args.ca == tmp_path / "ca.pem"
    assert args.pcs_url == "http://198.18.0.4:51840" and args.kds_url == "http://198.18.0.4:51841"
    assert args.pcs_root_crl_url == "http://198.18.0.4:51840/IntelSGXRootCA.der"
    with pytest.raises(UsageError) as exc:
        verify_cli.resolve_local(_verify_args(url="https://elsewhere:1"))
    assert exc.value.reason == "verify_local_conflict"
    with pytest.raises(UsageError) as exc:
        verify_cli._cmd_verify(_verify_args(local=False))
    assert exc.value.reason == "verify_target_missing"
