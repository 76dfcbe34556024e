"""A verifier's own GPU collateral: the RIMs and OCSP responses for a piece of GPU evidence.

Why: a node admitting a peer (or a client running `conclave verify`) must validate the peer's
GPUs against NVIDIA's RIMs and check revocation itself, from NVIDIA's services, not only with
what the peer hands over. `collateral_for(tee, evidence)` has the shape of the Verifier's
collateral_for: it reads from the (still unverified) evidence which RIMs to fetch (driver and
VBIOS RIM ids per device) and which certificates to ask about (each device path but its
per-boot leaf, each RIM's signing path), fetches through rim_service / ocsp_fetch, and returns
nvgpu_collateral.NvgpuCollateral. Nothing it returns is trusted: nvgpu.verify checks it all.
"""
from __future__ import annotations

import logging
from typing import Sequence

from cryptography import x509

from conclave.runtime.attestation import nvgpu, nvgpu_rim, ocsp
from conclave.runtime.attestation.core import AttestationError, TeeType
from conclave.runtime.attestation.nvgpu_chain import ChainError, build_path, dedupe, pinned_roots, select_leaf
from conclave.runtime.attestation.nvgpu_collateral import NvgpuCollateral
from conclave.runtime.attestation.ocsp_fetch import OcspFetcher
from conclave.runtime.attestation.rim_service import RimService

log = logging.getLogger("conclave.attestation.nvgpu_collateral")


class GpuCollateralSource:
    """rim_service / ocsp: None leaves that part out. device_roots / rim_roots: the roots the
    paths are built to (None: NVIDIA's pinned roots; emulated GPUs pass their test roots)."""

    def __init__(self, *, rim_service: RimService | None = None, ocsp_fetcher: OcspFetcher | None = None,
                 device_roots: Sequence[x509.Certificate] | None = None,
                 rim_roots: Sequence[x509.Certificate] | None = None):
        self.rim_service = rim_service
        self.ocsp_fetcher = ocsp_fetcher
        self.device_roots = None if device_roots is None else tuple(device_roots)
        self.rim_roots = None if rim_roots is None else tuple(rim_roots)

    def __repr__(self) -> str:
        return f"GpuCollateralSource(rims={self.rim_service!r}, ocsp={self.ocsp_fetcher!r})"

    def collateral_for(self, tee: TeeType | str, evidence: bytes,
                       certs: Sequence[x509.Certificate] = ()) -> NvgpuCollateral | None:
        """NvgpuCollateral for this GPU evidence; None for other TEEs or unparsable evidence
        (verification refuses that on its own)."""
        if TeeType(tee) != TeeType.NVGPU:
            return None
        try:
            parsed = nvgpu.parse(evidence)
        except AttestationError:
            return None
        rims = self.rim_service.rims_for(rim_ids(parsed)) if self.rim_service is not None else None
        responses = None
        if self.ocsp_fetcher is not None:
            pairs = self._device_pairs(parsed, certs) + self._rim_pairs(rims)
            responses = self.ocsp_fetcher.responses_for(pairs)
        if rims is None and responses is None:
            return None
        return NvgpuCollateral(rims=rims, ocsp=responses)

    def _device_pairs(self, parsed: nvgpu.ParsedNvgpu, certs: Sequence[x509.Certificate]):
        roots = self.device_roots if self.device_roots is not None else pinned_roots()
        pairs = []
        for device in parsed.devices:
            pool = dedupe([*device.chain, *certs])
            try:
                path = build_path(select_leaf(pool), pool, roots)
            except ChainError as exc:
                log.info("no OCSP query for a device chain that does not build: %s", exc.message)
                continue
            pairs += ocsp.pairs_to_check(path, skip_leaf=True)
        return pairs

    def _rim_pairs(self, rims: nvgpu_rim.RimSet | None):
        if rims is None:
            return []
        roots = self.rim_roots if self.rim_roots is not None else nvgpu_rim.pinned_rim_roots()
        pairs = []
        for rim in rims.rims:
            leaf, *rest = rim.keyinfo_certs
            try:
                path = build_path(leaf, dedupe(rest), roots)
            except ChainError:
                continue
            pairs += ocsp.pairs_to_check(path, skip_leaf=False)
        return pairs


def rim_ids(parsed: nvgpu.ParsedNvgpu) -> list[str]:
    """The RIM service ids of every device's driver and VBIOS RIM (those the evidence names)."""
    out: list[str] = []
    for device in parsed.devices:
        spdm = device.spdm
        for rim_id in (nvgpu_rim.driver_rim_id(spdm.driver_version),
                       nvgpu_rim.vbios_rim_id(spdm.opaque, spdm.vbios_version)):
            if rim_id and rim_id not in out:
                out.append(rim_id)
    return out


__all__ = ["GpuCollateralSource", "rim_ids"]
