"""Appraisal policy: which verified evidence a deployment accepts.

Why a separate step: verification answers "is this genuine hardware evidence?"; validation
answers "is it what *we* want to run?". Validation collects EVERY violation so an operator sees
all mismatched measurements at once (DESIGN.md convention 3).

Rules that are not negotiable (no policy field can turn them off):
- debug-mode TEEs are always refused (`debug_enabled`); there is no allow_debug.
- TCB status "Revoked" is never accepted, even when listed (listing it is `policy_invalid`).
- `production` is required; `unsafe_allow_simulated: true` together with `production: true`
  (or "sim" in allowed_tee under production) is `policy_invalid`.
- A policy must name a code identity for every allowed TEE (IDENTITY_FIELDS: TDX `mr_td`, SNP
  `measurement` / `id_key_digest` / `author_key_digest`, NVIDIA GPU `measurements`, sim
  `measurement`; in a `measurement_sets` list every set must carry one), else it is
  `policy_empty`: "accept any genuine TDX VM" is never what an operator means, and fields such as
  SNP host_data/chip_id, TDX mr_seam/mr_owner/xfam or GPU driver versions do not say which code
  runs.

Safe defaults; each weakening is an explicit field (DESIGN.md convention 5):
- SNP: VMPL 0 unless `allowed_vmpl` lists others (`vmpl_not_allowed`); a guest policy allowing a
  migration agent (MIGRATE_MA) is refused (`migration_allowed`) unless `unsafe_allow_migrate_ma`,
  which a production policy cannot set; a production policy must set `min_tcb`.
- TDX: MRSERVICETD must be all zero (no service TD bound to the guest) unless `mr_servicetd`
  lists allowed values (`servicetd_not_allowed`). TD_ATTRIBUTES (Intel TDX ABI, TDATTRIBUTES):
  no bit of the TUD group (bits 0-7, "TD under debug": DEBUG and the profiling bits) may be set
  (`debug_enabled`); MIGRATABLE (bit 29) is refused (`migration_allowed`) unless
  `unsafe_allow_migratable`; SEPT_VE_DISABLE (bit 28) must be set (`sept_ve_enabled`: without it
  the host can inject #VE on secure-EPT violations, which a Linux guest refuses too) unless
  `unsafe_allow_sept_ve`. Neither weakening is allowed in production, and a production policy
  allowing tdx must list its `xfam` values (the CPU features exposed to the TD).
- Any TEE: advisory IDs listed in `denied_advisories` are refused (`advisory_denied`).

One schema (POLICY_JSON_SCHEMA, exported verbatim to policy.schema.json); YAML or JSON input.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml
from cryptography import x509

from conclave.runtime import canonical
from conclave.runtime.attestation.core import (PolicyError, PolicyViolated, Reason, TeeType,
                                               VerifiedEvidence, Violation)

SCHEMA_PATH = Path(__file__).with_name("policy.schema.json")

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


def _canonical(obj: Any) -> bytes:
    """The policy digest's encoding (fixed before runtime/canonical.py's strict rule)."""
    return canonical.canonical_json(obj, strict=False, ensure_ascii=True, allow_nan=True)


def _lower_hex(obj: Any) -> Any:
    """Normalize hex strings to lowercase (the schema accepts either case)."""
    if isinstance(obj, str):
        try:
            bytes.fromhex(obj)
        except ValueError:
            return obj
        return obj.lower() if len(obj) % 2 == 0 and obj else obj
    if isinstance(obj, list):
        return [_lower_hex(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _lower_hex(v) for k, v in obj.items()}
    return obj


def _constrains_identity(tee: TeeType, section: Mapping[str, Any] | None) -> bool:
    """True when `section` pins the TEE's code: an identity field, or measurement sets that each
    carry one (a set with host_data alone would admit any image with that host data)."""
    if not section:
        return False
    identity = IDENTITY_FIELDS[tee]
    if any(section.get(k) for k in identity):
        return True
    sets = section.get("measurement_sets")
    return bool(sets) and all(any(k in s for k in identity) for s in sets)


RIM_TEST_ROOTS = "nvgpu_rim"   # unsafe_test_roots key of the test RIM signing root (emulated GPUs)


def _parse_rim_test_roots(section: Mapping[str, Any]) -> tuple[x509.Certificate, ...] | None:
    pems = section.get(RIM_TEST_ROOTS)
    if not pems:
        return None
    try:
        return tuple(x509.load_pem_x509_certificate(p.encode()) for p in pems)
    except ValueError:
        raise PolicyError(Reason.POLICY_INVALID, f"unsafe_test_roots.{RIM_TEST_ROOTS}: not a PEM certificate") from None


def _parse_test_roots(section: Mapping[str, Any]) -> dict[TeeType, tuple[x509.Certificate, ...]]:
    """unsafe_test_roots' PEM strings as certificates; one that is no certificate is policy_invalid."""
    out = {}
    for tee, pems in section.items():
        if tee == RIM_TEST_ROOTS:
            continue   # not a TEE: the RIM signing root (test_rim_roots)
        try:
            out[TeeType(tee)] = tuple(x509.load_pem_x509_certificate(p.encode()) for p in pems)
        except ValueError:
            raise PolicyError(Reason.POLICY_INVALID, f"unsafe_test_roots.{tee}: not a PEM certificate") from None
    return out


