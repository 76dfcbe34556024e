"""A worker host of the plain-veth cluster loses every process mid-stream (issue 8, faults).

The plain modes have no node agents: the supervisor notices the dead Ray node, the API guard
(PlainFront) ends the in-flight stream at once with an SSE error `stage_lost` (or vLLM's own error
event, when it notices the dead stage first), the engine stops,
the Ray node and the engine start again, and serving resumes without an operator. This file sorts
after test_load.py on purpose: it breaks and heals the package's shared cluster, so it runs last.
The confidential cluster's faults (agents, WireGuard, partition, rendezvous) are in
tests/confidential/test_faults.py.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from .api_support import (ERROR_WITHIN, assert_ended_cleanly, cluster_status, greedy_reference, public_health,
                          start_stream, wait_serving, wait_until)

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(900)]


def test_worker_host_killed_mid_stream_ends_with_stage_lost_then_serving_resumes(rcluster):
    from conclave.runtime.node import process
    st = cluster_status(rcluster)
    assert st["phase"] == "ready" and st["health"]["status"] == "ok"
    recoveries = st["health"]["recoveries"]
    reference = greedy_reference(rcluster)
    node = st["nodes"][2]
    old_ray = node["ray_pid"]
    stream = start_stream(rcluster)
    fault_at = time.monotonic()
    killed = process.pids_in_netns(node["netns"])
    assert killed, f"nothing runs in {node['netns']}"
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert_ended_cleanly(stream, fault_at, reference, must_fail=True)
    # the guard's stage_lost, unless vLLM reported the dead stage first with its own error event
    assert stream.outcome == "error_event", (stream.outcome, stream.error)
    health = wait_until(lambda: (h := cluster_status(rcluster)["health"])["status"] == "degraded" and h,
                        ERROR_WITHIN, "status reports degraded", interval=1.0)
    assert "ray_node_lost" in {p["reason"] for p in health["problems"]}, health
    wait_until(lambda: public_health(rcluster) == 503, ERROR_WITHIN, "/health answers 503 while degraded",
               interval=1.0)
    back_at = time.monotonic()
    st = wait_serving(rcluster, recoveries + 1)
    print(f"\nplain cluster: serving again {time.monotonic() - back_at:.1f}s after the stream ended")
    assert st["nodes"][2]["ray_pid"] != old_ray and st["health"]["problems"] == []
    assert public_health(rcluster) == 200
