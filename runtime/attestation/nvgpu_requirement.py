"""Per-stage GPU requirement (manifest `stages[i].gpus`) and the check of a node's verified GPUs.

    "gpus": {"count": 1, "models": ["H100", "H200"], "cc_mode": true, "ppcie": false}

count      GPUs (not NVSwitches) whose evidence verified, bound to this node's derived GPU nonce
           -> gpu_missing when fewer
models     allowed models; the evidence certifies the chip (leaf CN "GH100 ..."), so a model
           name stands for its chip: H100, H200, H800 and H20 are all GH100 and cannot be told
           apart from the evidence (nor, therefore, by this check)  -> gpu_model_not_allowed
cc_mode    (default true) the SPDM evidence carries no CC flag; CC/devtools mode shows in the
           measured configuration, so CC mode counts as proven only when every active index
           matched NVIDIA's RIMs (claim rim_validated)            -> gpu_cc_off
ppcie      (default false) require multi-GPU Protected PCIe mode (opaque
           protected_pcie_status 0xAA)                            -> gpu_cc_off
A stage without `gpus` requires nothing (local clusters without GPUs behave as before).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from conclave.runtime.attestation.core import Reason, TeeType, VerifiedEvidence, Violation

MAX_GPUS = 8
# Model name -> certified chip (first word of the device leaf CN).
MODEL_CHIPS: Mapping[str, str] = {
    "H100": "GH100", "H200": "GH100", "H800": "GH100", "H20": "GH100", "GH100": "GH100",
    "B100": "GB100", "B200": "GB100", "GB100": "GB100", "GB200": "GB100",
}
_KEYS = {"count", "models", "cc_mode", "ppcie"}


class RequirementError(ValueError):
    """A `gpus` requirement that does not parse (the manifest maps it to `malformed`)."""


@dataclass(frozen=True)
class GpuRequirement:
    count: int = 1
    models: tuple[str, ...] | None = None
    cc_mode: bool = True
    ppcie: bool = False

    @classmethod
    def from_json(cls, obj: Any) -> "GpuRequirement":
        if not isinstance(obj, dict) or not set(obj) <= _KEYS or "count" not in obj:
            raise RequirementError(f"gpus must be an object with count and optionally {sorted(_KEYS - {'count'})}")
        count = obj["count"]
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_GPUS:
            raise RequirementError(f"gpus.count must be an integer 1..{MAX_GPUS}")
        models = obj.get("models")
        if models is not None:
            if (not isinstance(models, list) or not models or len(set(models)) != len(models)
                    or not all(isinstance(m, str) and m.upper() in MODEL_CHIPS for m in models)):
                raise RequirementError(f"gpus.models must be a non-empty list of {sorted(MODEL_CHIPS)}")
            models = tuple(m.upper() for m in models)
        for flag in ("cc_mode", "ppcie"):
            if flag in obj and not isinstance(obj[flag], bool):
                raise RequirementError(f"gpus.{flag} must be true or false")
        return cls(count=count, models=models, cc_mode=obj.get("cc_mode", True), ppcie=obj.get("ppcie", False))

    def to_json(self) -> dict:
        out: dict[str, Any] = {"count": self.count, "cc_mode": self.cc_mode, "ppcie": self.ppcie}
        if self.models is not None:
            out["models"] = list(self.models)
        return out


def _devices(gpu: VerifiedEvidence) -> list[Mapping[str, Any]]:
    claims = gpu.claims
    devices = claims.get("devices")
    return list(devices) if isinstance(devices, list) else [claims]


def gpu_devices(gpus: Iterable[VerifiedEvidence]) -> list[Mapping[str, Any]]:
    """Per-device claims of every verified GPU evidence item, NVSwitches left out."""
    out = []
    for item in gpus:
        if not isinstance(item, VerifiedEvidence) or item.tee != TeeType.NVGPU:
            raise TypeError("check_gpus takes verified nvgpu evidence")
        out.extend(d for d in _devices(item) if d.get("device_kind") == "gpu")
    return out


def check_gpus(requirement: GpuRequirement | None, gpus: Sequence[VerifiedEvidence]) -> list[Violation]:
    """Every way the node's verified GPUs fall short of its stage (empty: satisfied)."""
    if requirement is None:
        return []
    devices = gpu_devices(gpus)
    out: list[Violation] = []
    if len(devices) < requirement.count:
        out.append(Violation(Reason.GPU_MISSING, "gpus.count",
                             f"stage needs {requirement.count} attested GPU(s), node presented {len(devices)}",
                             requirement.count, len(devices)))
    allowed_chips = sorted({MODEL_CHIPS[m] for m in requirement.models}) if requirement.models else None
    for i, d in enumerate(devices):
        chip = d.get("gpu_chip")
        if allowed_chips is not None and chip not in allowed_chips:
            out.append(Violation(Reason.GPU_MODEL_NOT_ALLOWED, f"gpus.models[{i}]",
                                 f"GPU {i} is a {chip or 'unknown chip'}, stage allows {list(requirement.models)}",
                                 allowed_chips, chip))
        if requirement.cc_mode and d.get("rim_validated") is not True:
            out.append(Violation(Reason.GPU_CC_OFF, f"gpus.cc_mode[{i}]",
                                 f"GPU {i}: CC mode not proven (measurements not validated against NVIDIA RIMs)",
                                 True, d.get("rim_validated")))
        if requirement.ppcie and d.get("ppcie_mode") is not True:
            out.append(Violation(Reason.GPU_CC_OFF, f"gpus.ppcie[{i}]",
                                 f"GPU {i}: protected PCIe mode is not on", True, d.get("ppcie_mode")))
    return out
