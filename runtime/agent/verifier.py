"""The admission Verifier of a node (and of the model owner's key broker), with its own collateral.

Why one builder: every party that admits a node must judge TDX/SNP evidence the same way: the
manifest's policy, the vendor roots (or, only where the signed policy names them in
unsafe_test_roots, the emulated hardware's test roots), and collateral the verifier fetched itself
from the vendor services (Intel PCS / AMD KDS by default; local mode's emulators) into its own
cache (CollateralCache), falling back to the cached copy while the vendor is unreachable. Carried
collateral is merged by the Verifier only where it checks and is fresher (collateral_merge).
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from conclave.overlay.admission import Verifier
from conclave.runtime.attestation import collateral_fetch as cf
from conclave.runtime.attestation.collateral_cache import CollateralCache
from conclave.runtime.attestation.core import TeeType
from conclave.runtime.attestation.nvgpu_collateral_source import GpuCollateralSource
from conclave.runtime.attestation.ocsp_fetch import NVIDIA_OCSP_URL, OcspFetcher
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.attestation.rim_service import NVIDIA_RIM_SERVICE, RimService

DEFAULT_REFRESH_S = 3600.0


@dataclass(frozen=True)
class VendorServices:
    """Where a verifier fetches collateral: Intel PCS v4 (TCB info, QE identity, PCK CRL), Intel's
    root CA CRL, AMD KDS (VCEK, chain, CRL); how often a cached copy is fetched again."""

    pcs: str = cf.INTEL_PCS_BASE
    pcs_root_crl: str = cf.INTEL_ROOT_CA_CRL_URL
    kds: str = cf.AMD_KDS_BASE
    refresh_after_s: float = DEFAULT_REFRESH_S
    rim: str = NVIDIA_RIM_SERVICE          # NVIDIA's RIM service (driver and VBIOS RIMs of GPU evidence)
    nvidia_ocsp: str = NVIDIA_OCSP_URL     # NVIDIA's OCSP responder (GPU device and RIM signing chains)

    def __post_init__(self) -> None:
        for url in (self.pcs, self.pcs_root_crl, self.kds, self.rim, self.nvidia_ocsp):
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"vendor service URL {url!r} must be http(s)")
        if self.refresh_after_s < 0:
            raise ValueError("collateral refresh interval must be >= 0")


def gpu_collateral_source(folder: Path, services: VendorServices | None,
                          policy: Policy | None) -> GpuCollateralSource:
    """RIMs from the RIM service and OCSP from NVIDIA's responder, cached under folder, the paths
    built to the policy's roots (NVIDIA's pinned ones unless unsafe_test_roots names test roots;
    policy None: NVIDIA's)."""
    s = services or VendorServices()
    rim_roots = policy.test_rim_roots if policy is not None else None
    device_roots = policy.test_roots.get(TeeType.NVGPU) if policy is not None else None
    cache = folder / "nvgpu"
    if rim_roots or device_roots:
        # test roots (emulated GPUs): every emulated cluster publishes RIMs under the same ids, signed by
        # its own test RIM root, so a cache shared by clusters (a client's) keeps one folder per root set
        digest = hashlib.sha256(b"".join(c.fingerprint(hashes.SHA256()) for c in (*(rim_roots or ()),
                                                                                    *(device_roots or ()))))
        cache = cache / f"test-{digest.hexdigest()[:16]}"
    return GpuCollateralSource(rim_service=RimService(s.rim.rstrip("/"), cache_dir=cache),
                               ocsp_fetcher=OcspFetcher(s.nvidia_ocsp, cache_dir=cache),
                               device_roots=device_roots, rim_roots=rim_roots)


def collateral_cache(folder: Path, services: VendorServices | None, policy: Policy | None = None) -> CollateralCache:
    s = services or VendorServices()
    gpu = gpu_collateral_source(folder, s, policy) if policy is not None and TeeType.NVGPU in policy.allowed_tee \
        else None
    return CollateralCache(folder, pcs_base=s.pcs.rstrip("/"), root_crl_url=s.pcs_root_crl,
                           kds_base=s.kds.rstrip("/"), refresh_after_s=s.refresh_after_s, gpu_source=gpu)


def make_verifier(*, policy: Policy, manifest_digest: bytes, overlay: ipaddress.IPv4Network,
                  trusted_sim_roots: Sequence[x509.Certificate] = (), services: VendorServices | None = None,
                  collateral_dir: Path | None = None) -> Verifier:
    """A Verifier for this policy: test roots from the policy (unsafe_test_roots, never production),
    its own collateral cache whenever the policy allows TDX or SNP (collateral_dir required then)."""
    wants_collateral = bool(policy.allowed_tee & {TeeType.TDX, TeeType.SNP, TeeType.NVGPU})
    cache = None
    if wants_collateral:
        if collateral_dir is None:
            raise ValueError("a verifier admitting TDX/SNP/NVIDIA GPUs needs a collateral cache folder")
        cache = collateral_cache(collateral_dir, services, policy)
    return Verifier(policy=policy, manifest_digest=manifest_digest, overlay=overlay,
                    trusted_sim_roots=trusted_sim_roots, trusted_roots=policy.test_roots or None,
                    collateral_for=cache.collateral_for if cache is not None else None,
                    gpu_roots=policy.test_roots.get(TeeType.NVGPU), rim_roots=policy.test_rim_roots)


def build_verifier(cfg) -> Verifier:
    """The node agent's Verifier from its NodeConfig."""
    from conclave.runtime import config as env_config
    folder = cfg.collateral_dir or (env_config.state_dir() / "collateral" / cfg.node_name)
    return make_verifier(policy=cfg.policy, manifest_digest=cfg.manifest_digest, overlay=cfg.overlay_cidr,
                         trusted_sim_roots=cfg.trusted_sim_roots, services=cfg.vendor_services,
                         collateral_dir=folder)


__all__ = ["VendorServices", "collateral_cache", "gpu_collateral_source", "make_verifier", "build_verifier"]
