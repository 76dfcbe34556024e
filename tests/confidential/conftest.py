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

# Every node of the package cluster re-attests its peers this often (`conclave up --reattest-interval`;
# the node's default is 600 s): revocation, TCB recovery and vendor outages must show within a few
# periods (tests/confidential/test_revocation_live.py), and the evidence age limit is 2 x this + 30 s.
REATTEST_INTERVAL_S = 30


def wg_sockets(status: dict) -> list[str]:
    return [f"/var/run/wireguard/{n['wg_ifname']}.sock" for n in status["nodes"]]


# Files whose tests break and heal the shared cluster, in the order they run: after every other test
# of this folder (GPU switches evicting a worker first, then revocation and TCB recovery, then the faults,
# which end with the orchestrator killed), and before anything outside it (the cluster is package-scoped).
DISRUPTIVE = ("test_gpus.py", "test_revocation_live.py", "test_faults.py")


def pytest_collection_modifyitems(session, config, items):
    here = Path(__file__).parent
    mine = [i for i in items if Path(str(i.fspath)).parent == here]
    if not mine:
        return
    faults = sorted((i for i in mine if Path(str(i.fspath)).name in DISRUPTIVE),
                    key=lambda i: DISRUPTIVE.index(Path(str(i.fspath)).name))
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
    with harness.running_cluster(3, state_dir, network=None,
                                 extra=["--reattest-interval", str(REATTEST_INTERVAL_S)]) as cluster:
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
