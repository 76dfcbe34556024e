"""The node's evidence for one challenge: one CPU TEE item plus optional GPU items.

The sources themselves live in conclave.runtime.attestation.collect (configfs-tsm, the SEV and
TDX guest devices, NVIDIA's nvattest, the simulated TEE); this module composes them for
admission: the CPU evidence signs REPORT_DATA, every GPU signs the nonce derived from the same
REPORT_DATA (binding.gpu_nonce_for), so GPU and CPU evidence are tied to one challenge.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from conclave.runtime.attestation import binding, collateral_share, collect
from conclave.runtime.attestation.core import TeeType

log = logging.getLogger("conclave.overlay.evidence")

@dataclass(frozen=True)
class EvidenceItemData:
    tee: TeeType
    data: bytes
    certs: tuple[bytes, ...] = ()
    collateral: bytes = b""


class EvidenceSource(Protocol):
    tee: TeeType

    def collect(self, report_data: bytes) -> list[EvidenceItemData]: ...


class NodeEvidenceSource:
    """One CPU source (tdx/snp/sim) and any GPU sources; collection is serialized (TEE devices
    and configfs-tsm entries are not meant for concurrent use)."""

    def __init__(self, cpu: collect.EvidenceSource, gpus: Sequence[collect.EvidenceSource] = ()):
        if cpu.tee not in (TeeType.TDX, TeeType.SNP, TeeType.SIM):
            raise ValueError("the first evidence source must be a CPU TEE")
        if any(g.tee != TeeType.NVGPU for g in gpus):
            raise ValueError("extra evidence sources must be GPUs")
        self.tee = cpu.tee
        self._cpu = cpu
        self._gpus = tuple(gpus)
        self._lock = threading.Lock()
        self._collateral_for: Callable[[TeeType, bytes], object | None] | None = None
        self._shared: tuple[object, bytes] | None = None   # (collateral object, its packed form)

    def share_collateral(self, collateral_for: Callable[[TeeType, bytes], object | None] | None) -> None:
        """Ship this node's own vendor-signed collateral with its CPU evidence: `collateral_for`
        is the node verifier's CollateralCache.collateral_for (which serves its cached copy while
        the vendor is unreachable). Peers use it only where it verifies and is fresher than
        their own (collateral_merge); see collateral_share."""
        self._collateral_for = collateral_for

    def collect(self, report_data: bytes) -> list[EvidenceItemData]:
        with self._lock:
            data = self._cpu_evidence(report_data)
            items = [EvidenceItemData(self._cpu.tee, data, collateral=self._own_collateral(data))]
            if self._gpus:
                nonce = binding.gpu_nonce_for(report_data)
                # a GPU source may present nothing (an emulated host switched to "no GPU"): no item
                gathered = [g.collect(nonce) for g in self._gpus]
                items += [EvidenceItemData(TeeType.NVGPU, data) for data in gathered if data is not None]
        return items

    def _own_collateral(self, data: bytes) -> bytes:
        """The packed collateral for our own evidence; b"" when none is held (never fails a
        collection: a peer with collateral of its own does not need ours)."""
        if self._collateral_for is None or self.tee not in (TeeType.TDX, TeeType.SNP):
            return b""
        try:
            collateral = self._collateral_for(self.tee, data)
        except Exception as exc:   # noqa: BLE001 - best effort, the verifier side decides
            log.warning("own collateral not shared: %s", type(exc).__name__)
            return b""
        if collateral is None:
            return b""
        if self._shared is not None and self._shared[0] is collateral:
            return self._shared[1]
        blob = collateral_share.to_bytes(self.tee, collateral)
        self._shared = (collateral, blob)
        return blob

    def _cpu_evidence(self, report_data: bytes) -> bytes:
        """The CPU evidence bytes. A configfs-tsm source also yields `auxblob`; for SNP that is
        the certificate table (VCEK/VLEK, ASK, ARK), carried as the extended report it is: the
        report followed by the table, which snp.parse reads as embedded certificates."""
        collect_report = getattr(self._cpu, "collect_report", None)
        if collect_report is None:
            return self._cpu.collect(report_data)
        report = collect_report(report_data)
        if self._cpu.tee == TeeType.SNP and report.auxblob:
            return report.outblob + report.auxblob
        return report.outblob

    def __repr__(self) -> str:
        return f"NodeEvidenceSource(cpu={self._cpu.tee}, gpus={len(self._gpus)})"


def SimEvidenceSource(attester) -> NodeEvidenceSource:
    """Local mode / tests: the simulated TEE (stamped simulated; refused by production policies)."""
    return NodeEvidenceSource(collect.SimulatedSource(attester))