def _check_production(data: Mapping[str, Any]) -> None:
    """Fields a production policy must have, and weakenings it must not have (policy_invalid)."""
    snp = data.get(TeeType.SNP.value) or {}
    if snp.get("unsafe_allow_migrate_ma", False):
        raise PolicyError(Reason.POLICY_INVALID,
                          "snp.unsafe_allow_migrate_ma is refused in a production policy")
    if TeeType.SNP.value in data["allowed_tee"] and "min_tcb" not in snp:
        raise PolicyError(Reason.POLICY_INVALID,
                          "a production policy allowing snp must set snp.min_tcb (minimum TCB)")
    tdx = data.get(TeeType.TDX.value) or {}
    for weakening in ("unsafe_allow_migratable", "unsafe_allow_sept_ve"):
        if tdx.get(weakening, False):
            raise PolicyError(Reason.POLICY_INVALID, f"tdx.{weakening} is refused in a production policy")
    if TeeType.TDX.value in data["allowed_tee"] and not _tdx_constrains_xfam(tdx):
        raise PolicyError(Reason.POLICY_INVALID,
                          "a production policy allowing tdx must list tdx.xfam (in every measurement set)")


def _tdx_constrains_xfam(tdx: Mapping[str, Any]) -> bool:
    sets = tdx.get("measurement_sets")
    if "xfam" in tdx:
        return True
    return bool(sets) and all("xfam" in s for s in sets)


