"""Peak resident memory per host, sampled from /proc while a benchmark runs.

Generic on purpose: the sampler takes a callback returning {host: [pids]} at each sample, so
the same code measures a local Conclave cluster (every process inside each host's network
namespace), a process tree (plain vLLM), or any explicit pid list. A host's value at one
sample is the sum of VmRSS of its processes; the peak is the highest such sum, and the
cluster peak is the highest sum over all hosts at one sample (not the sum of peaks).
"""
from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Callable

HostPids = Callable[[], dict[str, list[int]]]


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB; 0 when it is gone or a kernel thread."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def pid_tree(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """`root` and all its descendants."""
    children = _children_map() if children is None else children
    out, todo, seen = [], [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        out.append(pid)
        todo += children.get(pid, [])
    return out


def pid_trees(roots: dict[str, list[int]]) -> HostPids:
    """Callback: each host is the process trees under its root pids."""
    def sample() -> dict[str, list[int]]:
        children = _children_map()
        return {host: sorted({p for r in pids for p in pid_tree(r, children)}) for host, pids in roots.items()}
    return sample


def netns_pids(netns: str) -> list[int]:
    """Every process whose network namespace is `netns` (`ip netns pids`)."""
    try:
        out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(p) for p in out.split() if p.isdigit()]


def netns_hosts(namespaces: dict[str, str]) -> HostPids:
    """Callback: each host is every process inside its network namespace."""
    return lambda: {host: netns_pids(ns) for host, ns in namespaces.items()}


def conclave_status_hosts(status: dict) -> dict[str, str]:
    """{node name: netns} from `conclave status --json`."""
    return {node["name"]: node["netns"] for node in status.get("nodes") or [] if node.get("netns")}


def read_conclave_status(argv: list[str], env: dict | None = None) -> dict:
    """Run `conclave status --json` (argv is the command prefix) and parse its last line."""
    proc = subprocess.run([*argv, "status", "--json"], capture_output=True, text=True, timeout=60, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {}
    return json.loads(lines[-1])


class PeakRssSampler:
    """Background thread sampling the callback every `interval` s; use as a context manager."""

    def __init__(self, hosts: HostPids, interval: float = 0.5) -> None:
        self.hosts, self.interval = hosts, interval
        self.peak_kib: dict[str, int] = {}
        self.peak_total_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample_once(self) -> None:
        total = 0
        for host, pids in self.hosts().items():
            value = sum(rss_kib(p) for p in pids)
            self.peak_kib[host] = max(self.peak_kib.get(host, 0), value)
            total += value
        self.peak_total_kib = max(self.peak_total_kib, total)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample_once()

    def result(self) -> dict:
        return {"peak_rss_mib_per_host": {h: round(v / 1024, 1) for h, v in sorted(self.peak_kib.items())},
                "peak_rss_mib_total": round(self.peak_total_kib / 1024, 1), "rss_samples": self.samples}
