"""The verifier's own collateral: fetched from configurable vendor base URLs into a cache folder,
served from that folder while the vendor is unreachable.

Why: a verifier must judge TCB status and revocation with collateral it obtained itself (or
at least checked itself), not with whatever a peer hands over. `CollateralCache.collateral_for
(tee, evidence)` is the `collateral_for` a node's admission Verifier takes: it reads from the
evidence what to look up (TDX: FMSPC and PCK CA type from the PCK leaf; SNP: product, chip ID
and REPORTED_TCB, or the VLEK chain), fetches through collateral_fetch (Intel PCS v4 / AMD KDS
by default; the emulators in tests) when the cached copy is older than `refresh_after_s`, and
falls back to the cached copy when the fetch fails. Whether that copy is still acceptable is
decided by verification (nextUpdate) and policy (max_collateral_age), never here.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from conclave.runtime.attestation import collateral_fetch as cf
from conclave.runtime.attestation import snp, tdx
from conclave.runtime.attestation.core import AttestationError, Reason, TeeType, VerificationFailed
from conclave.runtime.attestation.snp_report import decode_tcb

log = logging.getLogger("conclave.attestation.collateral")


class CollateralCache:
    """Per-verifier collateral cache (thread-safe; one fetch per key at a time)."""

    def __init__(self, cache_dir: Path, *, pcs_base: str = cf.INTEL_PCS_BASE,
                 root_crl_url: str = cf.INTEL_ROOT_CA_CRL_URL, kds_base: str = cf.AMD_KDS_BASE,
                 refresh_after_s: float = 3600.0, timeout: float = 5.0, gpu_source=None):
        self.cache_dir = Path(cache_dir)
        self.pcs_base = pcs_base
        self.root_crl_url = root_crl_url
        self.kds_base = kds_base
        self.refresh_after_s = refresh_after_s
        self.timeout = timeout
        self._lock = threading.Lock()
        self.last_error: str | None = None
        # NVIDIA GPU collateral (RIMs, OCSP): nvgpu_collateral_source.GpuCollateralSource; None: none
        self.gpu_source = gpu_source

    def __repr__(self) -> str:
        return f"CollateralCache({self.cache_dir}, pcs={self.pcs_base}, kds={self.kds_base})"

    def collateral_for(self, tee: TeeType | str, evidence: bytes) -> object | None:
        """Parsed collateral for this evidence, or None when none could be had (fetch failed
        and nothing cached; unparsable evidence is left for verification to refuse)."""
        tee = TeeType(tee)
        if tee == TeeType.NVGPU:
            return self.gpu_source.collateral_for(tee, evidence) if self.gpu_source is not None else None
        try:
            with self._lock:
                if tee == TeeType.TDX:
                    return tdx.load_collateral(self._tdx_folder(evidence))
                if tee == TeeType.SNP:
                    return snp.load_collateral(self._snp_folder(evidence))
        except AttestationError as exc:
            self.last_error = f"[{exc.reason}] {exc.message}"
            log.warning("no %s collateral: %s", tee, self.last_error)
        return None

    def _fetch(self, fetch, **kwargs) -> Path:
        """Fetch (when stale); on failure the cached copy, else collateral_missing propagates."""
        try:
            folder = fetch(cache=self.cache_dir, max_age=self.refresh_after_s, timeout=self.timeout, **kwargs)
            self.last_error = None
            return folder
        except AttestationError as exc:
            self.last_error = f"[{exc.reason}] {exc.message}"
            log.warning("collateral fetch failed, using the cache: %s", self.last_error)
            return fetch(cache=self.cache_dir, offline=True, **kwargs)

    def _tdx_folder(self, evidence: bytes) -> Path:
        parsed = tdx.parse(evidence)
        issuer_cn = parsed.pck_chain[0].issuer.rfc4514_string()
        ca = "processor" if "Processor" in issuer_cn else "platform"
        return self._fetch(cf.fetch_tdx_collateral, fmspc=parsed.pck.fmspc, ca=ca, pcs_base=self.pcs_base,
                           root_crl_url=self.root_crl_url)

    def _snp_folder(self, evidence: bytes) -> Path:
        parsed = snp.parse(evidence)
        product = parsed.cpuid_product
        if product is None:
            raise VerificationFailed(Reason.COLLATERAL_MISSING, "SNP report without CPUID: product unknown")
        if parsed.signing_key == "vlek":
            return self._fetch(cf.fetch_snp_collateral, product=product, signing_key="vlek", kds_base=self.kds_base)
        return self._fetch(cf.fetch_snp_collateral, product=product, chip_id=parsed.chip_id,
                           reported_tcb=decode_tcb(parsed.reported_tcb_raw, product), kds_base=self.kds_base)


__all__ = ["CollateralCache"]