@dataclass(frozen=True)
class Policy:
    """A schema-valid, internally consistent policy. Build with from_dict / load."""

    data: Mapping[str, Any]
    digest: bytes = field(repr=False)

    @property
    def production(self) -> bool:
        return bool(self.data["production"])

    @property
    def allowed_tee(self) -> frozenset[TeeType]:
        return frozenset(TeeType(t) for t in self.data["allowed_tee"])

    @property
    def unsafe_allow_simulated(self) -> bool:
        return bool(self.data.get("unsafe_allow_simulated", False))

    @property
    def require_revocation_check(self) -> bool:
        return self.production or bool(self.data.get("require_revocation_check", False))

    @property
    def max_collateral_age(self) -> int | None:
        value = self.data.get("max_collateral_age")
        return DEFAULT_MAX_COLLATERAL_AGE_S if value is None and self.production else value

    @property
    def tcb_grace_until(self) -> datetime | None:
        text = self.data.get("tcb_grace_until")
        return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))

    @property
    def test_roots(self) -> dict[TeeType, tuple[x509.Certificate, ...]]:
        """unsafe_test_roots as certificates per TEE (empty unless the policy names test roots)."""
        return _parse_test_roots(self.data.get("unsafe_test_roots") or {})

    @property
    def test_rim_roots(self) -> tuple[x509.Certificate, ...] | None:
        """unsafe_test_roots.nvgpu_rim: the test RIM signing root(s) of emulated GPUs (None: NVIDIA's pinned)."""
        return _parse_rim_test_roots(self.data.get("unsafe_test_roots") or {})

    @property
    def allowed_tcb_statuses(self) -> tuple[str, ...]:
        return tuple(self.data.get("allowed_tcb_statuses", DEFAULT_TCB_STATUSES))

    def section(self, tee: TeeType) -> Mapping[str, Any]:
        return self.data.get(str(tee)) or {}

    @classmethod
    def from_dict(cls, raw: Any) -> "Policy":
        if not isinstance(raw, Mapping):
            raise PolicyError(Reason.POLICY_INVALID, "policy must be a mapping (YAML or JSON object)")
        if not raw:
            raise PolicyError(Reason.POLICY_EMPTY, "policy is empty")
        try:
            jsonschema.Draft202012Validator(POLICY_JSON_SCHEMA).validate(raw)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
            raise PolicyError(Reason.POLICY_INVALID, f"policy schema: {where}: {exc.message}") from None
        data = json.loads(_canonical(raw))
        for name in ("tdx", "snp", "sim"):  # hex fields: either case in, lowercase inside
            if name in data:
                data[name] = _lower_hex(data[name])
        if "measurements" in data.get("nvgpu", {}):
            data["nvgpu"]["measurements"] = _lower_hex(data["nvgpu"]["measurements"])
        production = data["production"]
        if production and data.get("require_revocation_check") is False:
            raise PolicyError(Reason.POLICY_INVALID,
                              "a production policy always checks revocation (require_revocation_check)")
        if production and data.get("unsafe_allow_simulated", False):
            raise PolicyError(Reason.POLICY_INVALID,
                              "unsafe_allow_simulated is refused in a production policy")
        if production and TeeType.SIM.value in data["allowed_tee"]:
            raise PolicyError(Reason.POLICY_INVALID, "a production policy cannot allow the sim TEE")
        if production and "unsafe_test_roots" in data:
            raise PolicyError(Reason.POLICY_INVALID,
                              "unsafe_test_roots is refused in a production policy (vendor roots only)")
        _parse_test_roots(data.get("unsafe_test_roots") or {})
        _parse_rim_test_roots(data.get("unsafe_test_roots") or {})
        if "Revoked" in data.get("allowed_tcb_statuses", ()):
            raise PolicyError(Reason.POLICY_INVALID, "TCB status Revoked can never be allowed")
        for tee in (TeeType(t) for t in data["allowed_tee"]):
            if not _constrains_identity(tee, data.get(tee.value)):
                raise PolicyError(Reason.POLICY_EMPTY,
                                  f"policy allows {tee.value} but names no code identity for it "
                                  f"(one of {', '.join(IDENTITY_FIELDS[tee])})")
        if production:
            _check_production(data)
        return cls(data=data, digest=hashlib.sha256(_canonical(data)).digest())

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(Reason.POLICY_INVALID, f"cannot read policy {path}: {exc}") from None
        try:
            raw = yaml.safe_load(text)  # JSON is YAML 1.2 compatible for our purposes
        except yaml.YAMLError as exc:
            raise PolicyError(Reason.POLICY_INVALID, f"policy {path} is not YAML/JSON: {exc}") from None
        if raw is None:
            raise PolicyError(Reason.POLICY_EMPTY, f"policy {path} is empty")
        return cls.from_dict(raw)


_VALIDATED = object()


@dataclass(frozen=True)
class ValidatedEvidence:
    """VerifiedEvidence that passed a policy; constructed only by validate()."""

    verified: VerifiedEvidence
    policy_digest: bytes
    # set when an OutOfDate TCB was accepted only under the policy's tcb_grace_until
    tcb_grace_until: datetime | None = None
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VALIDATED:
            raise TypeError("ValidatedEvidence is constructed only by policy.validate")

    @property
    def tee(self) -> TeeType:
        return self.verified.tee

    @property
    def report_data(self) -> bytes:
        return self.verified.report_data


def _as_hex(value: Any) -> str | None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return None


class _Collector:
    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, reason: Reason, field_name: str, message: str, expected: Any = None,
            actual: Any = None) -> None:
        self.violations.append(Violation(reason, field_name, message, expected, actual))


def _check_value_lists(out: _Collector, tee: TeeType, section: Mapping[str, Any],
                       claims: Mapping[str, Any]) -> None:
    for name in VALUE_FIELDS[tee]:
        allowed = section.get(name)
        if allowed is None:
            continue
        actual = _as_hex(claims.get(name))
        if actual is None or actual not in allowed:
            out.add(Reason.MEASUREMENT_MISMATCH, f"{tee.value}.{name}",
                    f"{name} {actual or '(absent)'} is not an allowed value", allowed, actual)
    sets = section.get("measurement_sets")
    if sets is not None:
        actual_all = {name: _as_hex(claims.get(name)) for s in sets for name in s}
        if not any(all(actual_all[k] == v for k, v in s.items()) for s in sets):
            out.add(Reason.MEASUREMENT_MISMATCH, f"{tee.value}.measurement_sets",
                    "evidence matches none of the allowed measurement sets", sets, actual_all)


