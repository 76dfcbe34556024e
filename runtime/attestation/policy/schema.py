"""The one policy schema (POLICY_JSON_SCHEMA, exported verbatim to runtime/attestation/
policy.schema.json) and the per-TEE constants the loader and the validator share.

    python -m conclave.runtime.attestation.policy.schema    # rewrites policy.schema.json
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from conclave.runtime.attestation.core import TeeType

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "policy.schema.json"   # runtime/attestation/

TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
                "ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded",
                "Revoked")
DEFAULT_TCB_STATUSES = ("UpToDate",)
# TEEs whose verification yields a TCB status from vendor collateral: an unknown status fails.
TEES_WITH_TCB_STATUS = frozenset({TeeType.TDX})
# TEEs whose evidence has no debug flag (claim "debug" is None). Their policies must constrain
# measurements (policy_empty otherwise), which is where a GPU's CC/devtools mode shows.
TEES_WITHOUT_DEBUG_FLAG = frozenset({TeeType.NVGPU})

# field -> byte length of the claim, per TEE: list-of-allowed-values checks.
TDX_VALUE_FIELDS = {"mr_td": 48, "rtmr0": 48, "rtmr1": 48, "rtmr2": 48, "rtmr3": 48,
                    "mr_config_id": 48, "mr_owner": 48, "mr_owner_config": 48, "mr_seam": 48,
                    "mr_signer_seam": 48, "td_attributes": 8, "xfam": 8}
SNP_VALUE_FIELDS = {"measurement": 48, "host_data": 32, "id_key_digest": 48,
                    "author_key_digest": 48, "family_id": 16, "image_id": 16, "chip_id": 64}
SIM_VALUE_FIELDS = {"measurement": 48}
NVGPU_VALUE_FIELDS: dict[str, int] = {}
# Fields that name the code a TEE runs; a policy must constrain one of them for every allowed TEE.
# A GPU policy field that pins the firmware/driver code (for example reference-measurement RIM
# digests) identifies the code just as `measurements` does and joins NVGPU_IDENTITY_FIELDS.
TDX_IDENTITY_FIELDS = ("mr_td",)
SNP_IDENTITY_FIELDS = ("measurement", "id_key_digest", "author_key_digest")
SIM_IDENTITY_FIELDS = ("measurement",)
NVGPU_IDENTITY_FIELDS = ("measurements", "require_rim")
SNP_TCB_PARTS = ("bootloader", "tee", "snp", "microcode", "fmc")
VALUE_FIELDS = {TeeType.TDX: TDX_VALUE_FIELDS, TeeType.SNP: SNP_VALUE_FIELDS,
                TeeType.SIM: SIM_VALUE_FIELDS, TeeType.NVGPU: NVGPU_VALUE_FIELDS}
IDENTITY_FIELDS = {TeeType.TDX: TDX_IDENTITY_FIELDS, TeeType.SNP: SNP_IDENTITY_FIELDS,
                   TeeType.SIM: SIM_IDENTITY_FIELDS, TeeType.NVGPU: NVGPU_IDENTITY_FIELDS}
DEFAULT_SNP_VMPLS = (0,)
# TEEs whose evidence carries vendor revocation and dated collateral (CRLs, TCB info).
TEES_WITH_REVOCATION = frozenset({TeeType.TDX, TeeType.SNP, TeeType.NVGPU})
# TEEs whose verification always uses dated collateral; for the others (nvgpu: OCSP responses,
# each bounded by its nextUpdate) the age limit applies to the collateral when some was used.
TEES_WITH_DATED_COLLATERAL = frozenset({TeeType.TDX, TeeType.SNP})
DEFAULT_MAX_COLLATERAL_AGE_S = 30 * 24 * 3600   # Intel's TCB info window
GRACE_STATUSES = ("OutOfDate", "OutOfDateConfigurationNeeded")
NO_SERVICE_TD = "00" * 48


def _hex_schema(nbytes: int) -> dict:
    return {"type": "string", "pattern": f"^[0-9a-fA-F]{{{2 * nbytes}}}$"}


def _hex_list_schema(nbytes: int) -> dict:
    return {"type": "array", "minItems": 1, "uniqueItems": True, "items": _hex_schema(nbytes)}


def _measurement_set_schema(fields: Mapping[str, int]) -> dict:
    return {"type": "array", "minItems": 1, "items": {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "properties": {name: _hex_schema(n) for name, n in fields.items()}}}


_UINT8 = {"type": "integer", "minimum": 0, "maximum": 255}
_UINT32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}

POLICY_JSON_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://conclave.invalid/schemas/attestation-policy-v1.json",
    "title": "Conclave attestation policy",
    "description": "Which verified TEE evidence a deployment accepts. Debug TEEs and revoked TCBs "
                   "are always refused; anything weakening checks is named unsafe_*.",
    "type": "object",
    "additionalProperties": False,
    "required": ["production", "allowed_tee"],
    "properties": {
        "production": {"type": "boolean",
                       "description": "Required. true refuses every unsafe_* setting."},
        "allowed_tee": {"type": "array", "minItems": 1, "uniqueItems": True,
                        "items": {"enum": [t.value for t in TeeType]}},
        "unsafe_allow_simulated": {"type": "boolean", "default": False,
                                   "description": "Accept simulated evidence (local mode only)."},
        "unsafe_test_roots": {
            "type": "object", "additionalProperties": False, "minProperties": 1,
            "properties": {tee: {"type": "array", "minItems": 1, "maxItems": 4, "uniqueItems": True,
                                 "items": {"type": "string", "pattern": "^-----BEGIN CERTIFICATE-----",
                                           "maxLength": 8192}}
                           for tee in ("tdx", "snp", "nvgpu", "nvgpu_rim")},
            "description": "PEM roots that replace Intel's / AMD's / NVIDIA's pinned roots for that TEE "
                           "(nvgpu: the device identity root; nvgpu_rim: the RIM signing root) (emulated "
                           "hardware in local mode only; refused in production)."},
        "allowed_tcb_statuses": {"type": "array", "minItems": 1, "uniqueItems": True,
                                 "items": {"enum": list(TCB_STATUSES)},
                                 "description": "Default [UpToDate]. Revoked is never accepted."},
        "require_revocation_check": {
            "type": "boolean",
            "description": "Refuse TDX/SNP/NVIDIA GPU evidence whose certificate revocation was not "
                           "checked (CRLs; NVIDIA OCSP for GPUs) (revocation_unchecked). Always on in "
                           "production; opt-in elsewhere."},
        "max_collateral_age": {
            "type": "integer", "minimum": 1,
            "description": "Seconds: refuse TDX/SNP evidence verified with collateral (TCB info, QE "
                           "identity, CRLs) issued longer ago (collateral_expired). Production "
                           "default: DEFAULT_MAX_COLLATERAL_AGE_S."},
        "tcb_grace_until": {
            "type": "string", "format": "date-time",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$",
            "description": "After a TCB recovery: accept an OutOfDate TCB until this RFC 3339 time "
                           "(the validation result names the grace)."},
        "denied_advisories": {"type": "array", "minItems": 1, "uniqueItems": True,
                              "items": {"type": "string", "minLength": 1, "maxLength": 64},
                              "description": "Vendor advisory IDs (e.g. INTEL-SA-00837) to refuse."},
        "tdx": {
            "type": "object", "additionalProperties": False,
            "properties": {
                **{name: _hex_list_schema(n) for name, n in TDX_VALUE_FIELDS.items()},
                "measurement_sets": _measurement_set_schema(TDX_VALUE_FIELDS),
                "min_tee_tcb_svn": _hex_schema(16),
                "mr_servicetd": {**_hex_list_schema(48),
                                 "description": "Allowed MRSERVICETD values (default: all zero, "
                                                "no service TD bound)."},
                "unsafe_allow_migratable": {"type": "boolean", "default": False,
                                            "description": "Accept a TD with TD_ATTRIBUTES.MIGRATABLE "
                                                           "(refused in production)."},
                "unsafe_allow_sept_ve": {"type": "boolean", "default": False,
                                         "description": "Accept a TD without TD_ATTRIBUTES.SEPT_VE_DISABLE "
                                                        "(refused in production)."},
            },
        },
        "snp": {
            "type": "object", "additionalProperties": False,
            "properties": {
                **{name: _hex_list_schema(n) for name, n in SNP_VALUE_FIELDS.items()},
                "measurement_sets": _measurement_set_schema(SNP_VALUE_FIELDS),
                "min_tcb": {"type": "object", "additionalProperties": False, "minProperties": 1,
                            "properties": {p: _UINT8 for p in SNP_TCB_PARTS}},
                "min_guest_svn": _UINT32,
                "require_committed_tcb_equals_current": {"type": "boolean", "default": False},
                "allowed_vmpl": {"type": "array", "minItems": 1, "uniqueItems": True,
                                 "items": {"type": "integer", "minimum": 0, "maximum": 3},
                                 "description": "Default [0]."},
                "unsafe_allow_migrate_ma": {"type": "boolean", "default": False,
                                            "description": "Accept a guest policy that allows a "
                                                           "migration agent (refused in production)."},
                "allowed_signing_keys": {"type": "array", "minItems": 1, "uniqueItems": True,
                                         "items": {"enum": ["vcek", "vlek"]}},
            },
        },
        "nvgpu": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "require_rim": {"const": True,
                                "description": "Every active measurement must match NVIDIA's signed RIMs "
                                               "(driver and VBIOS) for the GPU's versions (rim_missing)."},
                "measurements": {"type": "object", "minProperties": 1,
                                 "propertyNames": {"pattern": "^[0-9]{1,3}$"},
                                 "additionalProperties": {
                                     "type": "array", "minItems": 1, "uniqueItems": True,
                                     "items": {"type": "string", "pattern": "^[0-9a-fA-F]{2,256}$"}}},
                "driver_versions": {"type": "array", "minItems": 1, "uniqueItems": True,
                                    "items": {"type": "string", "minLength": 1}},
                "vbios_versions": {"type": "array", "minItems": 1, "uniqueItems": True,
                                   "items": {"type": "string", "minLength": 1}},
            },
        },
        "sim": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "measurement": _hex_list_schema(48),
                "measurement_sets": _measurement_set_schema(SIM_VALUE_FIELDS),
                "min_svn": _UINT32,
            },
        },
    },
}


def export_schema(path: Path = SCHEMA_PATH) -> None:
    """Write POLICY_JSON_SCHEMA to policy.schema.json (the committed copy; a test keeps them equal)."""
    path.write_text(json.dumps(POLICY_JSON_SCHEMA, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    export_schema()
