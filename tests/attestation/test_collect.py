"""Evidence collection against fakes at the kernel/tool seams: configfs-tsm tree, ioctls, QGS, nvattest."""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import stat
import struct
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conclave.runtime.attestation import collect, nvgpu, sim
from conclave.runtime.attestation.core import TeeType

from attest_helpers import NOW

RD = bytes(range(64))


class FakeTsmKernel:
    """The kernel side of configfs-tsm: mkdir creates the attribute files; reading outblob
    produces the report over whatever inblob holds (outblob is a FIFO served by a thread)."""

    def __init__(self, provider="tdx_guest", auxblob: bytes | None = None, bump_generation=False,
                 outblob_prefix=b"QUOTE:"):
        self.provider = provider
        self.auxblob = auxblob
        self.bump_generation = bump_generation
        self.prefix = outblob_prefix
        self.created: list[Path] = []
        self.removed: list[Path] = []
        self.inblobs: list[bytes] = []
        self.threads: list[threading.Thread] = []

    def mkdir(self, entry: Path) -> None:
        os.mkdir(entry)
        self.created.append(entry)
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "generation").write_text("1\n")
        if self.auxblob is not None:
            (entry / "auxblob").write_bytes(self.auxblob)
        os.mkfifo(entry / "outblob")
        t = threading.Thread(target=self._serve_outblob, args=(entry,), daemon=True)
        t.start()
        self.threads.append(t)

    def _serve_outblob(self, entry: Path) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded: gives up if nobody reads
            try:
                fd = os.open(entry / "outblob", os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                time.sleep(0.002)
        else:
            return
        inblob = (entry / "inblob").read_bytes()
        self.inblobs.append(inblob)
        if self.bump_generation:
            (entry / "generation").write_text("2\n")
        try:
            os.set_blocking(fd, True)
            os.write(fd, self.prefix + inblob if self.prefix else b"")
        finally:
            os.close(fd)

    def rmdir(self, entry: Path) -> None:
        self.removed.append(entry)
        shutil.rmtree(entry)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=10)


def _source(tmp_path: Path, kernel: FakeTsmKernel, **kw) -> collect.ConfigfsTsmSource:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    return collect.ConfigfsTsmSource(root, mkdir=kernel.mkdir, rmdir=kernel.rmdir, **kw)


def test_configfs_tsm_tdx(tmp_path):
    kernel = FakeTsmKernel()
    src = _source(tmp_path, kernel)
    assert src.collect(RD) == b"QUOTE:" + RD
    kernel.join()
    assert src.tee == TeeType.TDX
    assert kernel.inblobs == [RD]
    assert kernel.removed == kernel.created and not any(src.root.iterdir())


def test_configfs_tsm_snp_with_auxblob_and_privlevel(tmp_path):
    kernel = FakeTsmKernel(provider="sev_guest", auxblob=b"CERT-TABLE")
    src = _source(tmp_path, kernel, privlevel=2)
    captured = {}
    real_rmdir = kernel.rmdir

    def rmdir(entry):
        captured["privlevel"] = (entry / "privlevel").read_text()
        real_rmdir(entry)
    src._rmdir = rmdir
    report = src.collect_report(RD)
    kernel.join()
    assert (report.provider, report.outblob, report.auxblob) == ("sev_guest", b"QUOTE:" + RD, b"CERT-TABLE")
    assert src.tee == TeeType.SNP and captured["privlevel"] == "2\n"


def test_configfs_tsm_detects_concurrent_writer(tmp_path):
    kernel = FakeTsmKernel(bump_generation=True)
    src = _source(tmp_path, kernel)
    with pytest.raises(collect.CollectionError) as info:
        src.collect(RD)
    kernel.join()
    assert info.value.reason == "collection_conflict"
    assert kernel.removed == kernel.created  # cleaned up on failure too


@pytest.mark.parametrize("kernel,reason", [(FakeTsmKernel(provider="arm_cca_guest"), "tee_unavailable"),
                                           (FakeTsmKernel(outblob_prefix=None), "collection_failed")])
def test_configfs_tsm_bad_outputs(tmp_path, kernel, reason):
    src = _source(tmp_path, kernel)
    with pytest.raises(collect.CollectionError) as info:
        src.collect(RD)
    kernel.join()
    assert info.value.reason == reason and kernel.removed == kernel.created


def test_configfs_tsm_unavailable_and_bad_input(tmp_path):
    src = collect.ConfigfsTsmSource(tmp_path / "absent")
    with pytest.raises(collect.CollectionError) as info:
        src.collect(RD)
    assert info.value.reason == "tee_unavailable"
    with pytest.raises(ValueError):
        src.collect(RD[:32])
    with pytest.raises(collect.CollectionError):
        _ = src.tee