# TDATTRIBUTES bits (Intel TDX Module ABI): the TUD group (0-7) marks a TD under debug or profiling,
# untrusted if any bit is set; bit 0 is DEBUG itself (the `debug` claim).
TDX_ATTR_TUD_MASK = 0xFF
TDX_ATTR_SEPT_VE_DISABLE = 1 << 28
TDX_ATTR_MIGRATABLE = 1 << 29


def _check_tdx_attributes(out: _Collector, section: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
    raw = claims.get("td_attributes")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 8:
        out.add(Reason.MEASUREMENT_MISMATCH, "tdx.td_attributes", "TD_ATTRIBUTES absent or not 8 bytes",
                None, _as_hex(raw))
        return
    attrs = int.from_bytes(bytes(raw), "little")
    if attrs & TDX_ATTR_TUD_MASK & ~1:   # DEBUG (bit 0) is reported once, as the debug claim
        out.add(Reason.DEBUG_ENABLED, "tdx.td_attributes",
                "a TD-under-debug attribute (TUD group, bits 1-7: profiling) is set", 0,
                hex(attrs & TDX_ATTR_TUD_MASK))
    if attrs & TDX_ATTR_MIGRATABLE and not section.get("unsafe_allow_migratable", False):
        out.add(Reason.MIGRATION_ALLOWED, "tdx.unsafe_allow_migratable",
                "the TD is MIGRATABLE (TD_ATTRIBUTES bit 29): a migration TD can export its memory",
                False, True)
    if not attrs & TDX_ATTR_SEPT_VE_DISABLE and not section.get("unsafe_allow_sept_ve", False):
        out.add(Reason.SEPT_VE_ENABLED, "tdx.unsafe_allow_sept_ve",
                "TD_ATTRIBUTES.SEPT_VE_DISABLE (bit 28) is clear: the host can inject #VE on "
                "secure-EPT violations", True, False)


def _check_tdx(out: _Collector, section: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
    _check_tdx_attributes(out, section, claims)
    minimum = section.get("min_tee_tcb_svn")
    if minimum is not None:
        actual = claims.get("tee_tcb_svn")
        want = bytes.fromhex(minimum)
        if not isinstance(actual, (bytes, bytearray)) or len(actual) != 16 or any(
                a < w for a, w in zip(bytes(actual), want)):
            out.add(Reason.SVN_TOO_LOW, "tdx.min_tee_tcb_svn",
                    "TEE_TCB_SVN below the minimum (compared component-wise)", minimum, _as_hex(actual))
    # TDX 1.5 binds a service TD (e.g. a migration TD) into MRSERVICETD; TDX 1.0 quotes have none.
    allowed_servicetd = section.get("mr_servicetd") or [NO_SERVICE_TD]
    servicetd = _as_hex(claims.get("mr_servicetd")) or NO_SERVICE_TD
    if servicetd not in allowed_servicetd:
        out.add(Reason.SERVICETD_NOT_ALLOWED, "tdx.mr_servicetd",
                "a service TD is bound to this TD (MRSERVICETD) and the policy does not list it",
                allowed_servicetd, servicetd)


def _check_snp(out: _Collector, section: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
    min_tcb = section.get("min_tcb")
    if min_tcb is not None:
        reported = claims.get("reported_tcb")
        for part, want in min_tcb.items():
            have = reported.get(part) if isinstance(reported, Mapping) else None
            if not isinstance(have, int) or have < want:
                out.add(Reason.SVN_TOO_LOW, f"snp.min_tcb.{part}",
                        f"reported TCB {part} {have} is below the minimum {want}", want, have)
    min_guest = section.get("min_guest_svn")
    if min_guest is not None:
        have = claims.get("guest_svn")
        if not isinstance(have, int) or have < min_guest:
            out.add(Reason.SVN_TOO_LOW, "snp.min_guest_svn",
                    f"guest SVN {have} is below the minimum {min_guest}", min_guest, have)
    if section.get("require_committed_tcb_equals_current", False):
        committed, current = claims.get("committed_tcb"), claims.get("current_tcb")
        if committed is None or committed != current:
            out.add(Reason.TCB_MISMATCH, "snp.require_committed_tcb_equals_current",
                    "committed TCB differs from current TCB (firmware not committed)",
                    current, committed)
    vmpls = section.get("allowed_vmpl", list(DEFAULT_SNP_VMPLS))
    if claims.get("vmpl") not in vmpls:
        out.add(Reason.VMPL_NOT_ALLOWED, "snp.allowed_vmpl",
                f"VMPL {claims.get('vmpl')} is not allowed", vmpls, claims.get("vmpl"))
    migrate = claims.get("policy_migrate_ma_allowed")
    if migrate is not False and not section.get("unsafe_allow_migrate_ma", False):
        out.add(Reason.MIGRATION_ALLOWED, "snp.unsafe_allow_migrate_ma",
                "the guest policy allows a migration agent (MIGRATE_MA), which can export the "
                "guest's memory", False, migrate)
    keys = section.get("allowed_signing_keys")
    if keys is not None and claims.get("signing_key") not in keys:
        out.add(Reason.MEASUREMENT_MISMATCH, "snp.allowed_signing_keys",
                f"signing key {claims.get('signing_key')} is not allowed", keys, claims.get("signing_key"))


def _check_nvgpu(out: _Collector, section: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
    if section.get("require_rim") and claims.get("rim_validated") is not True:
        out.add(Reason.RIM_MISSING, "nvgpu.require_rim",
                "GPU measurements were not validated against NVIDIA RIMs", True, claims.get("rim_validated"))
    measured = claims.get("measurements")
    for index, allowed in (section.get("measurements") or {}).items():
        have = measured.get(int(index)) if isinstance(measured, Mapping) else None
        if have is None and isinstance(measured, Mapping):
            have = measured.get(str(index))
        actual = _as_hex(have)
        if actual is None or actual not in allowed:
            out.add(Reason.MEASUREMENT_MISMATCH, f"nvgpu.measurements.{index}",
                    f"GPU measurement {index} is not an allowed value", allowed, actual)
    for name, claim in (("driver_versions", "driver_version"), ("vbios_versions", "vbios_version")):
        allowed = section.get(name)
        if allowed is not None and claims.get(claim) not in allowed:
            out.add(Reason.MEASUREMENT_MISMATCH, f"nvgpu.{name}",
                    f"{claim} {claims.get(claim)} is not allowed", allowed, claims.get(claim))


def _check_sim(out: _Collector, section: Mapping[str, Any], claims: Mapping[str, Any]) -> None:
    minimum = section.get("min_svn")
    if minimum is not None:
        have = claims.get("svn")
        if not isinstance(have, int) or have < minimum:
            out.add(Reason.SVN_TOO_LOW, "sim.min_svn", f"svn {have} is below the minimum {minimum}",
                    minimum, have)


def violations(verified: VerifiedEvidence, policy: Policy) -> list[Violation]:
    """Every way `verified` falls short of `policy` (empty list: accepted)."""
    if not isinstance(verified, VerifiedEvidence):
        raise TypeError("validation accepts only VerifiedEvidence (run verification first)")
    if not isinstance(policy, Policy):
        raise TypeError("policy must be a Policy (Policy.load / Policy.from_dict)")
    out = _Collector()
    claims = verified.claims
    tee = TeeType(verified.tee)

    if verified.simulated or claims.get("simulated"):
        if not policy.unsafe_allow_simulated:
            out.add(Reason.SIMULATED_NOT_ALLOWED, "unsafe_allow_simulated",
                    "simulated TEE evidence is not allowed by this policy", False, True)
    if tee not in policy.allowed_tee:
        out.add(Reason.TEE_NOT_ALLOWED, "allowed_tee", f"TEE {tee.value} is not allowed",
                sorted(t.value for t in policy.allowed_tee), tee.value)
    debug = claims.get("debug")
    if debug is None and tee in TEES_WITHOUT_DEBUG_FLAG:
        pass  # GPU evidence has no debug flag: its CC/devtools mode shows in the measurements
    elif debug is not False:  # fail closed: absent or anything but False counts as debug
        out.add(Reason.DEBUG_ENABLED, "debug", "debug-mode TEE evidence is never accepted", False, debug)

    status = verified.tcb_status if verified.tcb_status is not None else claims.get("tcb_status")
    if status == "Revoked":
        out.add(Reason.TCB_REVOKED, "allowed_tcb_statuses", "TCB is revoked",
                list(policy.allowed_tcb_statuses), status)
    elif status is None:
        if tee in TEES_WITH_TCB_STATUS:
            out.add(Reason.TCB_NOT_ALLOWED, "allowed_tcb_statuses",
                    "TCB status unknown (verify with collateral)", list(policy.allowed_tcb_statuses), None)
    elif status not in policy.allowed_tcb_statuses and not _on_grace(verified, policy):
        out.add(Reason.TCB_NOT_ALLOWED, "allowed_tcb_statuses", f"TCB status {status} is not allowed",
                list(policy.allowed_tcb_statuses), status)

    denied = set(policy.data.get("denied_advisories", ()))
    advisories = set(verified.advisory_ids) | set(claims.get("advisory_ids") or ())
    for advisory in sorted(denied & advisories):
        out.add(Reason.ADVISORY_DENIED, "denied_advisories",
                f"the TCB is affected by advisory {advisory}, which this policy denies",
                sorted(denied), advisory)

    section = policy.section(tee)
    if tee in policy.allowed_tee:
        _check_value_lists(out, tee, section, claims)
        {TeeType.TDX: _check_tdx, TeeType.SNP: _check_snp, TeeType.NVGPU: _check_nvgpu,
         TeeType.SIM: _check_sim}[tee](out, section, claims)
    _check_revocation_and_age(out, verified, policy, tee)
    return out.violations


def _on_grace(verified: VerifiedEvidence, policy: Policy) -> bool:
    """An OutOfDate TCB inside the policy's stated grace period (tcb_grace_until, at verified_at)."""
    grace = policy.tcb_grace_until
    status = verified.tcb_status if verified.tcb_status is not None else verified.claims.get("tcb_status")
    return grace is not None and status in GRACE_STATUSES and verified.verified_at <= grace


def _check_revocation_and_age(out: _Collector, verified: VerifiedEvidence, policy: Policy,
                              tee: TeeType) -> None:
    """Revocation checked (production: always required) and collateral not older than allowed."""
    if tee not in TEES_WITH_REVOCATION:
        return
    if policy.require_revocation_check and not verified.revocation_checked:
        unchecked = verified.claims.get("revocation_unchecked")  # nvgpu: each certificate and why
        detail = f": {'; '.join(unchecked)}" if unchecked else " (collateral without CRLs, or none)"
        out.add(Reason.REVOCATION_UNCHECKED, "require_revocation_check",
                f"certificate revocation was not checked{detail}", True, False)
    limit = policy.max_collateral_age
    if limit is None or (tee not in TEES_WITH_DATED_COLLATERAL and verified.collateral_age_s is None):
        return
    age = verified.collateral_age_s
    if age is None:
        out.add(Reason.COLLATERAL_MISSING, "max_collateral_age",
                "no dated vendor collateral was used, so its age is unknown", limit, None)
    elif age > limit:
        out.add(Reason.COLLATERAL_EXPIRED, "max_collateral_age",
                f"collateral is {age:.0f} s old, more than the {limit} s allowed", limit, round(age))


def validate(verified: VerifiedEvidence, policy: Policy) -> ValidatedEvidence:
    """Accept `verified` under `policy` or raise PolicyViolated listing every violation.

    The result names the grace period when an OutOfDate TCB was accepted only under it."""
    found = violations(verified, policy)
    if found:
        raise PolicyViolated(found)
    status = verified.tcb_status if verified.tcb_status is not None else verified.claims.get("tcb_status")
    grace = policy.tcb_grace_until if (status not in policy.allowed_tcb_statuses
                                       and _on_grace(verified, policy)) else None
    return ValidatedEvidence(verified=verified, policy_digest=policy.digest, tcb_grace_until=grace,
                             _token=_VALIDATED)


def export_schema(path: Path = SCHEMA_PATH) -> None:
    """Write POLICY_JSON_SCHEMA to policy.schema.json (the committed copy; a test keeps them equal)."""
    path.write_text(json.dumps(POLICY_JSON_SCHEMA, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":  # python -m conclave.runtime.attestation.policy
    export_schema()
