"""What verification of NVIDIA GPU evidence takes besides the evidence: RIMs and OCSP responses.

Both are vendor-signed (RIMs by NVIDIA's RIM signing hierarchy, OCSP responses by the issuing
CA or its responder), so they may come from anywhere: the verifier's own fetch
(nvgpu_collateral_source), the peer, or files. nvgpu.verify checks each before use. Pure data,
no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

from conclave.runtime.attestation.nvgpu_rim import RimSet
from conclave.runtime.attestation.ocsp import OcspResponses


@dataclass(frozen=True)
class NvgpuCollateral:
    """rims: the RIMs to validate measurements against (None: no RIM validation);
    ocsp: responses for the device and RIM signing chains (None: revocation not checked)."""

    rims: RimSet | None = None
    ocsp: OcspResponses | None = None

    @classmethod
    def of(cls, collateral: object | None) -> "NvgpuCollateral":
        """Normalize what nvgpu.verify accepts: None, a RimSet, OcspResponses or NvgpuCollateral."""
        if collateral is None:
            return cls()
        if isinstance(collateral, NvgpuCollateral):
            return collateral
        if isinstance(collateral, RimSet):
            return cls(rims=collateral)
        if isinstance(collateral, OcspResponses):
            return cls(ocsp=collateral)
        raise TypeError("nvgpu collateral is NVIDIA RIMs and/or OCSP responses")

    def merged_with(self, other: object | None) -> "NvgpuCollateral":
        """Own pieces first; the other's pieces fill what this one lacks (RIMs are chosen by
        version and every one's signature is checked; OCSP responses are judged one by one)."""
        other = NvgpuCollateral.of(other)
        rims = self.rims
        if other.rims is not None:
            rims = RimSet(tuple(rims.rims if rims else ()) + other.rims.rims)
        ocsp = self.ocsp
        if other.ocsp is not None:
            ocsp = OcspResponses(tuple(ocsp.responses if ocsp else ()) + other.ocsp.responses)
        return NvgpuCollateral(rims=rims, ocsp=ocsp)


__all__ = ["NvgpuCollateral"]
