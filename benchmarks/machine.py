"""What the issue-18 benchmarks record about the shared machine and their own processes: load
average and steal time from /proc (other work runs beside them), a process's CPU seconds, and
numpy-style percentiles."""
from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def machine_state() -> dict:
    """Load average and cumulative steal / total CPU ticks (/proc/loadavg, first line of /proc/stat)."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return {"loadavg": [float(x) for x in load], "steal_ticks": ticks[7] if len(ticks) > 7 else 0,
            "total_ticks": sum(ticks[:8])}


def steal_share(before: dict, after: dict) -> float | None:
    """Share of all CPU ticks between two machine_state() readings that the hypervisor stole."""
    total = after["total_ticks"] - before["total_ticks"]
    return round((after["steal_ticks"] - before["steal_ticks"]) / total, 4) if total > 0 else None


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process in seconds (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
