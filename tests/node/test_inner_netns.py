"""The node's inner network namespace (issue 16 hole 8): the pieces, without a cluster.

Pure parts (fast lane): the device's bring-up sequence with and without a namespace to move into,
inner namespace names, the engine's unix socket path, the head front's upstream choice, and the
front, the engine probe and the metrics merge really talking HTTP over a unix socket. Netns parts
(real namespaces and wireguard-go, names prefixed for this file): the device moved in keeps its UDP
socket outside and its address inside, a socket made for the namespace binds the overlay address
that the outer namespace lacks, and a SIGKILLed node's leftover namespace (processes included) is
removed by its next boot and by the host layer's cleanup.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conclave.overlay.device import bring_up_commands
from conclave.runtime.node import inner_netns, process

OVERLAY = ipaddress.IPv4Network("100.64.0.0/16")
ADDRESS = ipaddress.IPv4Address("100.64.0.7")


# -- pure -----------------------------------------------------------------------------------------------
def test_device_without_namespace_is_configured_where_it_was_created():
    cmds = [argv for argv, _ in bring_up_commands("wg0", listen_port=51820, address=ADDRESS, overlay=OVERLAY,
                                                   netns=None)]
    assert cmds == [["wg", "set", "wg0", "private-key", "{fd}", "listen-port", "51820"],
                    ["ip", "addr", "replace", "100.64.0.7/16", "dev", "wg0"],
                    ["ip", "link", "set", "wg0", "mtu", "1420", "up"]]


def test_device_with_namespace_gets_its_key_and_port_here_then_moves_and_is_addressed_inside():
    steps = bring_up_commands("wg0", listen_port=51820, address=ADDRESS, overlay=OVERLAY, netns="inner")
    cmds = [argv for argv, _ in steps]
    # key and port first, in the namespace that owns the UDP socket; only then the move
    assert cmds == [["wg", "set", "wg0", "private-key", "{fd}", "listen-port", "51820"],
                    ["ip", "link", "set", "dev", "wg0", "netns", "inner"],
                    ["ip", "-n", "inner", "addr", "replace", "100.64.0.7/16", "dev", "wg0"],
                    ["ip", "-n", "inner", "link", "set", "wg0", "mtu", "1420", "up"]]
    assert [secret for _, secret in steps] == [True, False, False, False]   # the key goes to wg only
    assert not any(argv[:2] == ["ip", "addr"] or argv[:3] == ["ip", "link", "set"] and "up" in argv
                   for argv in cmds[1:]), "no address or link-up in the outer namespace"


def test_inner_names_are_per_node_and_per_outer_namespace_and_stable_across_boots():
    a = inner_netns.inner_name("cvab12-n0", 4026531840)
    assert a == inner_netns.inner_name("cvab12-n0", 4026531840)     # a new boot finds its predecessor's
    assert a != inner_netns.inner_name("cvab12-n1", 4026531840)
    assert a != inner_netns.inner_name("cvab12-n0", 4026531999)
    assert a.startswith("ci4026531840-")
    odd = inner_netns.inner_name("../x y/" + "z" * 80, 1)
    assert "/" not in odd and " " not in odd and len(odd) <= 44


def test_engine_socket_lives_in_a_folder_of_its_own_and_stays_a_valid_unix_address(tmp_path):
    assert inner_netns.engine_socket_path(tmp_path / "n0") == tmp_path / "n0" / "engine" / "api.sock"
    deep = tmp_path / ("d" * 120)
    path = inner_netns.engine_socket_path(deep)
    assert len(str(path).encode()) <= 100 and path.name == "api.sock"
    assert path == inner_netns.engine_socket_path(deep)


def _args(**kw):
    base = dict(front_upstream=None, run_dir=Path("/run/x/n0"), name="n0", inner_netns="auto", model=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_front_reaches_the_engine_over_its_socket_when_the_engine_is_inside():
    from conclave.runtime.cli.node import front_upstream, wants_inner_netns
    assert front_upstream(_args(), True) == "unix:/run/x/n0/engine/api.sock"
    # local mode passes the old loopback default explicitly: it means the engine's socket now
    assert front_upstream(_args(front_upstream="127.0.0.1:8000"), True) == "unix:/run/x/n0/engine/api.sock"
    assert front_upstream(_args(front_upstream="10.1.2.3:8000"), True) == "10.1.2.3:8000"
    assert front_upstream(_args(), False) == "127.0.0.1:8000"

    class Manifest:
        model_source = {"shards": "x"}
    assert wants_inner_netns(_args(), Manifest()) is True
    assert wants_inner_netns(_args(inner_netns="off"), Manifest()) is False
    Manifest.model_source = None
    assert wants_inner_netns(_args(), Manifest()) is False
    assert wants_inner_netns(_args(model=Path("/m")), Manifest()) is True


def test_unix_upstreams_parse_and_bad_ones_are_refused():
    from conclave.runtime.serving.api_guard import parse_upstream, upstream_target
    assert parse_upstream("unix:/run/x/api.sock") == "unix:/run/x/api.sock"
    assert upstream_target("unix:/run/x/api.sock") == ("http://localhost", "/run/x/api.sock")
    assert upstream_target("http://127.0.0.1:8000") == ("http://127.0.0.1:8000", None)
    for bad in ("unix:relative.sock", "unix:/" + "x" * 200):
        with pytest.raises(ValueError):
            parse_upstream(bad)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/v1/models":
            body = json.dumps({"data": [{"id": "smollm2"}]}).encode()
        elif self.path == "/metrics":
            body = b"vllm:num_requests_running 0.0\n"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        return


class _UnixServer(ThreadingHTTPServer):
    address_family = socket.AF_UNIX
    daemon_threads = True

    def server_bind(self):
        self.socket.bind(self.server_address)

    def get_request(self):
        sock, _ = self.socket.accept()
        return sock, ("local", 0)


@pytest.fixture
def engine_on_socket(tmp_path):
    path = tmp_path / "engine" / "api.sock"
    path.parent.mkdir(mode=0o700)
    server = _UnixServer(str(path), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


def test_probe_metrics_and_front_guard_all_reach_an_engine_on_a_unix_socket(engine_on_socket, tmp_path):
    from urllib.parse import quote

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from conclave.runtime.metrics import fetch_exposition
    from conclave.runtime.node.stage_runner import _models_over_unix_socket
    from conclave.runtime.serving.api_guard import ApiGuard

    assert _models_over_unix_socket(engine_on_socket, {}) is True
    assert _models_over_unix_socket(tmp_path / "nothing.sock", {}) is False
    url = "http+unix://" + quote(str(engine_on_socket), safe="") + "/metrics"
    assert fetch_exposition(url).startswith(b"vllm:num_requests_running")

    async def get_models(upstream: str):
        guard = ApiGuard(upstream=upstream, api_key=None)
        await guard.open()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", guard.handle)
        try:
            async with TestClient(TestServer(app)) as client:
                resp = await client.get("/v1/models")
                return resp.status, (await resp.json() if resp.status == 200 else None)
        finally:
            await guard.close()

    async def relay():
        status, body = await get_models(f"unix:{engine_on_socket}")
        down_status, _ = await get_models(f"unix:{tmp_path}/missing.sock")
        return status, body, down_status

    status, body, down_status = asyncio.run(relay())
    assert status == 200 and body["data"][0]["id"] == "smollm2"
    assert down_status == 503          # engine_unavailable while the socket is not there


# -- real namespaces ----------------------------------------------------------------------------------------
def _ns(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


def _in(name: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True, **kw)


_CHILD = r"""
import ipaddress, json, os, socket, sys, time
from conclave.overlay.device import WgDevice
from conclave.overlay.keys import WgPrivateKey
from conclave.runtime.node.inner_netns import InnerNetns
inner = InnerNetns.for_node(sys.argv[1], sys.argv[2]).create()
dev = WgDevice(sys.argv[2], private_key=WgPrivateKey.generate(), listen_port=int(sys.argv[3]),
               address=ipaddress.IPv4Address("100.64.9.1"), overlay=ipaddress.IPv4Network("100.64.0.0/16"),
               netns=inner.name)
