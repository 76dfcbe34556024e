"""Evidence sources: where a node gets TEE evidence over a REPORT_DATA it chose.

- SimEvidenceSource: the simulated TEE (local mode, tests); stamped simulated, refused by
  production policies.
- ConfigfsTsmSource: Linux configfs-tsm (/sys/kernel/config/tsm/report), the kernel's common
  interface to TDX and SEV-SNP guest evidence inside a CVM.
"""
from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from conclave.runtime.attestation.core import TeeType
from conclave.runtime.errors import ConclaveError

TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")


@dataclass(frozen=True)
class EvidenceItemData:
    tee: TeeType
    data: bytes
    certs: tuple[bytes, ...] = ()
    collateral: bytes = b""


class EvidenceSource(Protocol):
    tee: TeeType

    def collect(self, report_data: bytes) -> list[EvidenceItemData]: ...


class SimEvidenceSource:
    tee = TeeType.SIM

    def __init__(self, attester):  # conclave.runtime.attestation.sim.SimulatedAttester
        self._attester = attester
        self._lock = threading.Lock()

    def collect(self, report_data: bytes) -> list[EvidenceItemData]:
        with self._lock:
            return [EvidenceItemData(TeeType.SIM, self._attester.evidence(report_data))]

    def __repr__(self) -> str:
        return "SimEvidenceSource(<attester>)"


class ConfigfsTsmSource:
    """TDX or SEV-SNP evidence through configfs-tsm (Linux >= 6.7)."""

    def __init__(self, tee: TeeType, root: Path = TSM_REPORT_DIR):
        if tee not in (TeeType.TDX, TeeType.SNP):
            raise ValueError("configfs-tsm provides tdx or snp evidence")
        self.tee = tee
        self.root = root
        self._lock = threading.Lock()
        if not root.is_dir():
            raise ConclaveError("no_tee", f"{root} is missing: not inside a TDX/SEV-SNP guest with configfs-tsm")

    def collect(self, report_data: bytes) -> list[EvidenceItemData]:
        with self._lock:
            entry = self.root / f"conclave-{os.getpid()}-{secrets.token_hex(4)}"
            entry.mkdir()
            try:
                provider = (entry / "provider").read_text().strip()
                (entry / "inblob").write_bytes(report_data)
                data = (entry / "outblob").read_bytes()
            finally:
                entry.rmdir()
        expected = {"tdx_guest": TeeType.TDX, "sev_guest": TeeType.SNP}.get(provider)
        if expected != self.tee:
            raise ConclaveError("tee_mismatch", f"configfs-tsm provider {provider!r} is not {self.tee}")
        # SNP: the VCEK chain comes from --certs / the verifier's cache (auxblob is a GUID table,
        # not DER certificates; not forwarded here).
        return [EvidenceItemData(self.tee, data)]