# ------------------------------------------------------------------------------ ioctls

def test_ioctl_numbers_match_linux_uapi():
    assert collect.SNP_GET_REPORT == 0xC0205300
    assert collect.TDX_CMD_GET_REPORT0 == 0xC4405401
    assert struct.calcsize(collect.SNP_GUEST_REQUEST_FMT) == 32
    assert struct.calcsize(collect.SNP_REPORT_REQ_FMT) == 96


def _fake_snp_ioctl(status=0, size=1184, fail=False):
    seen = {}

    def ioctl(fd, request, arg):
        assert request == collect.SNP_GET_REPORT
        version, req_addr, resp_addr, _ = struct.unpack(collect.SNP_GUEST_REQUEST_FMT, bytes(arg))
        user_data, vmpl = struct.unpack(collect.SNP_REPORT_REQ_FMT, ctypes.string_at(req_addr, 96))
        seen.update(version=version, user_data=user_data, vmpl=vmpl)
        if fail:
            arg[24:32] = struct.pack("<Q", 0x16)
            raise OSError(5, "Input/output error")
        report = bytearray(1184)
        report[0x50:0x90] = user_data  # REPORT_DATA lives at 0x50 in the SNP report
        resp = struct.pack("<II", status, size) + bytes(24) + bytes(report)
        ctypes.memmove(resp_addr, resp, len(resp))
        return 0
    return ioctl, seen


def test_sev_guest_device(tmp_path):
    dev = tmp_path / "sev-guest"
    dev.write_bytes(b"")
    ioctl, seen = _fake_snp_ioctl()
    report = collect.SevGuestDeviceSource(dev, vmpl=1, ioctl=ioctl).collect(RD)
    assert len(report) == 1184 and report[0x50:0x90] == RD
    assert seen == {"version": 1, "user_data": RD, "vmpl": 1}


@pytest.mark.parametrize("kwargs", [dict(status=0x16), dict(size=100), dict(size=5000), dict(fail=True)])
def test_sev_guest_device_errors(tmp_path, kwargs):
    dev = tmp_path / "sev-guest"
    dev.write_bytes(b"")
    ioctl, _ = _fake_snp_ioctl(**kwargs)
    with pytest.raises(collect.CollectionError):
        collect.SevGuestDeviceSource(dev, ioctl=ioctl).collect(RD)


def test_missing_devices(tmp_path):
    with pytest.raises(collect.CollectionError) as info:
        collect.SevGuestDeviceSource(tmp_path / "none").collect(RD)
    assert info.value.reason == "tee_unavailable"
    with pytest.raises(collect.CollectionError):
        collect.TdxGuestDevice(tmp_path / "none").tdreport(RD)


def _fake_tdx_device(tmp_path):
    dev = tmp_path / "tdx_guest"
    dev.write_bytes(b"")

    def ioctl(fd, request, buf):
        assert request == collect.TDX_CMD_GET_REPORT0 and len(buf) == 64 + 1024
        buf[64:] = b"R" * 960 + bytes(buf[:64])  # fake TDREPORT ends with the REPORTDATA
        return 0
    return collect.TdxGuestDevice(dev, ioctl=ioctl)


def test_tdx_quote_via_qgs(tmp_path):
    device = _fake_tdx_device(tmp_path)
    server_sock, client_sock = socket.socketpair()
    quote = b"\x04\x00\x02\x00" + b"Q" * 600
    received = {}

    def qgs():
        with server_sock:
            (length,) = struct.unpack(">I", server_sock.recv(4))
            msg = b""
            while len(msg) < length:
                msg += server_sock.recv(length - len(msg))
            received["msg"] = msg
            body = struct.pack("<II", 0, len(quote)) + quote
            hdr = struct.pack("<HHIII", 1, 0, 1, 16 + len(body), 0)
            server_sock.sendall(struct.pack(">I", 16 + len(body)) + hdr + body)
    t = threading.Thread(target=qgs, daemon=True)
    t.start()
    src = collect.TdxQgsSource(device, connect=lambda timeout: client_sock)
    assert src.collect(RD) == quote and src.tee == TeeType.TDX
    t.join(timeout=10)
    major, minor, kind, size, err = struct.unpack_from("<HHIII", received["msg"])
    assert (major, kind, size, err) == (1, 0, len(received["msg"]), 0)
    assert struct.unpack_from("<II", received["msg"], 16) == (1024, 0)
    assert received["msg"][24:].endswith(RD)


