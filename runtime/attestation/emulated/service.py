"""One emulated vendor service as its own process: the Intel PCS, the AMD KDS or NVIDIA's services
(RIM service + OCSP responder for the emulated H100s) of one local cluster.

    python -m conclave.runtime.attestation.emulated.service pcs|kds --host IP --port N --admin-socket PATH
    (the vendor state, emulated/identity.vendor_secret_bytes, on stdin)
    python -m conclave.runtime.attestation.emulated.service nvidia --host IP --port N --ocsp-port M ...
    (emulated/nvgpu_device.GpuAuthority.service_state on stdin: the RIM service answers GET /v1/rim/ID
    on --port, the OCSP responder on --ocsp-port)

Why a process of its own: the vendor is not part of any node; nodes reach it over the underlay
like they would reach api.trustedservices.intel.com or kdsintf.amd.com, and a test can make it
revoke, recover or go silent while the cluster runs. Vendor routes answer on --host:--port (see
pcs_server / kds_server). The admin controls are on a 0600 Unix socket (root's filesystem, out
of the nodes' reach over the network): one JSON request per connection, one JSON reply:
  {"cmd": "status"}                         -> {"ok", "down", "revoked", "recoveries", "requests"}
  {"cmd": "revoke" | "unrevoke", "host": NAME}
  {"cmd": "tcb_recovery" | "tcb_restore"}   (PCS only; KDS answers reason "unsupported")
  {"cmd": "down" | "up"}                    (nvidia: both the RIM service and the OCSP responder)

Why the KDS has no TCB recovery: as at AMD, there is no vendor-published TCB status for SNP. After a
security bulletin the fixed firmware reports higher SPLs, the KDS keeps issuing VCEKs for every TCB
(old ones too), and verifiers raise their minimum TCB: the SNP recovery is the signed policy's
`snp.min_tcb` moving above a host's REPORTED_TCB (refused `svn_too_low`;
tests/confidential/test_snp_tcb_recovery.py). Intel instead publishes new TCB info in which the
host's TCB level is OutOfDate (tcb_recovery here).

Replies to bad requests carry a stable `reason`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import socketserver
import sys
import threading
from pathlib import Path

MAX_REQUEST = 4096


class NvidiaServices:
    """NVIDIA's emulated RIM service and OCSP responder as one vendor (down/up/status together)."""

    def __init__(self, rim_service, ocsp_responder):
        self.rim_service, self.ocsp_responder = rim_service, ocsp_responder

    @property
    def base_url(self) -> str:
        return self.rim_service.base_url

    @property
    def ocsp_url(self) -> str:
        return self.ocsp_responder.url

    @property
    def down(self) -> bool:
        return self.rim_service.down

    @property
    def requests(self) -> list:
        return self.rim_service.requests

    def set_down(self, down: bool = True) -> None:
        self.rim_service.set_down(down)
        self.ocsp_responder.set_down(down)

    def stop(self) -> None:
        self.rim_service.stop()
        self.ocsp_responder.stop()


def start_vendor(kind: str, state: bytes, host: str, port: int, ocsp_port: int = 0):
    """The started EmulatedPcs / EmulatedKds / NvidiaServices over the vendor state."""
    if kind == "nvidia":
        from conclave.runtime.attestation.emulated.nvgpu_device import start_services
        return NvidiaServices(*start_services(state, host, port, ocsp_port))
    from conclave.runtime.attestation.emulated import identity
    from conclave.runtime.attestation.emulated.kds_server import EmulatedKds
    from conclave.runtime.attestation.emulated.pcs_server import EmulatedPcs
    hierarchy = identity.vendor_from_secret_bytes(state)
    if kind == "pcs" and isinstance(hierarchy, identity.ServedTdxHierarchy):
        return EmulatedPcs(hierarchy, host, port).start()
    if kind == "kds" and isinstance(hierarchy, identity.ServedSnpHierarchy):
        return EmulatedKds(hierarchy, host, port).start()
    raise ValueError(f"the vendor state is not for the emulated {kind}")


def control(server, request: dict) -> dict:
    """Apply one admin request to a running EmulatedPcs / EmulatedKds / NvidiaServices."""
    cmd = request.get("cmd")
    if isinstance(server, NvidiaServices):
        if cmd == "status":
            return {"ok": True, "down": server.down, "requests": len(server.requests),
                    "ocsp_requests": server.ocsp_responder.requests}
        if cmd in ("down", "up"):
            server.set_down(cmd == "down")
            return {"ok": True}
        return {"ok": False, "reason": "unsupported" if cmd in ("revoke", "unrevoke", "tcb_recovery", "tcb_restore")
                else "command_unknown"}
    h = server.hierarchy
    name = request.get("host")
    if cmd == "status":
        return {"ok": True, "down": server.down, "revoked": h.revoked_hosts(), "hosts": h.host_names(),
                "recoveries": getattr(h, "recoveries", 0), "requests": len(server.requests)}
    if cmd in ("revoke", "unrevoke"):
        if name not in h.host_names():
            return {"ok": False, "reason": "host_unknown"}
        (h.revoke if cmd == "revoke" else h.unrevoke)(name)
        return {"ok": True}
    if cmd in ("tcb_recovery", "tcb_restore"):
        if not hasattr(h, "withdraw_recoveries"):
            return {"ok": False, "reason": "unsupported"}
        (h.tcb_recovery if cmd == "tcb_recovery" else h.withdraw_recoveries)()
        return {"ok": True}
    if cmd in ("down", "up"):
        server.set_down(cmd == "down")
        return {"ok": True}
    return {"ok": False, "reason": "command_unknown"}


def serve_admin(server, path: Path) -> socketserver.ThreadingUnixStreamServer:
    """The admin socket (0600) in a background thread."""
    lock = threading.Lock()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                request = json.loads(self.rfile.readline(MAX_REQUEST))
                if not isinstance(request, dict):
                    raise ValueError
            except ValueError:
                reply = {"ok": False, "reason": "request_malformed"}
            else:
                with lock:
                    reply = control(server, request)
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    try:
        path.unlink()
    except FileNotFoundError:
        pass
    old = os.umask(0o177)
    try:
        admin = socketserver.ThreadingUnixStreamServer(str(path), Handler)
    finally:
        os.umask(old)
    admin.daemon_threads = True
    threading.Thread(target=admin.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                     name="emulated-vendor-admin").start()
    return admin


def request(path: Path | str, cmd: str, timeout: float = 10.0, **fields) -> dict:
    """Send one admin request to an emulator's socket (tests, `conclave` tooling)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conclave.runtime.attestation.emulated.service")
    p.add_argument("kind", choices=["pcs", "kds", "nvidia"])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ocsp-port", type=int, default=0, help="nvidia: the OCSP responder's port")
    p.add_argument("--admin-socket", type=Path, required=True)
    args = p.parse_args(argv)
    state = sys.stdin.buffer.read(1024 * 1024)
    try:
        server = start_vendor(args.kind, state, args.host, args.port, args.ocsp_port)
    except ValueError as exc:
        print(f"conclave: emulated {args.kind}: {exc}", file=sys.stderr)
        return 5
    del state
    admin = serve_admin(server, args.admin_socket)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"conclave: emulated {args.kind} on {server.base_url}, admin {args.admin_socket}", file=sys.stderr,
          flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        admin.shutdown()
        admin.server_close()
        server.stop()
        try:
            args.admin_socket.unlink()
        except FileNotFoundError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
