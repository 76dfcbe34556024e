"""Emulated TEE evidence collected through configfs-tsm's layout, read by the real reader.

Why: a node on emulated hardware should collect evidence the way a real CVM does, so the
collection path (collect.ConfigfsTsmSource: mkdir an entry, write inblob, read generation,
outblob, auxblob, provider, check generation, rmdir) runs unchanged. EmulatedTsmKernel plays
the kernel's side of Documentation/ABI/testing/configfs-tsm on an ordinary directory:
- mkdir creates the attribute files (provider, generation, privlevel, inblob) and auxblob
  (SNP: the certificate table; TDX: none, as the tdx_guest provider has none);
- outblob is a FIFO: reading it produces the report over whatever inblob holds at that moment,
  as configfs generates it on read, served by a short-lived thread.
Where it differs from the kernel: the root is a plain directory (not configfs under
/sys/kernel/config/tsm/report, which needs a TSM provider driver this machine lacks), so
attribute writes are not validated by the kernel, `generation` does not count writes (it reads
1, the one write the reader makes), and a stale entry is removed by rmdir only.

EmulatedTdxSource / EmulatedSnpSource are the evidence sources a node uses (like
collect.ConfigfsTsmSource): `tee`, `collect(report_data) -> bytes` and `collect_report`,
which also returns the auxblob (overlay.evidence carries it with the evidence).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from conclave.runtime.attestation import collect
from conclave.runtime.attestation.core import TeeType
from conclave.runtime.attestation.emulated.snp_issuer import EmulatedSnpHost
from conclave.runtime.attestation.emulated.tdx_issuer import EmulatedTdxHost

READ_WAIT_S = 10.0


class EmulatedTsmKernel:
    """The kernel side of configfs-tsm for one provider (tdx_guest or sev_guest)."""

    def __init__(self, provider: str, generate: Callable[[bytes], bytes],
                 auxblob: Callable[[], bytes] | None = None):
        if provider not in collect.TSM_PROVIDERS:
            raise ValueError(f"unknown configfs-tsm provider {provider!r}")
        self.provider = provider
        self._generate = generate
        self._auxblob = auxblob

    def mkdir(self, entry: Path) -> None:
        os.mkdir(entry, 0o700)
        (entry / "provider").write_text(self.provider + "\n")
        # configfs counts inblob writes; the reader writes inblob once, so it reads 1 throughout
        (entry / "generation").write_text("1\n")
        (entry / "privlevel").write_text("0\n")
        (entry / "inblob").write_bytes(b"")
        if self._auxblob is not None:
            (entry / "auxblob").write_bytes(self._auxblob())
        os.mkfifo(entry / "outblob", 0o600)
        threading.Thread(target=self._serve_outblob, args=(entry,), daemon=True,
                         name="emulated-tsm-outblob").start()

    def _serve_outblob(self, entry: Path) -> None:
        deadline = time.monotonic() + READ_WAIT_S
        fd = None
        while time.monotonic() < deadline:  # bounded: gives up when nobody reads
            try:
                fd = os.open(entry / "outblob", os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                time.sleep(0.002)
        if fd is None:
            return
        try:
            inblob = (entry / "inblob").read_bytes()
            blob = self._generate(inblob) if len(inblob) == collect.REPORT_DATA_LEN else b""
            os.set_blocking(fd, True)
            os.write(fd, blob)
        except OSError:
            pass
        finally:
            os.close(fd)

    def rmdir(self, entry: Path) -> None:
        shutil.rmtree(entry, ignore_errors=True)


class _EmulatedConfigfsSource:
    tee: TeeType

    def __init__(self, kernel: EmulatedTsmKernel, root: Path | None):
        self._owned_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="conclave-tsm-"))
        self._reader = collect.ConfigfsTsmSource(self.root, mkdir=kernel.mkdir, rmdir=kernel.rmdir)

    def collect_report(self, report_data: bytes) -> collect.TsmReport:
        report = self._reader.collect_report(report_data)
        if self._reader.tee != self.tee:
            raise collect.CollectionError(f"configfs-tsm provider {report.provider} is not {self.tee}")
        return report

    def collect(self, report_data: bytes) -> bytes:
        return self.collect_report(report_data).outblob

    def close(self) -> None:
        if self._owned_root:
            shutil.rmtree(self.root, ignore_errors=True)


class EmulatedTdxSource(_EmulatedConfigfsSource):
    """A TD on an emulated TDX host: quotes through configfs-tsm (provider tdx_guest, no auxblob)."""

    tee = TeeType.TDX

    def __init__(self, host: EmulatedTdxHost, *, version: int = 4, root: Path | None = None):
        self.host = host
        super().__init__(EmulatedTsmKernel("tdx_guest", lambda rd: host.quote(rd, version=version)), root)

    def __repr__(self) -> str:
        return f"EmulatedTdxSource(host={self.host.name!r})"


class EmulatedSnpSource(_EmulatedConfigfsSource):
    """A guest on an emulated SNP host: reports through configfs-tsm (provider sev_guest), with
    the VCEK/ASK/ARK certificate table as auxblob."""

    tee = TeeType.SNP

    def __init__(self, host: EmulatedSnpHost, *, root: Path | None = None):
        self.host = host
        super().__init__(EmulatedTsmKernel("sev_guest", host.report, host.auxblob), root)

    def __repr__(self) -> str:
        return f"EmulatedSnpSource(host={self.host.name!r})"


__all__ = ["EmulatedTsmKernel", "EmulatedTdxSource", "EmulatedSnpSource"]