@pytest.mark.parametrize("msg", [
    b"short",
    struct.pack("<HHIII", 1, 0, 0, 24, 0) + struct.pack("<II", 0, 0),          # wrong type
    struct.pack("<HHIII", 1, 0, 1, 24, 7) + struct.pack("<II", 0, 0),          # QGS error
    struct.pack("<HHIII", 1, 0, 1, 24, 0) + struct.pack("<II", 0, 99),         # size out of range
    struct.pack("<HHIII", 1, 0, 1, 99, 0) + struct.pack("<II", 0, 0),          # header size mismatch
])
def test_qgs_bad_responses(msg):
    with pytest.raises(collect.CollectionError):
        collect.qgs_quote_from_response(msg)


def test_qgs_unreachable(tmp_path):
    def refuse(timeout):
        raise ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(collect.CollectionError) as info:
        collect.TdxQgsSource(_fake_tdx_device(tmp_path), connect=refuse).collect(RD)
    assert info.value.reason == "tee_unavailable"


# ------------------------------------------------------------------------------ nvattest

def _fake_nvattest(tmp_path: Path, stdout: str, code: int = 0) -> str:
    out = tmp_path / "out.json"
    out.write_text(stdout)
    script = tmp_path / "nvattest"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(out)!r}).read())\n"
                      f"sys.stderr.write(' '.join(sys.argv[1:]))\nsys.exit({code})\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_nvattest_real_evidence_round_trip(tmp_path, vectors_dir):
    """nvattest's JSON (here replaying the real 8xH100 evidence) -> nvgpu.parse/verify."""
    evidences = json.loads((vectors_dir / "nvgpu/nvtrust-ppcie-8xh100/gpu_evidence.json").read_text())
    nonce = bytes.fromhex(evidences[0]["nonce"])
    exe = _fake_nvattest(tmp_path, json.dumps({"evidences": evidences, "result_code": 0,
                                               "result_message": "Ok"}))
    data = collect.NvattestSource(exe).collect(nonce)
    verified = nvgpu.verify(nvgpu.parse(data), at=NOW, nonce=nonce)
    assert verified.report_data == nonce


def test_nvattest_errors(tmp_path):
    nonce = b"\x11" * 32
    with pytest.raises(collect.CollectionError) as info:
        collect.NvattestSource(str(tmp_path / "no-such-nvattest")).collect(nonce)
    assert info.value.reason == "tool_missing"
    cases = [
        (json.dumps({"evidences": [], "result_code": 0}), 0),
        (json.dumps({"evidences": [{"nonce": "00" * 32}], "result_code": 0}), 0),   # wrong nonce
        (json.dumps({"result_code": 3, "result_message": "NVML error"}), 0),
        ("not json", 0),
        (json.dumps({"evidences": [{"nonce": nonce.hex()}]}), 2),
    ]
    for i, (stdout, code) in enumerate(cases):
        sub = tmp_path / str(i)
        sub.mkdir()
        with pytest.raises(collect.CollectionError):
            collect.NvattestSource(_fake_nvattest(sub, stdout, code)).collect(nonce)
    with pytest.raises(ValueError):
        collect.NvattestSource("nvattest").collect(b"\x00" * 64)


# ------------------------------------------------------------------------------ sim and selection

def test_simulated_source():
    now = datetime.now(timezone.utc)  # SimulatedSource stamps evidence with the real clock
    root = sim.SimulatedRoot.generate("collect-test", now=now)
    src = collect.SimulatedSource(root.issue_attester("n", measurement=bytes(48), now=now))
    verified = sim.verify(sim.parse(src.collect(RD)), at=now + timedelta(seconds=5),
                          trusted_roots=[root.certificate])
    assert verified.report_data == RD and src.tee == TeeType.SIM
    with pytest.raises(TypeError):
        collect.SimulatedSource(object())


def test_detect_cpu_source(tmp_path):
    with pytest.raises(collect.CollectionError) as info:
        collect.detect_cpu_source(configfs_root=tmp_path / "no-tsm", sev_device=tmp_path / "no-sev",
                                  tdx_devices=[tmp_path / "no-tdx"])
    assert info.value.reason == "tee_unavailable"
    (tmp_path / "tdx_guest").write_bytes(b"")
    assert isinstance(collect.detect_cpu_source(configfs_root=tmp_path / "no-tsm", sev_device=tmp_path / "x",
                                                tdx_devices=[tmp_path / "tdx_guest"]), collect.TdxQgsSource)
    (tmp_path / "sev-guest").write_bytes(b"")
    assert isinstance(collect.detect_cpu_source(configfs_root=tmp_path / "no-tsm",
                                                sev_device=tmp_path / "sev-guest"), collect.SevGuestDeviceSource)
    (tmp_path / "tsm").mkdir()
    assert isinstance(collect.detect_cpu_source(configfs_root=tmp_path / "tsm"), collect.ConfigfsTsmSource)
