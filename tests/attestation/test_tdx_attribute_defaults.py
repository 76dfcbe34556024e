"""TDX production defaults for TD_ATTRIBUTES and XFAM (issue 16 hole 4), through the real TDX
verifier on quotes of the emulated TDX hierarchy (signed chain, collateral from its PCS) whose
TD image differs from a real TD's only in the attribute under test.

TDATTRIBUTES (Intel TDX Module ABI): bits 0-7 are the TUD group ("TD under debug": DEBUG, and
the profiling bits 4-6), bit 28 SEPT_VE_DISABLE, bit 29 MIGRATABLE. Every real quote of
../shared/vectors/tdx from a Linux TD sets SEPT_VE_DISABLE (0x10000000).
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest

from conclave.runtime.attestation import tdx
from conclave.runtime.attestation.collateral_cache import CollateralCache
from conclave.runtime.attestation.core import PolicyError, PolicyViolated, Reason, TeeType
from conclave.runtime.attestation.emulated.pcs_server import EmulatedPcs
from conclave.runtime.attestation.emulated.tdx_issuer import TD_ATTRIBUTES, TdImage, TdxTestHierarchy
from conclave.runtime.attestation.policy import Policy, validate

SEPT_VE_DISABLE, MIGRATABLE = 1 << 28, 1 << 29
BASE = int.from_bytes(TD_ATTRIBUTES, "little")
RD = bytes(range(64))


def _attrs(value: int) -> bytes:
    return value.to_bytes(8, "little")


@pytest.fixture(scope="module")
def hierarchy():
    return TdxTestHierarchy("attr-cluster")


@pytest.fixture(scope="module")
def cache(hierarchy, tmp_path_factory):
    with EmulatedPcs(hierarchy) as pcs:
        yield CollateralCache(tmp_path_factory.mktemp("cache"), pcs_base=pcs.base_url,
                              root_crl_url=pcs.root_crl_url, refresh_after_s=0, timeout=2)


def _verified(hierarchy, cache, td_attributes: bytes):
    """A quote of a host whose TD image carries `td_attributes`, verified like any other."""
    image = replace(hierarchy.image, td_attributes=td_attributes)
    host = hierarchy.host("tdx-attr")
    host.image = image
    quote = host.quote(RD)
    return tdx.verify(tdx.parse(quote), at=datetime.now(timezone.utc),
                      collateral=cache.collateral_for(TeeType.TDX, quote),
                      trusted_roots=[hierarchy.root_certificate])


def _policy(hierarchy, *, production=False, **tdx_extra) -> Policy:
    data = {"production": production, "allowed_tee": ["tdx"], "require_revocation_check": True,
            "tdx": {"mr_td": [hierarchy.image.mr_td.hex()], "xfam": [hierarchy.image.xfam.hex()], **tdx_extra}}
    if not production:
        data["unsafe_test_roots"] = {"tdx": [hierarchy.root_pem.decode()]}
    return Policy.from_dict(data)


def _reasons(hierarchy, cache, attrs: int, **tdx_extra) -> list[str]:
    verified = _verified(hierarchy, cache, _attrs(attrs))
    try:
        validate(verified, _policy(hierarchy, **tdx_extra))
    except PolicyViolated as exc:
        return sorted(str(v.reason) for v in exc.violations)
    return []


def test_the_real_td_attributes_pass(hierarchy, cache):
    assert BASE == SEPT_VE_DISABLE
    assert _reasons(hierarchy, cache, BASE) == []


@pytest.mark.parametrize("bit", [4, 5, 6, 7])
def test_any_td_under_debug_bit_is_refused(hierarchy, cache, bit):
    assert _reasons(hierarchy, cache, BASE | 1 << bit) == ["debug_enabled"]


def test_debug_bit_is_refused_once(hierarchy, cache):
    assert _reasons(hierarchy, cache, BASE | 1) == ["debug_enabled"]


def test_migratable_td_is_refused_unless_the_unsafe_field(hierarchy, cache):
    assert _reasons(hierarchy, cache, BASE | MIGRATABLE) == ["migration_allowed"]
    assert _reasons(hierarchy, cache, BASE | MIGRATABLE, unsafe_allow_migratable=True) == []


def test_td_without_sept_ve_disable_is_refused_unless_the_unsafe_field(hierarchy, cache):
    assert _reasons(hierarchy, cache, 0) == ["sept_ve_enabled"]
    assert _reasons(hierarchy, cache, 0, unsafe_allow_sept_ve=True) == []
    assert _reasons(hierarchy, cache, MIGRATABLE) == ["migration_allowed", "sept_ve_enabled"]


@pytest.mark.parametrize("field", ["unsafe_allow_migratable", "unsafe_allow_sept_ve"])
def test_production_refuses_each_weakening(hierarchy, field):
    with pytest.raises(PolicyError) as exc:
        _policy(hierarchy, production=True, **{field: True})
    assert exc.value.reason == Reason.POLICY_INVALID and field in str(exc.value)


def test_production_must_constrain_xfam(hierarchy):
    mr_td = hierarchy.image.mr_td.hex()
    with pytest.raises(PolicyError) as exc:
        Policy.from_dict({"production": True, "allowed_tee": ["tdx"], "tdx": {"mr_td": [mr_td]}})
    assert exc.value.reason == Reason.POLICY_INVALID and "xfam" in str(exc.value)
    with pytest.raises(PolicyError):   # one measurement set without xfam is enough to refuse
        Policy.from_dict({"production": True, "allowed_tee": ["tdx"], "tdx": {"measurement_sets": [
            {"mr_td": mr_td, "xfam": "e702060000000000"}, {"mr_td": mr_td}]}})
    Policy.from_dict({"production": True, "allowed_tee": ["tdx"], "tdx": {"measurement_sets": [
        {"mr_td": mr_td, "xfam": "e702060000000000"}]}})


def test_an_unlisted_xfam_is_a_mismatch(hierarchy, cache):
    verified = _verified(hierarchy, cache, TD_ATTRIBUTES)
    with pytest.raises(PolicyViolated) as exc:
        validate(verified, _policy(hierarchy, xfam=["e71a060000000000"]))
    assert [(str(v.reason), v.field) for v in exc.value.violations] == [("measurement_mismatch", "tdx.xfam")]


def test_tdimage_default_is_what_the_tests_assume():
    assert TdImage().td_attributes == TD_ATTRIBUTES
