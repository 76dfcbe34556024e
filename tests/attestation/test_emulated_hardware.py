"""Emulated TDX and SNP hardware through the real verifiers, with collateral fetched from the
emulated Intel PCS / AMD KDS over 127.0.0.1; revocation, TCB recovery, freshness, outages."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from conclave.runtime.attestation import collateral_merge, policy as policy_mod, snp, tdx
from conclave.runtime.attestation.collateral_cache import CollateralCache
from conclave.runtime.attestation.core import PolicyViolated, TeeType, VerificationFailed
from conclave.runtime.attestation.emulated.kds_server import EmulatedKds
from conclave.runtime.attestation.emulated.pcs_server import EmulatedPcs
from conclave.runtime.attestation.emulated.snp_issuer import SnpTestHierarchy
from conclave.runtime.attestation.emulated.tdx_issuer import TdxTestHierarchy
from conclave.runtime.attestation.emulated.tsm import EmulatedSnpSource, EmulatedTdxSource
from conclave.runtime.attestation.tdx_collateral import TdxCollateral
from conclave.runtime.cli import main

RD = bytes(range(64))


def now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def snp_hierarchy():
    return SnpTestHierarchy("test-cluster", product="genoa")


@pytest.fixture()
def tdx_hierarchy():
    return TdxTestHierarchy("test-cluster")


@pytest.fixture()
def pcs(tdx_hierarchy):
    with EmulatedPcs(tdx_hierarchy) as server:
        yield server


@pytest.fixture()
def kds(snp_hierarchy):
    with EmulatedKds(snp_hierarchy) as server:
        yield server


@pytest.fixture()
def cache(tmp_path, pcs, kds):
    return CollateralCache(tmp_path / "cache", pcs_base=pcs.base_url, root_crl_url=pcs.root_crl_url,
                           kds_base=kds.base_url, refresh_after_s=0, timeout=2)


def tdx_policy(hierarchy, **extra) -> policy_mod.Policy:
    return policy_mod.Policy.from_dict({"production": False, "require_revocation_check": True,
                                        "max_collateral_age": 3600, "allowed_tee": ["tdx"],
                                        "tdx": {"mr_td": [hierarchy.image.mr_td.hex()], "xfam": [hierarchy.image.xfam.hex()]}, **extra})


def snp_policy(hierarchy, **extra) -> policy_mod.Policy:
    return policy_mod.Policy.from_dict({"production": False, "require_revocation_check": True,
                                        "max_collateral_age": 3600, "allowed_tee": ["snp"],
                                        "snp": {"measurement": [hierarchy.image.measurement.hex()]}, **extra})


def verify_tdx(quote: bytes, cache, hierarchy, at=None):
    return tdx.verify(tdx.parse(quote), at=at or now(), collateral=cache.collateral_for(TeeType.TDX, quote),
                      trusted_roots=[hierarchy.root_certificate])


def verify_snp(evidence: bytes, cache, hierarchy, at=None):
    return snp.verify(snp.parse(evidence), at=at or now(), collateral=cache.collateral_for(TeeType.SNP, evidence),
                      trusted_roots=[hierarchy.ark_certificate])


def snp_evidence(host) -> bytes:
    source = EmulatedSnpSource(host)
    try:
        report = source.collect_report(RD)
    finally:
        source.close()
    assert report.provider == "sev_guest" and len(report.outblob) == 0x4A0 and report.auxblob
    return report.outblob + report.auxblob


@pytest.mark.parametrize("version", [4, 5])
def test_tdx_quote_via_configfs_with_fetched_collateral(tdx_hierarchy, pcs, cache, version):
    source = EmulatedTdxSource(tdx_hierarchy.host("tdx-0"), version=version)
    try:
        report = source.collect_report(RD)
    finally:
        source.close()
    assert report.provider == "tdx_guest" and report.auxblob is None
    v = verify_tdx(report.outblob, cache, tdx_hierarchy)
    assert v.tcb_status == "UpToDate" and v.revocation_checked and v.report_data == RD
    assert v.claims["version"] == version and 0 <= v.collateral_age_s < 600
    validated = policy_mod.validate(v, tdx_policy(tdx_hierarchy))
    assert validated.tcb_grace_until is None
    assert any(p.startswith("/tdx/certification/v4/tcb?fmspc=") for p in pcs.requests)


def test_snp_report_via_configfs_with_kds_collateral(snp_hierarchy, kds, cache):
    v = verify_snp(snp_evidence(snp_hierarchy.host("snp-0")), cache, snp_hierarchy)
    assert v.revocation_checked and v.claims["product"] == "genoa" and v.report_data == RD
    assert 0 <= v.collateral_age_s < 600
    policy_mod.validate(v, snp_policy(snp_hierarchy))
    assert any(p.startswith("/vcek/v1/Genoa/") and "blSPL=" in p for p in kds.requests)


def test_real_roots_refuse_emulated_hosts(tdx_hierarchy, snp_hierarchy, cache):
    quote = tdx_hierarchy.host("tdx-0").quote(RD)
    with pytest.raises(VerificationFailed) as info:
        tdx.verify(tdx.parse(quote), at=now(), collateral=cache.collateral_for(TeeType.TDX, quote))
    assert info.value.reason == "chain_untrusted"
    evidence = snp_evidence(snp_hierarchy.host("snp-0"))
    with pytest.raises(VerificationFailed) as info:
        snp.verify(snp.parse(evidence), at=now(), collateral=cache.collateral_for(TeeType.SNP, evidence))
    assert info.value.reason == "chain_untrusted"


def test_cli_attest_verify_against_real_intel_root(tdx_hierarchy, tmp_path, capsys):
    path = tmp_path / "quote.bin"
    path.write_bytes(tdx_hierarchy.host("tdx-0").quote(RD))
    code = main(["attest", "verify", str(path), "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (code, out["ok"], out["reason"]) == (2, False, "chain_untrusted")


def test_revoked_pck_is_refused(tdx_hierarchy, pcs, cache):
    quote = tdx_hierarchy.host("tdx-revoked").quote(RD)
    assert verify_tdx(quote, cache, tdx_hierarchy).revocation_checked
    tdx_hierarchy.revoke("tdx-revoked")
    with pytest.raises(VerificationFailed) as info:
        verify_tdx(quote, cache, tdx_hierarchy)
    assert info.value.reason == "cert_revoked"
    assert verify_tdx(tdx_hierarchy.host("tdx-0").quote(RD), cache, tdx_hierarchy).tcb_status == "UpToDate"


def test_revoked_vcek_is_refused(snp_hierarchy, kds, cache):
    evidence = snp_evidence(snp_hierarchy.host("snp-revoked"))
    assert verify_snp(evidence, cache, snp_hierarchy).revocation_checked
    snp_hierarchy.revoke("snp-revoked")
    with pytest.raises(VerificationFailed) as info:
        verify_snp(evidence, cache, snp_hierarchy)
    assert info.value.reason == "cert_revoked"


def test_tcb_recovery_out_of_date_refused_then_kept_under_grace(tdx_hierarchy, pcs, cache):
    quote = tdx_hierarchy.host("tdx-0").quote(RD)
    tdx_hierarchy.tcb_recovery()
    v = verify_tdx(quote, cache, tdx_hierarchy)
    assert v.tcb_status == "OutOfDate"
    with pytest.raises(PolicyViolated) as info:
        policy_mod.validate(v, tdx_policy(tdx_hierarchy))
    assert [x.reason for x in info.value.violations] == ["tcb_not_allowed"]
    grace = (now() + timedelta(days=7)).replace(microsecond=0)
    kept = policy_mod.validate(v, tdx_policy(tdx_hierarchy, tcb_grace_until=grace.isoformat()))
    assert kept.tcb_grace_until == grace
    expired_grace = (now() - timedelta(minutes=1)).replace(microsecond=0).isoformat()
    with pytest.raises(PolicyViolated) as info:
        policy_mod.validate(v, tdx_policy(tdx_hierarchy, tcb_grace_until=expired_grace))
    assert info.value.reason == "tcb_not_allowed"


def _without_crls(c: TdxCollateral) -> TdxCollateral:
    import dataclasses
    return dataclasses.replace(c, pck_crl=None, root_ca_crl=None, _sig_cache={})


def test_carried_collateral_without_crls_is_revocation_unchecked(tdx_hierarchy, cache):
    quote = tdx_hierarchy.host("tdx-0").quote(RD)
    own = cache.collateral_for(TeeType.TDX, quote)
    carried = _without_crls(own)
    roots = [tdx_hierarchy.root_certificate]
    merged = collateral_merge.merge(TeeType.TDX, None, carried, at=now(), trusted_roots=roots)
    v = tdx.verify(tdx.parse(quote), at=now(), collateral=merged, trusted_roots=roots)
    assert v.tcb_status == "UpToDate" and v.revocation_checked is False
    production = policy_mod.Policy.from_dict({"production": True, "allowed_tee": ["tdx"],
                                              "tdx": {"mr_td": [tdx_hierarchy.image.mr_td.hex()], "xfam": [tdx_hierarchy.image.xfam.hex()]}})
    with pytest.raises(PolicyViolated) as info:
        policy_mod.validate(v, production)
    assert info.value.reason == "revocation_unchecked"
    # carried collateral can never drop the verifier's own CRLs
    kept = collateral_merge.merge(TeeType.TDX, own, carried, at=now(), trusted_roots=roots)
    assert tdx.verify(tdx.parse(quote), at=now(), collateral=kept, trusted_roots=roots).revocation_checked


def test_carried_collateral_with_bad_signature_is_ignored(tdx_hierarchy, cache):
    import dataclasses
    quote = tdx_hierarchy.host("tdx-0").quote(RD)
    own = cache.collateral_for(TeeType.TDX, quote)
    forged = dataclasses.replace(own, tcb_info_signature=bytes(63) + b"\x01", _sig_cache={})
    roots = [tdx_hierarchy.root_certificate]
    assert collateral_merge.merge(TeeType.TDX, None, forged, at=now(), trusted_roots=roots) is None
    merged = collateral_merge.merge(TeeType.TDX, own, forged, at=now(), trusted_roots=roots)
    assert merged.tcb_info_signature == own.tcb_info_signature


def test_collateral_older_than_allowed_is_refused(tdx_hierarchy, snp_hierarchy, cache):
    later = now() + timedelta(hours=2)
    v = verify_tdx(tdx_hierarchy.host("tdx-0").quote(RD), cache, tdx_hierarchy, at=later)
    with pytest.raises(PolicyViolated) as info:
        policy_mod.validate(v, tdx_policy(tdx_hierarchy))
    assert info.value.reason == "collateral_expired" and v.collateral_age_s > 3600
    s = verify_snp(snp_evidence(snp_hierarchy.host("snp-0")), cache, snp_hierarchy, at=later)
    with pytest.raises(PolicyViolated) as info:
        policy_mod.validate(s, snp_policy(snp_hierarchy))
    assert info.value.reason == "collateral_expired"


def test_vendors_down_cache_serves_until_it_expires(tdx_hierarchy, snp_hierarchy, pcs, kds, cache):
    quote = tdx_hierarchy.host("tdx-0").quote(RD)
    evidence = snp_evidence(snp_hierarchy.host("snp-0"))
    verify_tdx(quote, cache, tdx_hierarchy)
    verify_snp(evidence, cache, snp_hierarchy)            # both caches filled
    pcs.set_down()
    kds.set_down()
    seen = len(pcs.requests)
    v = verify_tdx(quote, cache, tdx_hierarchy)
    assert v.tcb_status == "UpToDate" and v.revocation_checked and len(pcs.requests) > seen
    assert cache.last_error is not None and "collateral_missing" in cache.last_error
    assert verify_snp(evidence, cache, snp_hierarchy).revocation_checked
    with pytest.raises(VerificationFailed) as info:       # past the PCK CRL's / TCB info's nextUpdate
        verify_tdx(quote, cache, tdx_hierarchy, at=now() + timedelta(days=31))
    assert info.value.reason == "collateral_expired"
    with pytest.raises(VerificationFailed) as info:       # past the KDS CRL's nextUpdate
        verify_snp(evidence, cache, snp_hierarchy, at=now() + timedelta(days=8))
    assert info.value.reason == "collateral_expired"


def test_no_cache_and_vendor_down_means_no_collateral(tdx_hierarchy, pcs, tmp_path):
    pcs.set_down()
    cold = CollateralCache(tmp_path / "cold", pcs_base=pcs.base_url, root_crl_url=pcs.root_crl_url, timeout=2)
    quote = tdx_hierarchy.host("tdx-0").quote(RD)
    assert cold.collateral_for(TeeType.TDX, quote) is None
    v = tdx.verify(tdx.parse(quote), at=now(), trusted_roots=[tdx_hierarchy.root_certificate])
    with pytest.raises(PolicyViolated) as info:
        policy_mod.validate(v, tdx_policy(tdx_hierarchy))
    assert {x.reason for x in info.value.violations} >= {"tcb_not_allowed", "revocation_unchecked"}


def test_production_verifier_refuses_every_emulated_host(tdx_hierarchy, snp_hierarchy, cache):
    """A production deployment never passes test roots: every emulated host ends chain_untrusted."""
    from conclave.runtime import attestation
    for tee, data in ((TeeType.TDX, tdx_hierarchy.host("tdx-0").quote(RD)),
                      (TeeType.TDX, tdx_hierarchy.host("tdx-1").quote(RD, version=5)),
                      (TeeType.SNP, snp_evidence(snp_hierarchy.host("snp-0")))):
        with pytest.raises(VerificationFailed) as info:
            attestation.verify_evidence(data, tee=tee, at=now(), collateral=cache.collateral_for(tee, data))
        assert info.value.reason == "chain_untrusted"
