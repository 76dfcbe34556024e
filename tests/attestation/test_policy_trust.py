"""A policy must name the guest's code, and production defaults are safe (issue 16 holes 3, 4).

Hole 3: a policy whose only constraints do not identify the code (SNP host_data/chip_id, TDX
mr_seam/mr_signer_seam/xfam/td_attributes/mr_owner, GPU driver/VBIOS versions) is `policy_empty`,
also from `conclave attest verify --policy` (exit 1).
Hole 4: SNP VMPL 0 by default, MIGRATE_MA refused, min_tcb required in production; TDX MRSERVICETD
zero unless listed, the QE vendor ID must be Intel's; advisories can be denied. Vectors: the test
hierarchies in tests/data/{snp,tdx} (make_policy_vectors.py) where no public vector has the defect.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from conclave.runtime.attestation import core, snp, tdx
from conclave.runtime.attestation.core import PolicyError, PolicyViolated, Reason, VerificationFailed
from conclave.runtime.attestation.policy import Policy, validate
from conclave.runtime.attestation.snp_collateral import parse_collateral_bytes
from conclave.runtime.cli import main

DATA = Path(__file__).resolve().parent.parent / "data"
SNP_DIR, TDX_DIR = DATA / "snp" / "policy", DATA / "tdx"
AT = datetime(2026, 1, 15, tzinfo=timezone.utc)
H48, H32, H64, H8 = "ab" * 48, "cd" * 32, "ef" * 64, "00" * 8
XFAM = "e702060000000000"
SNP_MIN = {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}


def _snp_policy(**section) -> dict:
    return {"production": True, "allowed_tee": ["snp"], "snp": {"min_tcb": SNP_MIN, **section}}


def _tdx_policy(**section) -> dict:
    return {"production": True, "allowed_tee": ["tdx"], "tdx": {"xfam": [XFAM], **section}}


# --- hole 3: code identity ----------------------------------------------------------------------

NON_IDENTITY = [
    ("snp-host-data", _snp_policy(host_data=[H32])),
    ("snp-chip-id", _snp_policy(chip_id=[H64])),
    ("snp-family-image", _snp_policy(family_id=["11" * 16], image_id=["22" * 16])),
    ("snp-sets-host-data", _snp_policy(measurement_sets=[{"host_data": H32}])),
    ("snp-sets-one-without-identity", _snp_policy(measurement_sets=[{"measurement": H48},
                                                                    {"host_data": H32}])),
    ("tdx-mr-seam", _tdx_policy(mr_seam=[H48])),
    ("tdx-mr-signer-seam", _tdx_policy(mr_signer_seam=[H48])),
    ("tdx-xfam", _tdx_policy(xfam=[H8])),
    ("tdx-td-attributes", _tdx_policy(td_attributes=[H8])),
    ("tdx-mr-owner", _tdx_policy(mr_owner=[H48])),
    ("tdx-all-non-identity", _tdx_policy(mr_seam=[H48], mr_signer_seam=[H48], xfam=[H8],
                                         td_attributes=[H8], mr_owner=[H48], mr_config_id=[H48])),
    ("tdx-sets-mr-seam", _tdx_policy(measurement_sets=[{"mr_seam": H48, "rtmr0": H48}])),
    ("nvgpu-driver", {"production": True, "allowed_tee": ["nvgpu"],
                      "nvgpu": {"driver_versions": ["550.90.07"]}}),
    ("nvgpu-driver-vbios", {"production": True, "allowed_tee": ["nvgpu"],
                            "nvgpu": {"driver_versions": ["550.90.07"], "vbios_versions": ["96.00.5e"]}}),
    ("tdx-ok-snp-host-only", {"production": True, "allowed_tee": ["tdx", "snp"],
                              "tdx": {"mr_td": [H48], "xfam": [XFAM]}, "snp": {"host_data": [H32], "min_tcb": SNP_MIN}}),
]


@pytest.mark.parametrize("raw", [r for _, r in NON_IDENTITY], ids=[i for i, _ in NON_IDENTITY])
def test_policy_without_code_identity_is_empty(raw):
    with pytest.raises(PolicyError) as exc:
        Policy.from_dict(raw)
    assert exc.value.reason == "policy_empty"


IDENTITY = [
    ("snp-measurement", _snp_policy(measurement=[H48], host_data=[H32])),
    ("snp-id-key", _snp_policy(id_key_digest=[H48])),
    ("snp-author-key", _snp_policy(author_key_digest=[H48])),
    ("snp-sets", _snp_policy(measurement_sets=[{"measurement": H48, "host_data": H32},
                                               {"id_key_digest": H48}])),
    ("tdx-mr-td", _tdx_policy(mr_td=[H48], rtmr1=[H48])),
    ("tdx-sets", _tdx_policy(measurement_sets=[{"mr_td": H48, "rtmr0": H48}])),
    ("nvgpu-measurements", {"production": True, "allowed_tee": ["nvgpu"],
                            "nvgpu": {"measurements": {"2": [H48]}, "driver_versions": ["550.90.07"]}}),
]


@pytest.mark.parametrize("raw", [r for _, r in IDENTITY], ids=[i for i, _ in IDENTITY])
def test_policy_naming_the_code_loads(raw):
    assert Policy.from_dict(raw).production


@pytest.mark.parametrize("raw", [r for _, r in NON_IDENTITY[:2] + NON_IDENTITY[5:6] + NON_IDENTITY[12:13]],
                         ids=["snp-host-data", "snp-chip-id", "tdx-mr-seam", "nvgpu-driver"])
def test_attest_verify_refuses_a_policy_without_identity(capsys, tmp_path, raw):
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(raw))
    code = main(["attest", "verify", str(TDX_DIR / "quotes" / "v4_valid.bin"), "--policy", str(policy),
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (code, out["ok"], out["reason"]) == (1, False, "policy_empty")


# --- hole 4: SNP defaults -----------------------------------------------------------------------

def _snp_verified(name: str):
    certs = list(x509.load_pem_x509_certificates((SNP_DIR / "cert_chain.pem").read_bytes()))
    certs.append(x509.load_der_x509_certificate((SNP_DIR / "vcek.der").read_bytes()))
    root = x509.load_pem_x509_certificate((SNP_DIR / "ark.pem").read_bytes())
    crl = parse_collateral_bytes([("crl.der", (SNP_DIR / "crl.der").read_bytes())])
    return snp.verify(snp.parse((SNP_DIR / name).read_bytes()), at=AT, certs=certs, collateral=crl,
                      trusted_roots=[root])


MEASUREMENT = bytes(range(48)).hex()   # what the generated reports carry


def _reasons(exc: PolicyViolated) -> list[str]:
    return sorted(str(v.reason) for v in exc.violations)


def test_snp_control_report_passes_the_production_defaults():
    verified = _snp_verified("report_ok.bin")
    assert verified.claims["vmpl"] == 0 and verified.claims["policy_migrate_ma_allowed"] is False
    assert verified.revocation_checked
    validate(verified, Policy.from_dict(_snp_policy(measurement=[MEASUREMENT])))


def test_snp_migration_agent_is_refused_by_default():
    verified = _snp_verified("report_migrate_ma.bin")
    assert verified.claims["policy_migrate_ma_allowed"] is True
    with pytest.raises(PolicyViolated) as exc:
        validate(verified, Policy.from_dict(_snp_policy(measurement=[MEASUREMENT])))
    assert _reasons(exc.value) == ["migration_allowed"]
    assert exc.value.violations[0].field == "snp.unsafe_allow_migrate_ma"


def test_snp_migration_agent_only_with_the_unsafe_field_outside_production():
    verified = _snp_verified("report_migrate_ma.bin")
    lenient = {"production": False, "allowed_tee": ["snp"],
               "snp": {"measurement": [MEASUREMENT], "unsafe_allow_migrate_ma": True}}
    validate(verified, Policy.from_dict(lenient))
    with pytest.raises(PolicyError) as exc:
        Policy.from_dict({**lenient, "production": True, "snp": {**lenient["snp"], "min_tcb": SNP_MIN}})
    assert exc.value.reason == "policy_invalid"


def test_snp_vmpl_zero_is_the_default():
    verified = _snp_verified("report_vmpl2.bin")
    with pytest.raises(PolicyViolated) as exc:
        validate(verified, Policy.from_dict(_snp_policy(measurement=[MEASUREMENT])))
    assert _reasons(exc.value) == ["vmpl_not_allowed"]
    validate(verified, Policy.from_dict(_snp_policy(measurement=[MEASUREMENT], allowed_vmpl=[0, 2])))


def test_snp_production_requires_a_minimum_tcb():
    with pytest.raises(PolicyError) as exc:
        Policy.from_dict({"production": True, "allowed_tee": ["snp"], "snp": {"measurement": [MEASUREMENT]}})
    assert exc.value.reason == "policy_invalid" and "min_tcb" in exc.value.message
    Policy.from_dict({"production": False, "allowed_tee": ["snp"], "snp": {"measurement": [MEASUREMENT]}})


def test_snp_minimum_tcb_is_enforced():
    verified = _snp_verified("report_ok.bin")
    with pytest.raises(PolicyViolated) as exc:
        validate(verified, Policy.from_dict(_snp_policy(measurement=[MEASUREMENT],
                                                        min_tcb={**SNP_MIN, "microcode": 220})))
    assert _reasons(exc.value) == ["svn_too_low"]


# --- hole 4: TDX defaults -----------------------------------------------------------------------

def _tdx_verified(quote: str, collateral: str = "base.json"):
    root = x509.load_pem_x509_certificate((TDX_DIR / "test_root_ca.pem").read_bytes())
    return tdx.verify(tdx.parse((TDX_DIR / "quotes" / quote).read_bytes()), at=AT,
                      collateral=tdx.load_collateral(TDX_DIR / "collateral" / collateral),
                      trusted_roots=[root])


def test_tdx_service_td_is_refused_unless_listed():
    verified = _tdx_verified("policy_mr_servicetd_bound.bin")
    bound = verified.claims["mr_servicetd"].hex()
    assert bound != "00" * 48 and verified.tcb_status == "UpToDate"
    mr_td = verified.claims["mr_td"].hex()
    with pytest.raises(PolicyViolated) as exc:
        validate(verified, Policy.from_dict(_tdx_policy(mr_td=[mr_td])))
    assert _reasons(exc.value) == ["servicetd_not_allowed"]
    validate(verified, Policy.from_dict(_tdx_policy(mr_td=[mr_td], mr_servicetd=[bound])))


def test_tdx_without_service_td_passes():
    for quote in ("v5_valid.bin", "v4_valid.bin"):   # v5: MRSERVICETD zero; v4: no such field
        verified = _tdx_verified(quote)
        validate(verified, Policy.from_dict(_tdx_policy(mr_td=[verified.claims["mr_td"].hex()])))
    with pytest.raises(PolicyViolated) as exc:        # a listed service TD is then required
        validate(verified, Policy.from_dict(_tdx_policy(mr_td=[verified.claims["mr_td"].hex()],
                                                        mr_servicetd=[H48])))
    assert _reasons(exc.value) == ["servicetd_not_allowed"]


def test_tdx_quote_from_another_qe_vendor_is_refused():
    with pytest.raises(VerificationFailed) as exc:
        _tdx_verified("policy_qe_vendor_other.bin")
    assert exc.value.reason == "qe_vendor_unknown"
    assert exc.value.steps[-1] == core.Step("tdx.01.parse_header", False)


def test_tdx_qe_vendor_refusal_from_the_cli(capsys):
    code = main(["attest", "verify", str(TDX_DIR / "quotes" / "policy_qe_vendor_other.bin"),
                 "--certs", str(TDX_DIR / "test_root_ca.pem"), "--at", "2026-01-15T00:00:00Z", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (code, out["reason"]) == (2, "qe_vendor_unknown")


def test_denied_advisory_is_refused():
    verified = _tdx_verified("tcb_sw_hardening.bin")
    assert verified.advisory_ids == ("INTEL-SA-TEST-0001",)
    base = _tdx_policy(mr_td=[verified.claims["mr_td"].hex()])
    base["allowed_tcb_statuses"] = ["UpToDate", "SWHardeningNeeded"]
    validate(verified, Policy.from_dict(base))
    with pytest.raises(PolicyViolated) as exc:
        validate(verified, Policy.from_dict({**base, "denied_advisories": ["INTEL-SA-TEST-0001", "INTEL-SA-X"]}))
    assert _reasons(exc.value) == ["advisory_denied"]
    assert exc.value.violations[0].actual == "INTEL-SA-TEST-0001"


def test_every_weakening_field_is_explicit_in_the_schema():
    schema = json.loads((Path(core.__file__).with_name("policy.schema.json")).read_text())
    assert schema["properties"]["snp"]["properties"]["unsafe_allow_migrate_ma"]["default"] is False
    assert "mr_servicetd" in schema["properties"]["tdx"]["properties"]
    assert "denied_advisories" in schema["properties"]
    for field in ("unsafe_allow_migratable", "unsafe_allow_sept_ve"):
        assert schema["properties"]["tdx"]["properties"][field]["default"] is False
    for reason in ("qe_vendor_unknown", "migration_allowed", "servicetd_not_allowed", "advisory_denied",
                   "sept_ve_enabled"):
        assert Reason(reason)
