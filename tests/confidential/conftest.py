"""One 3-host confidential local cluster per session, started through the real CLI.

`conclave up --local --nodes 3 --detach` with the default network (attested: simulated TEEs,
signed manifest, attested WireGuard overlay, nftables on every host), torn down with
`conclave down` even when a test fails; what it left behind fails the session teardown.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from serving import harness


def wg_sockets(status: dict) -> list[str]:
    return [f"/var/run/wireguard/{n['wg_ifname']}.sock" for n in status["nodes"]]


def pytest_collection_modifyitems(session, config, items):
    """The fault tests (test_faults.py) break and heal the shared cluster: run them after every other
    test of this folder, and before anything outside it (the cluster is package-scoped)."""
    here = Path(__file__).parent
    mine = [i for i in items if Path(str(i.fspath)).parent == here]
    if not mine:
        return
    faults = [i for i in mine if Path(str(i.fspath)).name == "test_faults.py"]
    others = [i for i in mine if i not in faults]
    if not faults or not others:
        return
    rest = [i for i in items if i not in faults]
    at = rest.index(others[-1]) + 1
    items[:] = rest[:at] + faults + rest[at:]


@pytest.fixture(scope="package")
def ccluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the confidential cluster tests need root (network namespaces); CI runs as root")
    state_dir = tmp_path_factory.mktemp("conclave-confidential")
    cluster = None
    with harness.running_cluster(3, state_dir, network=None) as cluster:
        assert cluster.status["network_kind"] == "attested", "the default network must be the attested overlay"
        sockets = wg_sockets(cluster.status)
        trust_dir = cluster.status["network"]["trust_dir"]
        yield cluster
    left = list(cluster.left_after_down or [])
    left += [s for s in sockets if Path(s).exists()]
    if Path(trust_dir).exists():
        left.append(f"dir:{trust_dir}")
    assert not left, f"conclave down left: {left}"


def in_netns(netns: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, **kw)


def listening_tcp_ports(netns: str) -> set[int]:
    out = in_netns(netns, ["ss", "-ltnH"], check=True).stdout
    ports = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            ports.add(int(fields[3].rsplit(":", 1)[1]))
    return ports


def agent_status(socket_path: str) -> dict:
    from conclave.runtime.agent import status
    return status.query(Path(socket_path))


def state_of(cluster) -> dict:
    return json.loads(cluster.state_file.read_text())
