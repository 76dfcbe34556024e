"""The underlay stays closed without any firewall rule (issue 16 hole 8).

Each node runs Ray, vLLM and its WireGuard interface in an inner network namespace whose only
interfaces are loopback and the WireGuard device; the device's UDP socket stays in the host's
namespace. This test removes every host's nftables table (the firewall is off from here on; the
fault tests that follow restart hosts, which re-apply it) and then checks from the hosts' side
and from an unadmitted namespace on the underlay:
- inside each inner namespace Ray's GCS, raylets, workers and (head) vLLM really listen, and only
  lo and the WireGuard device exist there (the check is not empty);
- in each host's own namespace nothing listens on a wildcard address except WireGuard's UDP
  socket, and no UDP socket but WireGuard's exists at all;
- a TCP connect scan of all 65535 ports of every host's underlay address answers on exactly the
  admission port of every host and the rendezvous and API ports of the head.
A wildcard listener started in a host's namespace (a canary standing in for today's Ray) is caught by
both checks, so they can fail. Run last among the cluster tests of this package (before test_faults,
by file order).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import in_netns, state_of
from .inner import in_inner, inner_info
from .outsider import Outsider

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(900)]

ADMISSION, RENDEZVOUS = 51821, 51822   # test_confidential_cluster.py
WILDCARDS = {"0.0.0.0", "*", "[::]", "::", "[::ffff:0.0.0.0]"}

SCAN_ALL = r"""
import errno, json, resource, select, socket, sys, time
ips = json.loads(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
todo = [(ip, port) for ip in ips for port in range(1, 65536)]
opened, unsure = [], []
ep = select.epoll()
live = {}
BATCH = 2048
while todo or live:
    while todo and len(live) < BATCH:
        target = todo.pop()
        s = socket.socket(); s.setblocking(False)
        code = s.connect_ex(target)
        if code == 0:
            opened.append(target); s.close(); continue
        if code != errno.EINPROGRESS:
            s.close(); continue
        live[s.fileno()] = (s, target, time.monotonic())
        ep.register(s.fileno(), select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP)
    for fd, _ in ep.poll(0.2):
        s, target, _ = live.pop(fd)
        ep.unregister(fd)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            opened.append(target)
        s.close()
    now = time.monotonic()
    for fd, (s, target, t0) in list(live.items()):
        if now - t0 > 5:   # no answer at all (neither SYN-ACK nor RST): probed again on its own below
            live.pop(fd); ep.unregister(fd); s.close(); unsure.append(target)
for target in unsure:
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect(target); opened.append(target)
    except OSError:
        pass
    finally:
        s.close()
print(json.dumps({"open": sorted(opened), "unanswered": len(unsure)}))
"""


def _listeners(ss_output: str) -> list[tuple[str, str, int, str]]:
    """`ss -Hltunp` lines -> (proto, address, port, process)."""
    out = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        addr, _, port = fields[4].rpartition(":")
        addr = addr.split("%", 1)[0]
        out.append((fields[0], addr, int(port), " ".join(fields[6:])))
    return out


CANARY = r"""
import socket, sys, time
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
time.sleep(120)
"""
CANARY_PORT = 47311


def _outer_violations(node: dict, wg_port: int) -> list[tuple]:
    """Listeners in a host's own namespace that break the rule: any UDP socket but WireGuard's, any
    wildcard TCP listener."""
    bad = []
    for proto, addr, port, proc in _listeners(in_netns(node["netns"], ["ss", "-Hltunp"], check=True).stdout):
        if proto == "udp" and not (port == wg_port and "wireguard-go" in proc):
            bad.append((proto, addr, port, proc))
        elif proto != "udp" and addr in WILDCARDS:
            bad.append((proto, addr, port, proc))
    return bad


def _scan(outsider: Outsider, ips: list[str]) -> set[tuple[str, int]]:
    """TCP connect to all 65535 ports of each address (non-blocking, 2,048 at a time): the set that
    accepted. Without a firewall a closed port answers RST at once; one that answers nothing within
    5 s is probed again on its own."""
    res = subprocess.run(["ip", "netns", "exec", outsider.netns, sys.executable, "-c", SCAN_ALL, json.dumps(ips)],
                         capture_output=True, text=True, timeout=600, check=True)
    return {tuple(t) for t in json.loads(res.stdout)["open"]}


def test_without_any_firewall_rule_only_conclaves_public_services_answer_on_the_underlay(ccluster):
    status = ccluster.status
    nodes = status["nodes"]
    wg_port = int(status["network"]["wireguard_port"])
    head = nodes[0]
    ips = [n["underlay_ip"] for n in nodes]

    # the firewall is off: every host's table goes, and nothing restores it
    for node in nodes:
        table = f"conclave_{node['wg_ifname']}"
        in_netns(node["netns"], ["nft", "delete", "table", "inet", table])
        assert table not in in_netns(node["netns"], ["nft", "list", "tables"], check=True).stdout

    # each host's own namespace: no wildcard listener but WireGuard's UDP socket, no other UDP socket
    for node in nodes:
        assert _listeners(in_netns(node["netns"], ["ss", "-Hltunp"], check=True).stdout), "nothing listens?"
        assert _outer_violations(node, wg_port) == [], node["name"]

    # an unadmitted namespace on the underlay: every TCP port of every host
    front = state_of(ccluster).get("front")
    public_port = int(front["port"]) if front else 8000
    allowed = {(head["underlay_ip"], RENDEZVOUS), (head["underlay_ip"], public_port)}
    allowed |= {(n["underlay_ip"], ADMISSION) for n in nodes}
    outsider = Outsider(status, index=102)
    canary = None
    try:
        answered = _scan(outsider, ips)
        assert answered == allowed, f"underlay ports answering without a firewall: {sorted(answered - allowed)}"
        # the checks can fail: a wildcard listener like Ray's, in a host's own namespace, is caught by both
        canary = subprocess.Popen(["ip", "netns", "exec", nodes[1]["netns"], sys.executable, "-c", CANARY,
                                   str(CANARY_PORT)], stdout=subprocess.PIPE, text=True)
        assert canary.stdout.readline().strip() == "listening"
        assert any(v[2] == CANARY_PORT for v in _outer_violations(nodes[1], wg_port))
        assert (nodes[1]["underlay_ip"], CANARY_PORT) in _scan(outsider, [nodes[1]["underlay_ip"]])
    finally:
        if canary is not None:
            canary.kill()
            canary.wait(10)
        outsider.close()

    # the check is not empty: Ray and vLLM listen, inside each node's inner namespace, on lo + wg only
    for node in nodes:
        info = inner_info(node)
        links = in_inner(node, ["ip", "-o", "link", "show"], check=True).stdout
        assert {l.split(":")[1].strip().split("@")[0] for l in links.splitlines()} == {"lo", node["wg_ifname"]}
        addrs = in_inner(node, ["ip", "-4", "-o", "addr", "show", node["wg_ifname"]], check=True).stdout
        assert node["overlay_ip"] in addrs, (info, addrs)
        inner = _listeners(in_inner(node, ["ss", "-Hltunp"], check=True).stdout)
        assert len({p for proto, _, p, _ in inner if proto == "tcp"}) >= 5, (node["name"], inner)
        assert any(a in WILDCARDS for _, a, _, _ in inner), "Ray binds wildcards (there, not on the underlay)"
        if node is head:
            assert 6379 in {p for _, _, p, _ in inner}                       # Ray's GCS
    engine = json.loads(subprocess.run([sys.executable, "-m", "conclave.runtime", "status", "--json"],
                                       env=ccluster.env, capture_output=True, text=True, check=True).stdout)
    engine_cmd = open(f"/proc/{engine['engine_pid']}/cmdline", "rb").read().split(b"\0")
    assert b"--uds" in engine_cmd                                       # vLLM: a unix socket only
