"""`conclave rendezvous`: the standalone relay the Helm chart runs; it serves announcements over
gRPC, stops cleanly on SIGTERM (exit 0), and refuses a bad port with a usage error."""
from __future__ import annotations

import ipaddress
import signal
import socket
import subprocess
import sys
import time

from conclave.overlay.identity import Announcement, NodeIdentity, Role
from conclave.overlay.rendezvous import RendezvousClient
from conclave.runtime.errors import ExitCode

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def announcement(name: str) -> tuple[Announcement, NodeIdentity]:
    ident = NodeIdentity.generate()
    return Announcement(node_id=name, owner="o", role=Role.WORKER, underlay_host="198.19.0.7",
                        admission_port=51821, wireguard_port=51820, wg_public_key=ident.wg_public,
                        hpke_public_key=ident.hpke_public, overlay_address=ipaddress.IPv4Address("100.64.0.7"),
                        statement_key=ident.statement_public), ident


def rendezvous_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "conclave.runtime", "rendezvous", *args]


def wait_listening(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"rendezvous did not listen on {port} within {START_TIMEOUT}s")


def test_serves_announcements_and_stops_cleanly_on_sigterm():
    port = free_port()
    proc = subprocess.Popen(rendezvous_cmd("--host", "127.0.0.1", "--port", str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = None
    try:
        wait_listening(proc, port)
        client = RendezvousClient([f"127.0.0.1:{port}"])
        me, ident = announcement("rdv-cli-n1")
        assert client.announce(me, ident.statement_private) == 1, client.errors
        listed = client.list()
        assert [a.node_id for a in listed] == ["rdv-cli-n1"]
        assert listed[0].wg_public_key.raw == me.wg_public_key.raw
        assert client.errors == {}
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        stderr = proc.stderr.read().decode(errors="replace")
        assert rc == 0, stderr
        assert f"127.0.0.1:{port}" in stderr  # it says where it listens
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_bad_port_is_a_usage_error():
    for bad in ("0", "70000"):
        res = subprocess.run(rendezvous_cmd("--host", "127.0.0.1", "--port", bad),
                             capture_output=True, timeout=60)
        assert res.returncode == ExitCode.USAGE, res.stderr
        assert b"port_invalid" in res.stderr


def test_non_numeric_port_and_bad_host_are_refused():
    res = subprocess.run(rendezvous_cmd("--port", "abc"), capture_output=True, timeout=60)
    assert res.returncode == ExitCode.USAGE, res.stderr
    res = subprocess.run(rendezvous_cmd("--host", "not-an-ip", "--port", str(free_port())),
                         capture_output=True, timeout=60)
    assert res.returncode == ExitCode.USAGE, res.stderr
    assert b"host_invalid" in res.stderr


def test_port_already_in_use_fails_with_port_in_use():
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = subprocess.run(rendezvous_cmd("--host", "127.0.0.1", "--port", str(port)),
                             capture_output=True, timeout=60)
    assert res.returncode != 0, res.stderr
    assert b"port_in_use" in res.stderr
