"""The node's evidence for one challenge: one CPU TEE item plus optional GPU items.

The sources themselves live in conclave.runtime.attestation.collect (configfs-tsm, the SEV and
TDX guest devices, NVIDIA's nvattest, the simulated TEE); this module composes them for
admission: the CPU evidence signs REPORT_DATA, every GPU signs the nonce derived from the same
REPORT_DATA (binding.gpu_nonce_for), so GPU and CPU evidence are tied to one challenge.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, Sequence

from conclave.runtime.attestation import binding, collect
from conclave.runtime.attestation.core import TeeType


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

    def collect(self, report_data: bytes) -> list[EvidenceItemData]:
        with self._lock:
            items = [EvidenceItemData(self._cpu.tee, self._cpu_evidence(report_data))]
            if self._gpus:
                nonce = binding.gpu_nonce_for(report_data)
                items += [EvidenceItemData(TeeType.NVGPU, g.collect(nonce)) for g in self._gpus]
        return items

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
