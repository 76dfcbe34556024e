"""benchmarks/idle_bench.py at tiny size: a rendezvous and two real agents, one process each, meshed,
and a CPU figure for every process."""
from __future__ import annotations

from benchmarks import idle_bench


def test_tiny_idle_run_reports_every_process():
    result = idle_bench.run(agents=2, seconds=1.0, settle=0.0)
    assert result["still_meshed"] is True
    cpu = result["cpu_percent_of_one_core"]
    assert set(cpu) == {"rendezvous", "agent0", "agent1"}
    assert all(0.0 <= v < 100.0 for v in cpu.values())
    assert result["seconds"] >= 1.0
