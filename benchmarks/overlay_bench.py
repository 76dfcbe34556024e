"""Overlay benchmark (not a test): join latency, overlay vs veth throughput, agent RSS at 16 peers.

Runs real `conclave node` agents (wireguard-go, simulated evidence) in network namespaces on a
private bridge, like tests/overlay. Needs root, iproute2, wireguard-go, wireguard-tools, nftables.

    .venv/bin/python benchmarks/overlay_bench.py [--peers 16] [--joins 3] [--seconds 3] [--json]

Measures:
  join        per joining node: time from its first announcement to a working tunnel (a TCP connect
              over the overlay to every existing node succeeds), and the admission decision time
              (challenge sent -> admitted) that peers record. Goal: whole join < 1 s.
  throughput  one TCP stream between the same two namespaces over the overlay and over the plain
              veth/bridge underlay, in the same run (Python socket blaster); ratio overlay/plain.
  rss         VmRSS of the head's agent process (and its wireguard-go) with N admitted peers.
              Goal: agent < 150 MB.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests" / "overlay"),
                str(Path(__file__).resolve().parents[1] / "tests")]   # overlay_hosts uses tests/sim_deployment.py
from overlay_hosts import METRICS_PORT, LocalHosts  # noqa: E402  (the same host harness as the tests)

BLAST_SERVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(30)
c, _ = s.accept(); total = 0; first = None
while True:
    d = c.recv(1 << 20)
    if not d: break
    if first is None: first = time.monotonic()
    total += len(d)
print(total, time.monotonic() - (first or time.monotonic()))
"""
BLAST_CLIENT = """
import socket, sys, time
buf = b"\\xa5" * (1 << 16)
for _ in range(100):
    s = socket.socket()
    if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0: break
    s.close(); time.sleep(0.05)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    s.sendall(buf)
s.close()
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def blast(lh: LocalHosts, src: str, dst: str, ip: str, port: int, seconds: float) -> float:
    import subprocess
    server = subprocess.Popen(["ip", "netns", "exec", lh.hosts[dst].ns, sys.executable, "-c", BLAST_SERVER,
                               ip, str(port)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    lh.exec(src, [sys.executable, "-c", BLAST_CLIENT, ip, str(port), str(seconds)], timeout=seconds + 30)
    out, _ = server.communicate(timeout=30)
    total, elapsed = out.split()
    return int(total) * 8 / float(elapsed) / 1e6  # Mbit/s


def overlay_reachable(lh: LocalHosts, src: str, dsts: list[str]) -> bool:
    return all(lh.tcp_probe(src, lh.hosts[d].overlay_ip, METRICS_PORT, timeout=0.5) for d in dsts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=16, help="peers of the head for the RSS measurement")
    ap.add_argument("--joins", type=int, default=3, help="nodes that join one by one (latency samples)")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lh = LocalHosts(Path(tempfile.mkdtemp(prefix="conclave-overlay-bench-")))
    result: dict = {}
    try:
        lh.add_host("h0", "head")
        lh.start("h0", serve_rendezvous=True, extra=["--generate-secret", "ray_token"])
        lh.wait_status("h0")
        # ---- join latency: nodes join one at a time into a running mesh
        joins = []
        for i in range(1, args.joins + 1):
            short = f"j{i}"
            lh.add_host(short)
            existing = [k for k in lh.hosts if k != short]
            lh.start(short)
            st = lh.wait_status(short)
            while st["announced_at"] is None:
                time.sleep(0.01)
                st = lh.status(short)
            announced = st["announced_at"]
            lh.wait_for(lambda: overlay_reachable(lh, short, existing), 30, f"{short} tunnels", interval=0.02)
            working = time.time()
            admission_ms = [p["admission_ms"] for k in existing for p in lh.status(k)["peers"]
                            if p["node_id"] == lh.hosts[short].name and p["admission_ms"] is not None]
            joins.append({"node": short, "existing_nodes": len(existing),
                          "announce_to_working_tunnels_s": round(working - announced, 3),
                          "boot_to_working_tunnels_s": round(working - st["started_at"], 3),
                          "admission_decision_ms_median": statistics.median(admission_ms) if admission_ms else None})
        result["join"] = joins
        # ---- throughput: same pair of namespaces, overlay vs plain veth/bridge
        a, b = "h0", "j1"
        # the node firewalls its underlay except its own ports: open the test port for the plain run
        # (one rule, removed by its handle right after)
        table = f"conclave_{lh.hosts[b].interface}"
        out = lh.exec(b, ["nft", "-e", "-a", "insert", "rule", "inet", table, "input", "tcp", "dport", "5201",
                          "accept"]).stdout
        handle = out.rsplit("# handle", 1)[1].split()[0]
        try:
            plain = blast(lh, a, b, lh.hosts[b].underlay_ip, 5201, args.seconds)
        finally:
            lh.exec(b, ["nft", "delete", "rule", "inet", table, "input", "handle", handle])
        overlay = blast(lh, a, b, lh.hosts[b].overlay_ip, 5202, args.seconds)
        result["throughput_mbit_s"] = {"plain_veth": round(plain, 1), "overlay": round(overlay, 1),
                                       "ratio": round(overlay / plain, 3)}
        # ---- RSS with N peers on the head
        while len(lh.hosts) - 1 < args.peers:
            short = f"p{len(lh.hosts)}"
            lh.add_host(short)
            lh.start(short)
        for short in lh.hosts:
            lh.wait_status(short, timeout=60)
        lh.wait_for(lambda: len(lh.status("h0")["device_peers"]) >= args.peers, 180, "head with all peers",
                    interval=0.5)
        time.sleep(2)
        agent_pid = lh.hosts["h0"].proc.pid
        wg_pids = children(agent_pid)
        result["rss"] = {"peers": len(lh.status("h0")["device_peers"]),
                         "agent_mb": round(rss_kb(agent_pid) / 1024, 1),
                         "wireguard_go_mb": round(sum(rss_kb(p) for p in wg_pids) / 1024, 1)}
    finally:
        lh.teardown()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for j in result.get("join", []):
            print(f"join {j['node']} (into {j['existing_nodes']} nodes): announce->tunnels "
                  f"{j['announce_to_working_tunnels_s']} s, boot->tunnels {j['boot_to_working_tunnels_s']} s, "
                  f"admission decision {j['admission_decision_ms_median']} ms")
        t = result.get("throughput_mbit_s")
        if t:
            print(f"throughput: plain veth {t['plain_veth']} Mbit/s, overlay {t['overlay']} Mbit/s, ratio {t['ratio']}")
        r = result.get("rss")
        if r:
            print(f"RSS with {r['peers']} peers: agent {r['agent_mb']} MB, wireguard-go {r['wireguard_go_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
