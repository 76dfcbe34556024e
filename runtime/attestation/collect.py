"""Evidence collection inside a guest: configfs-tsm, the TDX/SEV guest devices, NVIDIA GPUs, or sim.

Why one protocol: the node agent asks "give me evidence over these 64 bytes" and must not care
where it comes from. Every source implements EvidenceSource.collect(report_data) -> bytes and
says which TEE format the bytes are in (`tee`), so the verifier-side dispatch applies unchanged.

Sources (all I/O lives here; verification never touches devices or the network):
- ConfigfsTsmSource: Linux >= 6.7 configfs-tsm (Documentation/ABI/testing/configfs-tsm):
  mkdir report/<entry>, write inblob, read generation, outblob, auxblob, check generation is
  unchanged (another writer would have changed it), rmdir. The configfs root is a parameter so
  tests run against a fake tree.
- SevGuestDeviceSource: /dev/sev-guest ioctl SNP_GET_REPORT (include/uapi/linux/sev-guest.h).
- TdxGuestDevice: /dev/tdx_guest ioctl TDX_CMD_GET_REPORT0 (include/uapi/linux/tdx-guest.h).
  That yields a TDREPORT (MAC'd, not signed); a remotely verifiable quote needs the quoting
  enclave: configfs-tsm does that in the kernel, otherwise TdxQgsSource talks to the Quote
  Generation Service over vsock (Intel's QGS message protocol, the path libtdx-attest uses).
- NvattestSource: NVIDIA's `nvattest collect-evidence` (subprocess, JSON out).
- SimulatedSource: wraps a sim.SimulatedAttester (local mode, tests).
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from conclave.runtime.attestation.core import TeeType
from conclave.runtime.errors import ConclaveError, ExitCode

REPORT_DATA_LEN = 64
CONFIGFS_TSM_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST_DEVICE = Path("/dev/sev-guest")
TDX_GUEST_DEVICES = (Path("/dev/tdx_guest"), Path("/dev/tdx-guest"))
TSM_PROVIDERS = {"tdx_guest": TeeType.TDX, "sev_guest": TeeType.SNP}
MAX_BLOB = 16 * 1024 * 1024


class CollectionError(ConclaveError):
    """Evidence could not be collected (no TEE, driver error, concurrent use, tool missing)."""

    exit_code = ExitCode.RUNTIME

    def __init__(self, message: str, reason: str = "collection_failed"):
        super().__init__(reason, message)


class EvidenceSource(Protocol):
    tee: TeeType

    def collect(self, report_data: bytes) -> bytes:
        """Evidence binding `report_data` (64 bytes; nvgpu: the 32-byte nonce), in `tee` format."""
        ...


def _check_report_data(report_data: bytes, length: int = REPORT_DATA_LEN) -> bytes:
    if not isinstance(report_data, (bytes, bytearray)) or len(report_data) != length:
        raise ValueError(f"report_data must be {length} bytes")
    return bytes(report_data)


# ------------------------------------------------------------------------------ configfs-tsm

@dataclass(frozen=True)
class TsmReport:
    provider: str
    outblob: bytes
    auxblob: bytes | None    # SNP: the certificate table (VCEK/VLEK, ASK, ARK) when the host supplies it
    generation: int


class ConfigfsTsmSource:
    """configfs-tsm report interface; one transient entry per collection (removed afterwards)."""

    def __init__(self, root: Path = CONFIGFS_TSM_ROOT, *, privlevel: int | None = None,
                 mkdir: Callable[[Path], None] = os.mkdir, rmdir: Callable[[Path], None] = os.rmdir):
        """`mkdir`/`rmdir` are the kernel's side of the interface (configfs creates the attribute
        files on mkdir and drops them on rmdir); tests pass a fake kernel here."""
        self.root = Path(root)
        self.privlevel = privlevel
        self._mkdir = mkdir
        self._rmdir = rmdir
        self._tee: TeeType | None = None

    @staticmethod
    def available(root: Path = CONFIGFS_TSM_ROOT) -> bool:
        return Path(root).is_dir()

    @property
    def tee(self) -> TeeType:
        if self._tee is None:
            raise CollectionError("TEE type unknown until the first collection (read from 'provider')")
        return self._tee

    def collect(self, report_data: bytes) -> bytes:
        return self.collect_report(report_data).outblob

    def collect_report(self, report_data: bytes) -> TsmReport:
        rd = _check_report_data(report_data)
        if not self.root.is_dir():
            raise CollectionError(f"configfs-tsm not available at {self.root} (Linux >= 6.7 with a TSM "
                                  "provider, configfs mounted)", reason="tee_unavailable")
        entry = self.root / f"conclave-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            self._mkdir(entry)
        except OSError as exc:
            raise CollectionError(f"cannot create configfs-tsm entry: {exc.strerror}") from None
        try:
            if self.privlevel is not None:
                (entry / "privlevel").write_text(f"{self.privlevel}\n")
            (entry / "inblob").write_bytes(rd)
            before = self._generation(entry)
            outblob = self._read(entry / "outblob")
            aux_path = entry / "auxblob"
            auxblob = self._read(aux_path) if aux_path.exists() else None
            provider = (entry / "provider").read_text().strip()
            after = self._generation(entry)
            if before != after:
                raise CollectionError("configfs-tsm entry changed while reading (concurrent writer); retry",
                                      reason="collection_conflict")
        except OSError as exc:
            raise CollectionError(f"configfs-tsm report failed: {exc.strerror or exc}") from None
        finally:
            try:
                self._rmdir(entry)
            except OSError:
                pass  # configfs drops stale entries with the process; nothing secret is in them
        tee = TSM_PROVIDERS.get(provider)
        if tee is None:
            raise CollectionError(f"unsupported configfs-tsm provider {provider!r}", reason="tee_unavailable")
        if not outblob:
            raise CollectionError("configfs-tsm returned an empty report")
        self._tee = tee
        return TsmReport(provider=provider, outblob=outblob, auxblob=auxblob or None, generation=after)

    @staticmethod
    def _generation(entry: Path) -> int:
        text = (entry / "generation").read_text().strip()
        try:
            return int(text)
        except ValueError:
            raise CollectionError(f"configfs-tsm generation is not a number: {text!r}") from None

    @staticmethod
    def _read(path: Path) -> bytes:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BLOB + 1)
        if len(data) > MAX_BLOB:
            raise CollectionError(f"{path.name} larger than {MAX_BLOB} bytes")
        return data


# ------------------------------------------------------------------------------ ioctl helpers

_IOC_WRITE, _IOC_READ = 1, 2


def _iowr(kind: str, nr: int, size: int) -> int:
    """Linux _IOWR(type, nr, size) for x86-64/arm64 (asm-generic/ioctl.h)."""
    return ((_IOC_READ | _IOC_WRITE) << 30) | (size << 16) | (ord(kind) << 8) | nr


# struct snp_guest_request_ioctl { __u8 msg_version; __u64 req_data; __u64 resp_data; __u64 exitinfo2; }
SNP_GUEST_REQUEST_FMT = "=B7xQQQ"
SNP_GET_REPORT = _iowr("S", 0x0, struct.calcsize(SNP_GUEST_REQUEST_FMT))        # 0xc0205300
# struct snp_report_req { __u8 user_data[64]; __u32 vmpl; __u8 rsvd[28]; }
SNP_REPORT_REQ_FMT = "=64sI28x"
SNP_REPORT_RESP_LEN = 4000
SNP_REPORT_LEN = 1184
# struct tdx_report_req { __u8 reportdata[64]; __u8 tdreport[1024]; }
TDX_REPORT_LEN = 1024
TDX_CMD_GET_REPORT0 = _iowr("T", 1, REPORT_DATA_LEN + TDX_REPORT_LEN)          # 0xc4405401


def snp_report_from_response(resp: bytes) -> bytes:
    """MSG_REPORT_RSP (SEV-SNP ABI table 23): status u32, report_size u32, 24 reserved, report."""
    if len(resp) < 0x20:
        raise CollectionError("SNP report response too short")
    status, size = struct.unpack_from("<II", resp, 0)
    if status != 0:
        raise CollectionError(f"SNP firmware refused the report request (status 0x{status:x})")
    if not SNP_REPORT_LEN <= size <= len(resp) - 0x20:
        raise CollectionError(f"SNP report size {size} is out of range")
    return bytes(resp[0x20:0x20 + size])


class SevGuestDeviceSource:
    """/dev/sev-guest SNP_GET_REPORT. No certificates come with it: fetch the VCEK from AMD KDS."""

    tee = TeeType.SNP

    def __init__(self, device: Path = SEV_GUEST_DEVICE, *, vmpl: int = 0, msg_version: int = 1,
                 ioctl: Callable[[int, int, bytearray], int] | None = None):
        self.device = Path(device)
        self.vmpl = vmpl
        self.msg_version = msg_version
        self._ioctl = ioctl or (lambda fd, req, buf: fcntl.ioctl(fd, req, buf, True))

    def collect(self, report_data: bytes) -> bytes:
        rd = _check_report_data(report_data)
        req = ctypes.create_string_buffer(struct.pack(SNP_REPORT_REQ_FMT, rd, self.vmpl),
                                          struct.calcsize(SNP_REPORT_REQ_FMT))
        resp = ctypes.create_string_buffer(SNP_REPORT_RESP_LEN)
        arg = bytearray(struct.pack(SNP_GUEST_REQUEST_FMT, self.msg_version, ctypes.addressof(req),
                                    ctypes.addressof(resp), 0))
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as exc:
            raise CollectionError(f"cannot open {self.device}: {exc.strerror}", reason="tee_unavailable") from None
        try:
            self._ioctl(fd, SNP_GET_REPORT, arg)
        except OSError as exc:
            exitinfo2 = struct.unpack(SNP_GUEST_REQUEST_FMT, bytes(arg))[3]
            raise CollectionError(f"SNP_GET_REPORT failed: {exc.strerror} (fw/vmm error 0x{exitinfo2:x})") \
                from None
        finally:
            os.close(fd)
        return snp_report_from_response(resp.raw)


class TdxGuestDevice:
    """/dev/tdx_guest TDX_CMD_GET_REPORT0: the TDREPORT that a quoting service turns into a quote."""

    def __init__(self, device: Path | None = None,
                 ioctl: Callable[[int, int, bytearray], int] | None = None):
        self.device = device or next((d for d in TDX_GUEST_DEVICES if d.exists()), TDX_GUEST_DEVICES[0])
        self._ioctl = ioctl or (lambda fd, req, buf: fcntl.ioctl(fd, req, buf, True))

    def tdreport(self, report_data: bytes) -> bytes:
        rd = _check_report_data(report_data)
        buf = bytearray(rd + bytes(TDX_REPORT_LEN))
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as exc:
            raise CollectionError(f"cannot open {self.device}: {exc.strerror}", reason="tee_unavailable") from None
        try:
            self._ioctl(fd, TDX_CMD_GET_REPORT0, buf)
        except OSError as exc:
            raise CollectionError(f"TDX_CMD_GET_REPORT0 failed: {exc.strerror}") from None
        finally:
            os.close(fd)
        return bytes(buf[REPORT_DATA_LEN:])


# Intel QGS message protocol (qgs_msg_lib): 4-byte big-endian length, then
# header {u16 major=1, u16 minor=0, u32 type, u32 size (whole message), u32 error_code}.
QGS_PORT = 4050
QGS_GET_QUOTE_REQ, QGS_GET_QUOTE_RESP = 0, 1
_QGS_HEADER = "<HHIII"


def qgs_quote_request(tdreport: bytes) -> bytes:
    """GET_QUOTE_REQ {header, u32 report_size, u32 id_list_size=0, report}, length-prefixed."""
    if len(tdreport) != TDX_REPORT_LEN:
        raise ValueError("TDREPORT must be 1024 bytes")
    size = struct.calcsize(_QGS_HEADER) + 8 + len(tdreport)
    msg = struct.pack(_QGS_HEADER, 1, 0, QGS_GET_QUOTE_REQ, size, 0) + struct.pack("<II", len(tdreport), 0) \
        + tdreport
    return struct.pack(">I", len(msg)) + msg


def qgs_quote_from_response(msg: bytes) -> bytes:
    """GET_QUOTE_RESP {header, u32 selected_id_size, u32 quote_size, id, quote} -> quote."""
    hdr = struct.calcsize(_QGS_HEADER)
    if len(msg) < hdr + 8:
        raise CollectionError("QGS response too short")
    _major, _minor, kind, size, error = struct.unpack_from(_QGS_HEADER, msg, 0)
    if kind != QGS_GET_QUOTE_RESP or size != len(msg):
        raise CollectionError("QGS response header is inconsistent")
    if error != 0:
        raise CollectionError(f"QGS could not produce a quote (error 0x{error:x})")
    id_size, quote_size = struct.unpack_from("<II", msg, hdr)
    start = hdr + 8 + id_size
    if quote_size == 0 or start + quote_size > len(msg):
        raise CollectionError("QGS quote size out of range")
    return bytes(msg[start:start + quote_size])


def _vsock_connect(timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)  # type: ignore[attr-defined]
    sock.settimeout(timeout)
    sock.connect((2, QGS_PORT))  # CID 2 = the host
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise CollectionError("QGS closed the connection early")
        out += chunk
    return bytes(out)


class TdxQgsSource:
    """TDX quote without configfs-tsm: TDREPORT from /dev/tdx_guest, quote from QGS over vsock."""

    tee = TeeType.TDX

    def __init__(self, device: TdxGuestDevice | None = None, *,
                 connect: Callable[[float], socket.socket] = _vsock_connect, timeout: float = 30.0):
        self.device = device or TdxGuestDevice()
        self._connect = connect
        self.timeout = timeout

    def collect(self, report_data: bytes) -> bytes:
        request = qgs_quote_request(self.device.tdreport(report_data))
        try:
            with self._connect(self.timeout) as sock:
                sock.sendall(request)
                (length,) = struct.unpack(">I", _recv_exact(sock, 4))
                if length > MAX_BLOB:
                    raise CollectionError("QGS response too large")
                return qgs_quote_from_response(_recv_exact(sock, length))
        except OSError as exc:
            raise CollectionError(f"cannot reach the TDX quote generation service: {exc}",
                                  reason="tee_unavailable") from None


# ------------------------------------------------------------------------------ NVIDIA GPUs

class NvattestSource:
    """NVIDIA GPU evidence through the vendor CLI (`nvattest collect-evidence`).

    Output: the SDK evidence list as JSON (what nvgpu.parse accepts). The nonce is the 32-byte
    value from binding.gpu_nonce_for(report_data).
    """

    tee = TeeType.NVGPU

    def __init__(self, executable: str = "nvattest", *, device: str = "gpu", timeout: float = 120.0,
                 extra_args: Sequence[str] = ()):
        self.executable = executable
        self.device = device
        self.timeout = timeout
        self.extra_args = tuple(extra_args)

    def collect(self, report_data: bytes) -> bytes:
        nonce = _check_report_data(report_data, 32)
        exe = shutil.which(self.executable)
        if exe is None:
            raise CollectionError(f"NVIDIA attestation CLI '{self.executable}' not found on PATH "
                                  "(install NVIDIA's attestation SDK CLI on GPU nodes)", reason="tool_missing")
        argv = [exe, "--format", "json", "collect-evidence", "--device", self.device, "--nonce", nonce.hex(),
                *self.extra_args]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise CollectionError(f"nvattest did not finish within {self.timeout:.0f}s") from None
        try:
            doc = json.loads(proc.stdout)
        except ValueError:
            doc = None
        if proc.returncode != 0 or not isinstance(doc, dict):
            detail = proc.stderr.decode(errors="replace").strip()[-300:]
            raise CollectionError(f"nvattest collect-evidence failed (exit {proc.returncode}): {detail}")
        if doc.get("result_code", 0) != 0:
            raise CollectionError(f"nvattest: {doc.get('result_message', 'error')} "
                                  f"(code {doc.get('result_code')})")
        evidences = doc.get("evidences")
        if not isinstance(evidences, list) or not evidences:
            raise CollectionError("nvattest returned no evidence")
        for item in evidences:
            if not isinstance(item, dict) or str(item.get("nonce", "")).lower() != nonce.hex():
                raise CollectionError("nvattest evidence does not carry the requested nonce")
        return json.dumps(evidences, sort_keys=True).encode()


# ------------------------------------------------------------------------------ simulated

class SimulatedSource:
    """Local mode / tests: evidence from a simulated attester (marked simulated; refused by production)."""

    tee = TeeType.SIM

    def __init__(self, attester) -> None:
        from conclave.runtime.attestation.sim import SimulatedAttester
        if not isinstance(attester, SimulatedAttester):
            raise TypeError("SimulatedSource needs a sim.SimulatedAttester")
        self._attester = attester

    def __repr__(self) -> str:
        return f"SimulatedSource(node={self._attester.node!r})"

    def collect(self, report_data: bytes) -> bytes:
        return self._attester.evidence(_check_report_data(report_data))


# ------------------------------------------------------------------------------ selection

def detect_cpu_source(*, configfs_root: Path = CONFIGFS_TSM_ROOT,
                      sev_device: Path = SEV_GUEST_DEVICE,
                      tdx_devices: Sequence[Path] = TDX_GUEST_DEVICES) -> EvidenceSource:
    """The best CPU TEE source on this machine: configfs-tsm, then the guest devices."""
    if ConfigfsTsmSource.available(configfs_root):
        return ConfigfsTsmSource(configfs_root)
    if Path(sev_device).exists():
        return SevGuestDeviceSource(sev_device)
    for dev in tdx_devices:
        if Path(dev).exists():
            return TdxQgsSource(TdxGuestDevice(Path(dev)))
    raise CollectionError("no TEE evidence source found (no configfs-tsm, /dev/sev-guest or /dev/tdx_guest); "
                          "use the simulated TEE for local mode", reason="tee_unavailable")


__all__ = ["EvidenceSource", "CollectionError", "ConfigfsTsmSource", "TsmReport", "SevGuestDeviceSource",
           "TdxGuestDevice", "TdxQgsSource", "NvattestSource", "SimulatedSource", "detect_cpu_source",
           "SNP_GET_REPORT", "TDX_CMD_GET_REPORT0"]
