"""Network-namespace plumbing for local hosts: namespaces, a bridge, veth pairs, commands inside.

Shared by the local cluster (conclave.runtime.local) and the overlay tests. Everything here
shells out to iproute2; every function is idempotent where that is cheap, and the callers
record what they created so that teardown removes exactly that.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conclave.runtime.errors import ConclaveError

NETNS_DIR = Path("/var/run/netns")


def require_root_and_netns(geteuid=os.geteuid) -> None:
    """Fail with a clear reason when local hosts cannot be built here (geteuid: a seam for tests)."""
    if geteuid() != 0:
        raise ConclaveError("not_root", "local hosts need root (network namespaces, veth, WireGuard); run as root")
    if shutil.which("ip") is None:
        raise ConclaveError("no_iproute2", "the `ip` command (iproute2) is missing; install iproute2")
    probe = "conclave-probe-%d" % os.getpid()
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if res.returncode != 0:
        raise ConclaveError("no_netns", f"network namespaces are not available here: {res.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)


def run(cmd: list[str], *, netns: str | None = None, check: bool = True, input: str | bytes | None = None,
        timeout: float = 60, text: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command (inside `netns` if given). Raises ConclaveError(command_failed) on failure."""
    full = (["ip", "netns", "exec", netns] if netns else []) + list(cmd)
    res = subprocess.run(full, capture_output=True, input=input, timeout=timeout, text=text, env=env)
    if check and res.returncode != 0:
        err = res.stderr if text else res.stderr.decode(errors="replace")
        raise ConclaveError("command_failed", f"{' '.join(full)} exited {res.returncode}: {err.strip()}")
    return res


def list_netns() -> list[str]:
    res = run(["ip", "-o", "netns", "list"], check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def add_netns(name: str) -> None:
    if not netns_exists(name):
        run(["ip", "netns", "add", name])
    run(["ip", "link", "set", "lo", "up"], netns=name)


def del_netns(name: str) -> None:
    if netns_exists(name):
        run(["ip", "netns", "del", name], check=False)


def link_exists(name: str, netns: str | None = None) -> bool:
    return run(["ip", "link", "show", name], netns=netns, check=False).returncode == 0


def add_bridge(name: str, address_cidr: str | None = None) -> None:
    if not link_exists(name):
        run(["ip", "link", "add", name, "type", "bridge"])
    if address_cidr:
        run(["ip", "addr", "replace", address_cidr, "dev", name])
    run(["ip", "link", "set", name, "up"])


def del_link(name: str, netns: str | None = None) -> None:
    if link_exists(name, netns):
        run(["ip", "link", "del", name], netns=netns, check=False)


def attach_host(netns: str, bridge: str, host_veth: str, address_cidr: str, ifname: str = "eth0") -> None:
    """Create veth `host_veth` (root side, enslaved to `bridge`) paired with `ifname` inside `netns`."""
    peer_tmp = f"{host_veth}p"[:15]
    if not link_exists(host_veth):
        run(["ip", "link", "add", host_veth, "type", "veth", "peer", "name", peer_tmp])
        run(["ip", "link", "set", peer_tmp, "netns", netns])
        run(["ip", "link", "set", peer_tmp, "name", ifname], netns=netns)
    run(["ip", "link", "set", host_veth, "master", bridge])
    run(["ip", "link", "set", host_veth, "up"])
    run(["ip", "addr", "replace", address_cidr, "dev", ifname], netns=netns)
    run(["ip", "link", "set", ifname, "up"], netns=netns)
