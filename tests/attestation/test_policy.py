"""Policy: schema, refusal of unsafe/empty policies, and validation collecting every violation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conclave.runtime.attestation import core, policy, sim
from conclave.runtime.attestation.core import Reason, TeeType
from conclave.runtime.attestation.policy import Policy, validate

from attest_helpers import MEASUREMENT, NOW

MR_TD = "aa" * 48
RTMR0 = "bb" * 48


def _verified(tee: TeeType, claims: dict, *, simulated=False, tcb_status=None) -> core.VerifiedEvidence:
    """Evidence as verification would hand it over (policy is pure logic over claims)."""
    return core.VerifiedEvidence(tee=tee, report_data=bytes(64), claims=claims, verified_at=NOW,
                                 simulated=simulated, steps=(), tcb_status=tcb_status,
                                 collateral_age_s=3600.0,  # CRLs checked, collateral an hour old
                                 _issuer=core._ISSUER)


def _tdx_claims(**over) -> dict:
    c = {"version": 4, "report_data": bytes(64), "debug": False, "tcb_status": "UpToDate",
         "mr_td": bytes.fromhex(MR_TD), "rtmr0": bytes.fromhex(RTMR0), "rtmr1": bytes(48),
         "rtmr2": bytes(48), "rtmr3": bytes(48), "mr_config_id": bytes(48), "mr_owner": bytes(48),
         "mr_owner_config": bytes(48), "mr_seam": bytes(48),
         "tee_tcb_svn": bytes.fromhex("05010200000000000000000000000000"),
         "td_attributes": bytes.fromhex(TD_ATTRIBUTES), "xfam": bytes.fromhex(XFAM)}
    c.update(over)
    return c


def _snp_claims(**over) -> dict:
    tcb = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    c = {"version": 2, "report_data": bytes(64), "debug": False, "tcb_status": None,
         "measurement": b"\x01" * 48, "host_data": bytes(32), "chip_id": b"\x02" * 64, "vmpl": 0,
         "guest_svn": 4, "family_id": bytes(16), "image_id": bytes(16), "id_key_digest": bytes(48),
         "author_key_digest": bytes(48), "signing_key": "vcek", "reported_tcb": dict(tcb),
         "committed_tcb": dict(tcb), "current_tcb": dict(tcb), "policy_migrate_ma_allowed": False}
    c.update(over)
    return c


TD_ATTRIBUTES, XFAM = "0000001000000000", "e702060000000000"   # SEPT_VE_DISABLE; x87/SSE/AVX/AVX-512/PKRU/AMX
TDX_POLICY = {"production": True, "allowed_tee": ["tdx"], "tdx": {"mr_td": [MR_TD], "xfam": [XFAM]}}
SIM_POLICY = {"production": False, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
              "sim": {"measurement": [MEASUREMENT.hex()]}}


def _reasons(exc: core.PolicyViolated) -> list[str]:
    return sorted(str(v.reason) for v in exc.violations)


# --- schema and loading ----------------------------------------------------------------------

def test_exported_schema_file_matches_code():
    on_disk = json.loads(policy.SCHEMA_PATH.read_text())
    assert on_disk == json.loads(json.dumps(policy.POLICY_JSON_SCHEMA))


def test_load_yaml_and_json(tmp_path: Path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(TDX_POLICY))
    (tmp_path / "p.json").write_text(json.dumps(TDX_POLICY))
    a, b = Policy.load(tmp_path / "p.yaml"), Policy.load(tmp_path / "p.json")
    assert a.digest == b.digest and len(a.digest) == 32
    assert a.production and a.allowed_tee == {TeeType.TDX}


def test_hex_case_is_normalized_and_digest_stable():
    upper = Policy.from_dict({**TDX_POLICY, "tdx": {"mr_td": [MR_TD.upper()], "xfam": [XFAM]}})
    assert upper.digest == Policy.from_dict(TDX_POLICY).digest


@pytest.mark.parametrize("raw,reason", [
    ({}, Reason.POLICY_EMPTY),
    ({"production": True, "allowed_tee": ["tdx"]}, Reason.POLICY_EMPTY),
    ({"production": True, "allowed_tee": ["tdx"], "tdx": {}}, Reason.POLICY_EMPTY),
    ({"production": True, "allowed_tee": ["tdx", "snp"], "tdx": {"mr_td": [MR_TD]}}, Reason.POLICY_EMPTY),
    ({"production": True, "allowed_tee": ["tdx"], "tdx": {"min_tee_tcb_svn": "00" * 16}},
     Reason.POLICY_EMPTY),
    ({"allowed_tee": ["tdx"], "tdx": {"mr_td": [MR_TD]}}, Reason.POLICY_INVALID),  # production required
    ({**TDX_POLICY, "unsafe_allow_simulated": True}, Reason.POLICY_INVALID),
    ({**SIM_POLICY, "production": True}, Reason.POLICY_INVALID),
    ({**SIM_POLICY, "production": True, "unsafe_allow_simulated": False}, Reason.POLICY_INVALID),
    ({**TDX_POLICY, "allowed_tcb_statuses": ["UpToDate", "Revoked"]}, Reason.POLICY_INVALID),
    ({**TDX_POLICY, "allow_debug": True}, Reason.POLICY_INVALID),
    ({**TDX_POLICY, "tdx": {"mr_td": []}}, Reason.POLICY_INVALID),
    ({**TDX_POLICY, "tdx": {"mr_td": ["aa" * 47]}}, Reason.POLICY_INVALID),
    ({**TDX_POLICY, "allowed_tee": ["sgx"]}, Reason.POLICY_INVALID),
    ({**TDX_POLICY, "production": "yes"}, Reason.POLICY_INVALID),
    ({**TDX_POLICY, "allowed_tcb_statuses": ["Fine"]}, Reason.POLICY_INVALID),
    ([1, 2], Reason.POLICY_INVALID),
])
def test_bad_policies_refused(raw, reason):
    with pytest.raises(core.PolicyError) as info:
        Policy.from_dict(raw)
    assert info.value.reason == reason


def test_unreadable_and_empty_files(tmp_path: Path):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "bad.yaml").write_text("production: [unclosed")
    for name, reason in (("empty.yaml", Reason.POLICY_EMPTY), ("bad.yaml", Reason.POLICY_INVALID),
                         ("missing.yaml", Reason.POLICY_INVALID)):
        with pytest.raises(core.PolicyError) as info:
            Policy.load(tmp_path / name)
        assert info.value.reason == reason


# --- validation -------------------------------------------------------------------------------

def test_accepts_matching_tdx():
    p = Policy.from_dict(TDX_POLICY)
    validated = validate(_verified(TeeType.TDX, _tdx_claims(), tcb_status="UpToDate"), p)
    assert validated.policy_digest == p.digest and validated.tee == TeeType.TDX


def test_validate_accepts_only_verified_evidence(sim_attester):
    with pytest.raises(TypeError):
        validate(sim.parse(sim_attester.evidence(bytes(64), now=NOW)), Policy.from_dict(SIM_POLICY))
    with pytest.raises(TypeError):
        validate(_tdx_claims(), Policy.from_dict(TDX_POLICY))


def test_validated_evidence_cannot_be_forged():
    with pytest.raises(TypeError):
        policy.ValidatedEvidence(verified=_verified(TeeType.TDX, _tdx_claims()), policy_digest=b"")


def test_collects_every_violation():
    p = Policy.from_dict({**TDX_POLICY, "tdx": {"mr_td": [MR_TD], "xfam": [XFAM], "rtmr0": ["cc" * 48],
                                                 "min_tee_tcb_svn": "06000000000000000000000000000000"}})
    ev = _verified(TeeType.TDX, _tdx_claims(mr_td=bytes(48), debug=True), tcb_status="OutOfDate")
    with pytest.raises(core.PolicyViolated) as info:
        validate(ev, p)
    assert _reasons(info.value) == sorted(["measurement_mismatch", "measurement_mismatch",
                                           "debug_enabled", "tcb_not_allowed", "svn_too_low"])
    fields = {v.field for v in info.value.violations}
    assert {"tdx.mr_td", "tdx.rtmr0", "debug", "allowed_tcb_statuses", "tdx.min_tee_tcb_svn"} == fields
    mr = next(v for v in info.value.violations if v.field == "tdx.mr_td")
    assert mr.expected == [MR_TD] and mr.actual == "00" * 48
    assert json.dumps([v.to_json() for v in info.value.violations])  # JSON-ready


def test_tee_not_allowed():
    with pytest.raises(core.PolicyViolated) as info:
        validate(_verified(TeeType.SNP, _snp_claims()), Policy.from_dict(TDX_POLICY))
    assert _reasons(info.value) == ["tee_not_allowed"]


@pytest.mark.parametrize("status,reason", [("Revoked", "tcb_revoked"), ("OutOfDate", "tcb_not_allowed"),
                                           (None, "tcb_not_allowed")])
def test_tcb_status(status, reason):
    with pytest.raises(core.PolicyViolated) as info:
        validate(_verified(TeeType.TDX, _tdx_claims(tcb_status=status), tcb_status=status),
                 Policy.from_dict({**TDX_POLICY, "allowed_tcb_statuses": ["UpToDate", "OutOfDate"]}
                                  if status == "Revoked" else TDX_POLICY))
    assert _reasons(info.value) == [reason]


def test_listed_tcb_status_accepted():
    p = Policy.from_dict({**TDX_POLICY, "allowed_tcb_statuses": ["UpToDate", "SWHardeningNeeded"]})
    validate(_verified(TeeType.TDX, _tdx_claims(), tcb_status="SWHardeningNeeded"), p)


@pytest.mark.parametrize("debug", [True, None, 1])
def test_debug_never_accepted_fail_closed(debug):
    claims = _tdx_claims(debug=debug)
    if debug is None:
        del claims["debug"]
    with pytest.raises(core.PolicyViolated) as info:
        validate(_verified(TeeType.TDX, claims, tcb_status="UpToDate"), Policy.from_dict(TDX_POLICY))
    assert _reasons(info.value) == ["debug_enabled"]


def test_tdx_measurement_sets():
    p = Policy.from_dict({**TDX_POLICY, "tdx": {"xfam": [XFAM], "measurement_sets": [
        {"mr_td": MR_TD, "rtmr0": "cc" * 48}, {"mr_td": MR_TD, "rtmr0": RTMR0}]}})
    validate(_verified(TeeType.TDX, _tdx_claims(), tcb_status="UpToDate"), p)
    with pytest.raises(core.PolicyViolated) as info:
        validate(_verified(TeeType.TDX, _tdx_claims(rtmr0=bytes(48)), tcb_status="UpToDate"), p)
    assert [v.field for v in info.value.violations] == ["tdx.measurement_sets"]


def test_tdx_svn_componentwise():
    p = Policy.from_dict({**TDX_POLICY, "tdx": {"mr_td": [MR_TD], "xfam": [XFAM],
                                                 "min_tee_tcb_svn": "04010300000000000000000000000000"}})
    with pytest.raises(core.PolicyViolated) as info:  # byte 2 is 2 < 3 although byte 0 is higher
        validate(_verified(TeeType.TDX, _tdx_claims(), tcb_status="UpToDate"), p)
    assert _reasons(info.value) == ["svn_too_low"]


SNP_POLICY = {"production": True, "allowed_tee": ["snp"],
              "snp": {"measurement": ["01" * 48], "min_tcb": {"snp": 8}}}


def test_snp_accepts_and_collects():
    validate(_verified(TeeType.SNP, _snp_claims()), Policy.from_dict(SNP_POLICY))
    strict = Policy.from_dict({**SNP_POLICY, "snp": {
        "measurement": ["02" * 48], "host_data": ["11" * 32], "min_tcb": {"snp": 9, "microcode": 100},
        "min_guest_svn": 5, "require_committed_tcb_equals_current": True, "allowed_vmpl": [0],
        "allowed_signing_keys": ["vlek"]}})
    claims = _snp_claims(vmpl=1, committed_tcb={"bootloader": 2, "tee": 0, "snp": 8, "microcode": 115})
    with pytest.raises(core.PolicyViolated) as info:
        validate(_verified(TeeType.SNP, claims), strict)
    assert {v.field for v in info.value.violations} == {
        "snp.measurement", "snp.host_data", "snp.min_tcb.snp", "snp.min_guest_svn",
        "snp.require_committed_tcb_equals_current", "snp.allowed_vmpl", "snp.allowed_signing_keys"}
    assert "vmpl_not_allowed" in _reasons(info.value) and "tcb_mismatch" in _reasons(info.value)


def test_snp_committed_tcb_check_is_optional():
    claims = _snp_claims(committed_tcb={"bootloader": 2, "tee": 0, "snp": 8, "microcode": 115})
    validate(_verified(TeeType.SNP, claims), Policy.from_dict(SNP_POLICY))


def test_nvgpu_measurements():
    p = Policy.from_dict({"production": True, "allowed_tee": ["nvgpu"],
                          "nvgpu": {"measurements": {"2": ["ab" * 48]}, "driver_versions": ["550.90.07"]}})
    claims = {"debug": False, "report_data": bytes(32), "measurements": {2: b"\xab" * 48, 3: b"\0" * 48},
              "driver_version": "550.90.07"}
    validate(_verified(TeeType.NVGPU, claims), p)
    with pytest.raises(core.PolicyViolated) as info:
        validate(_verified(TeeType.NVGPU, {**claims, "measurements": {2: bytes(48)},
                                           "driver_version": "535.0"}), p)
    assert {v.field for v in info.value.violations} == {"nvgpu.measurements.2", "nvgpu.driver_versions"}


# --- simulated evidence ------------------------------------------------------------------------

def _sim_verified(root, attester):
    return sim.verify(sim.parse(attester.evidence(bytes(64), now=NOW)), at=NOW,
                      trusted_roots=[root.certificate])


def test_sim_accepted_only_with_unsafe_flag(sim_root, sim_attester):
    verified = _sim_verified(sim_root, sim_attester)
    validate(verified, Policy.from_dict(SIM_POLICY))
    with pytest.raises(core.PolicyViolated) as info:
        validate(verified, Policy.from_dict({**SIM_POLICY, "unsafe_allow_simulated": False}))
    assert _reasons(info.value) == ["simulated_not_allowed"]
    with pytest.raises(core.PolicyViolated) as info:  # a production TDX policy refuses it twice over
        validate(verified, Policy.from_dict(TDX_POLICY))
    assert _reasons(info.value) == ["simulated_not_allowed", "tee_not_allowed"]


def test_sim_measurement_svn_and_debug(sim_root):
    att = sim_root.issue_attester("dbg", measurement=b"\xee" * 48, debug=True, svn=1, now=NOW)
    p = Policy.from_dict({**SIM_POLICY, "sim": {"measurement": [MEASUREMENT.hex()], "min_svn": 2}})
    with pytest.raises(core.PolicyViolated) as info:
        validate(_sim_verified(sim_root, att), p)
    assert _reasons(info.value) == ["debug_enabled", "measurement_mismatch", "svn_too_low"]


def test_nvgpu_has_no_debug_flag_but_true_is_refused():
    p = Policy.from_dict({"production": True, "allowed_tee": ["nvgpu"],
                          "nvgpu": {"measurements": {"2": ["ab" * 48]}, "driver_versions": ["550.90.07"]}})
    claims = {"debug": None, "report_data": bytes(32), "driver_version": "550.90.07",
              "measurements": {2: b"\xab" * 48}}
    validate(_verified(TeeType.NVGPU, claims), p)
    with pytest.raises(core.PolicyViolated) as info:
        validate(_verified(TeeType.NVGPU, {**claims, "debug": True}), p)
    assert _reasons(info.value) == ["debug_enabled"]
