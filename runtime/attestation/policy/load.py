"""Loading a policy: schema check, production rules (required fields, refused weakenings), the
code-identity rule (policy_empty), test roots, and the digest. Builds `Policy`; no evidence here."""
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
from conclave.runtime.attestation.core import PolicyError, Reason, TeeType
from conclave.runtime.attestation.policy.schema import (DEFAULT_MAX_COLLATERAL_AGE_S, DEFAULT_TCB_STATUSES,
                                                        IDENTITY_FIELDS, POLICY_JSON_SCHEMA)


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