inside = inner.socket()
inside.bind(("100.64.9.1", 0))
inside.listen()
try:
    socket.create_server(("100.64.9.1", 0))
    outside = "bound"
except OSError:
    outside = "refused"
import subprocess
sleeper = subprocess.Popen(inner.exec_prefix() + ["sleep", "300"], start_new_session=True)
print(json.dumps({"name": inner.name, "inode": inner.inode, "wg_pid": dev.pid, "outside": outside,
                  "inside_port": inside.getsockname()[1], "sleeper": sleeper.pid,
                  "check": dev.check()}), flush=True)
time.sleep(300)
"""


def _start_node_like(host: str, node: str, ifname: str, port: int):
    proc = subprocess.Popen(["ip", "netns", "exec", host, os.sys.executable, "-c", _CHILD, node, ifname, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"node stand-in failed: {proc.stderr.read()[-2000:]}")
    return proc, json.loads(line)


@pytest.mark.netns
def test_moved_device_sockets_and_stale_cleanup_in_real_namespaces(require_root):
    host = f"h2t-{os.getpid()}"
    ifname = f"h2t{os.getpid() % 100000}"
    procs = []
    _ns(host)
    try:
        proc, info = _start_node_like(host, "h2t-node", ifname, 51777)
        procs.append(proc)
        assert info["check"] is None and info["outside"] == "refused"
        # WireGuard's UDP socket is in the host's namespace; the interface and its address are not
        udp = _in(host, ["ss", "-H", "-lunp"]).stdout
        assert ":51777" in udp and "wireguard-go" in udp
        assert _in(host, ["ip", "link", "show", ifname]).returncode != 0
        assert _in(host, ["ip", "-4", "-o", "addr"]).stdout.count("100.64.9.1") == 0
        assert _in(host, ["ss", "-H", "-ltn"]).stdout.strip() == ""     # the inner listener is not here
        enter = ["nsenter", f"--net=/proc/{info['sleeper']}/ns/net"]
        links = subprocess.run(enter + ["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert {l.split(":")[1].strip() for l in links.splitlines()} == {"lo", ifname}
        inside = subprocess.run(enter + ["ss", "-H", "-ltn"], capture_output=True, text=True).stdout
        assert f"100.64.9.1:{info['inside_port']}" in inside
        assert inner_netns.pids_in_inode(info["inode"]) == [info["sleeper"]]
        # the root mount namespace sees the name's file but not the namespace; the registry knows it
        assert (inner_netns.NETNS_DIR / info["name"]).exists()
        record = json.loads((inner_netns.REGISTRY / f"{info['name']}.json").read_text())
        assert record["inode"] == info["inode"] and record["interface"] == ifname

        # the node is SIGKILLed: its sleeper (a Ray stand-in) lives on in the inner namespace
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        assert Path(f"/proc/{info['sleeper']}").exists()
        # its next boot in the same host removes the stale namespace and what runs in it first
        proc2, info2 = _start_node_like(host, "h2t-node", ifname + "b", 51778)
        procs.append(proc2)
        assert info2["name"] == info["name"] and info2["inode"] != info["inode"]
        deadline = time.monotonic() + 10
        while process.alive(info["sleeper"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not process.alive(info["sleeper"]), "the stale inner namespace's process survived"
        # killed again; this time the host layer cleans up (kill_netns_processes covers inner namespaces)
        os.killpg(proc2.pid, signal.SIGKILL)
        proc2.wait(5)
        assert process.alive(info2["sleeper"])
        process.kill_netns_processes(host)
        assert not process.alive(info2["sleeper"])
        assert not (inner_netns.REGISTRY / f"{info['name']}.json").exists()
        assert not (inner_netns.NETNS_DIR / info["name"]).exists()
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        process.kill_netns_processes(host)
        subprocess.run(["ip", "netns", "del", host], capture_output=True)
        for name in (ifname, ifname + "b"):
            Path(f"/var/run/wireguard/{name}.sock").unlink(missing_ok=True)


def test_kernel_wireguard_moved_inside_is_driven_from_inside(monkeypatch):
    """Kernel WireGuard answers netlink only in the namespace holding the interface: after the move
    every `wg` runs through `ip netns exec INNER` (wireguard-go's UAPI file socket works from outside)."""
    import conclave.overlay.device as device
    from conclave.overlay.keys import WgPrivateKey

    calls = []

    class Done:
        returncode, stdout, stderr = 0, "priv\tpub\t51820\toff\n", ""

    def fake_run(argv, **kw):
        calls.append(list(argv))
        return Done()

    monkeypatch.setattr(device.subprocess, "run", fake_run)
    monkeypatch.setattr(device.shutil, "which", lambda name: f"/usr/bin/{name}")
    dev = device.WgDevice("wg0", private_key=WgPrivateKey.generate(), listen_port=51820, address=ADDRESS,
                          overlay=OVERLAY, implementation="kernel", netns="inner")
    assert dev.implementation == "kernel"
    wg_key = next(c for c in calls if "private-key" in c)
    assert wg_key[0] == "wg" and calls[0] == ["ip", "link", "add", "wg0", "type", "wireguard"]
    move = calls.index(["ip", "link", "set", "dev", "wg0", "netns", "inner"])
    assert calls.index(wg_key) < move
    calls.clear()
    dev.read()
    dev.remove_peer(WgPrivateKey.generate().public_key())
    assert all(c[:4] == ["ip", "netns", "exec", "inner"] and c[4] == "wg" for c in calls), calls
    calls.clear()
    assert dev.check() is None
    assert calls == [["ip", "-n", "inner", "-o", "link", "show", "dev", "wg0"]]
    calls.clear()
    dev.close()
    assert ["ip", "-n", "inner", "link", "del", "wg0"] in calls
