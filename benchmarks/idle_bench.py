"""Idle cost of the confidential layer's control plane (issue 18, item 4): CPU of each node agent
and of the rendezvous while nothing changes.

One process per role, so /proc/PID/stat gives each its own utime+stime: a rendezvous
(RendezvousService on a gRPC server, as `conclave rendezvous` runs it) and `--agents` real
NodeAgents on loopback (simulated evidence, HPKE, gRPC; production Timing: the intervals the
fault handling relies on) with in-memory WireGuard devices (overlay.device.FakeDevice: no
wireguard-go, whose own idle cost is not the agent's). The parent waits for the full mesh, lets it
settle, then reads every process's CPU over `--seconds`.

    .venv/bin/python -m benchmarks.idle_bench --agents 3 --seconds 60
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import proc_cpu_s

REPO = Path(__file__).resolve().parents[1]
GOOD = bytes.fromhex("ab" * 48)
POLICY = {"production": False, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
          "sim": {"measurement": [GOOD.hex()]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def _wait_stop() -> None:
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    while not stop[0]:
        signal.pause()


def child_rendezvous(port: int) -> None:
    from conclave.overlay import rpc
    from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
    from conclave.overlay.rendezvous import RendezvousService
    server = rpc.server()
    pb_grpc.add_RendezvousServicer_to_server(RendezvousService(), server)
    rpc.bind(server, "127.0.0.1", port)
    server.start()
    print("ready", flush=True)
    _wait_stop()
    server.stop(0.5)


def child_agent(index: int, rdv: int, root_file: Path, status: Path) -> None:
    from conclave.overlay.device import FakeDevice
    from conclave.overlay.evidence import SimEvidenceSource
    from conclave.runtime.agent.agent import NodeAgent
    from conclave.runtime.agent.config import NodeConfig, Timing
    from conclave.runtime.attestation.policy import Policy
    from conclave.runtime.attestation.sim import SimulatedRoot
    from conclave.runtime.keys.secret import SecretValue

    root = SimulatedRoot.from_secret_bytes(root_file.read_bytes())
    name = f"idle-n{index}"
    role = "head" if index == 0 else "worker"
    cfg = NodeConfig(
        node_name=name, role=role, owner="t", policy=Policy.from_dict(POLICY), manifest_digest=b"\x11" * 32,
        evidence_source=SimEvidenceSource(root.issue_attester(name, measurement=GOOD)),
        underlay_host="127.0.0.1", admission_port=free_port(), wireguard_port=free_port(),
        rendezvous=[f"127.0.0.1:{rdv}"], trusted_sim_roots=[root.certificate], status_socket=status,
        secrets={"ray_token": SecretValue(b"r" * 32)} if index == 0 else {},
        allowed_roles={"ray_token": frozenset({"head", "worker"})},
        want_secrets=["ray_token"] if role == "worker" else [],
        device_factory=lambda cfg, ident, addr: FakeDevice(cfg.interface, cfg.wireguard_port),
        timing=Timing(**json.loads(os.environ.get("IDLE_BENCH_TIMING", "{}"))))
    agent = NodeAgent(cfg)
    agent.start()
    print("ready", flush=True)
    try:
        _wait_stop()
    finally:
        agent.stop()


def run(agents: int, seconds: float, settle: float) -> dict:
    from conclave.runtime.agent.status import query
    from conclave.runtime.attestation.sim import SimulatedRoot

    tmp = Path(tempfile.mkdtemp(prefix="idle-bench-"))
    root = SimulatedRoot.generate()
    root_file = tmp / "root.secret"
    root_file.touch(mode=0o600)
    root_file.write_bytes(root.to_secret_bytes())
    rdv = free_port()
    procs: dict[str, subprocess.Popen] = {}

    def spawn(name: str, *args: str) -> None:
        procs[name] = subprocess.Popen([sys.executable, "-m", "benchmarks.idle_bench", *args], cwd=REPO,
                                       stdout=subprocess.PIPE, stderr=open(tmp / f"{name}.log", "wb"), text=True)
        if procs[name].stdout.readline().strip() != "ready":
            raise RuntimeError(f"{name} did not start: {(tmp / f'{name}.log').read_text()[-800:]}")
    try:
        spawn("rendezvous", "child-rendezvous", str(rdv))
        sockets = []
        for i in range(agents):
            sockets.append(tmp / f"agent{i}.sock")
            spawn(f"agent{i}", "child-agent", str(i), str(rdv), str(root_file), str(sockets[-1]))
        deadline = time.monotonic() + 120
        while True:
            try:
                if all(len(query(s)["device_peers"]) == agents - 1 for s in sockets):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the agents never meshed")
            time.sleep(0.5)
        time.sleep(settle)
        before = {name: proc_cpu_s(p.pid) for name, p in procs.items()}
        load_before = os.getloadavg()
        t0 = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - t0
        after = {name: proc_cpu_s(p.pid) for name, p in procs.items()}
        meshed = all(len(query(s)["device_peers"]) == agents - 1 for s in sockets)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"bench": "idle", "agents": agents, "seconds": round(wall, 1), "settle_s": settle,
            "still_meshed": meshed, "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "cpu_percent_of_one_core": {name: round((after[name] - before[name]) / wall * 100, 3) for name in procs}}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "child-rendezvous":
        child_rendezvous(int(argv[1]))
        return 0
    if argv and argv[0] == "child-agent":
        child_agent(int(argv[1]), int(argv[2]), Path(argv[3]), Path(argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--timing", default="{}", help='Timing overrides as JSON (experiments: {"liveness_interval": 0})')
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    os.environ["IDLE_BENCH_TIMING"] = json.dumps(json.loads(a.timing))
    result = run(a.agents, a.seconds, a.settle)
    result["timing_overrides"] = json.loads(a.timing)
    result["command"] = "python -m benchmarks.idle_bench " + " ".join(argv)
    text = json.dumps(result, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
