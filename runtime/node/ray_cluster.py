"""Ray nodes of a cluster: one `ray start --block` per host, bound to the host's cluster address.

Token authentication is on (RAY_AUTH_MODE=token) and the token travels only in the
environment. GLOO_SOCKET_IFNAME and VLLM_HOST_IP are set on each node so the vLLM workers its
raylet spawns inherit them; VLLM_CPU_OMP_THREADS_BIND pins each node's worker to its own core.
Each node advertises one "GPU" slot (one pipeline stage), see cpu_platform.
A serving node runs its Ray node inside its inner network namespace (runtime/node/inner_netns.py),
where the overlay interface is the only one besides lo: the wildcard ports Ray opens (GCS, raylet,
workers, dashboard agent) then exist only there.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from conclave.runtime.errors import ConclaveError
from conclave.runtime.node import process
from conclave.runtime.node.address import ClusterAddress

RAY_PORT = 6379
OBJECT_STORE_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class RayNodePlan:
    host: object          # the local host it runs on (local mode); None inside a node
    address: ClusterAddress
    head: bool
    temp_dir: str
    omp_bind: str


def omp_binds(count: int, cores: int) -> list[str]:
    """Per-node VLLM_CPU_OMP_THREADS_BIND: a lone node gets every core, else node i gets core i % cores."""
    if count == 1:
        return [f"0-{cores - 1}" if cores > 1 else "0"]
    return [str(i % cores) for i in range(count)]


def ray_env(address: ClusterAddress, token: str | None = None) -> dict[str, str]:
    """The environment of every Ray process on a host. The token is added by the network layer
    (plain: generated in memory; attested: by the node's agent) unless given here."""
    env = process.base_env()
    env.update({
        "RAY_AUTH_MODE": "token",
        "GLOO_SOCKET_IFNAME": address.ifname,
        "VLLM_HOST_IP": address.ip,
        "RAY_USAGE_STATS_ENABLED": "0",
    })
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return env


def node_argv(plan: RayNodePlan, head_ip: str) -> list[str]:
    argv = [process.venv_bin("ray"), "start", "--block", "--node-ip-address", plan.address.ip,
            "--temp-dir", plan.temp_dir, "--num-cpus", "1", "--num-gpus", "1",
            "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats"]
    if plan.head:
        argv += ["--head", "--port", str(RAY_PORT), "--include-dashboard", "false"]
    else:
        argv += ["--address", f"{head_ip}:{RAY_PORT}"]
    return argv


def start_node(plan: RayNodePlan, head_ip: str, network, log_dir: Path) -> process.Started:
    """`ray start --block` on the plan's host, through the network layer (which adds the token)."""
    env = ray_env(plan.address)
    env["VLLM_CPU_OMP_THREADS_BIND"] = plan.omp_bind
    Path(plan.temp_dir).mkdir(parents=True, exist_ok=True)
    return network.launch(plan.host, f"ray-{plan.host.name}", node_argv(plan, head_ip), env,
                          log_dir / f"ray-{plan.host.name}.log")


_WAIT_SNIPPET = """
import sys, time, ray
want, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want:
        print("RAY_NODES", len(alive)); sys.exit(0)
    if time.monotonic() > deadline:
        print("RAY_NODES", len(alive)); sys.exit(3)
    time.sleep(1)
"""


def _count(output: str) -> str:
    for line in reversed(output.splitlines()):
        if line.startswith("RAY_NODES "):
            return line.split()[1]
    return "0"


def wait_for_nodes(head: RayNodePlan, network, count: int, timeout: float, is_alive, log_dir: Path) -> None:
    """Block until `count` Ray nodes are alive (checked from the head's host, as a driver)."""
    deadline = time.monotonic() + timeout
    # The head's GCS must accept connections before a driver can attach.
    while True:
        if not is_alive():
            raise ConclaveError("ray_failed", "a Ray node exited during start (see the ray-*.log files)")
        left = max(5.0, deadline - time.monotonic())
        code, output = network.run_probe(
            head.host, [process.venv_bin("python"), "-c", _WAIT_SNIPPET, f"{head.address.ip}:{RAY_PORT}",
                        str(count), str(left)],
            ray_env(head.address), log_dir / "ray-wait.log", left + 30)
        if code == 0:
            return
        if time.monotonic() > deadline:
            raise ConclaveError("ray_timeout", f"only {_count(output)} of {count} Ray nodes joined "
                                f"within {timeout:.0f}s: {output.strip()[-300:]}")
        time.sleep(2)
