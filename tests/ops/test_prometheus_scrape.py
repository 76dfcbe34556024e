"""A real Prometheus scrapes a process serving runtime.metrics on 127.0.0.1.

The served process is a stand-in for the head: it records admissions, an eviction, WireGuard
state, a verification and a released secret through ConclaveMetrics, and serves them merged
with a vLLM-style upstream exposition (`vllm:*`). Prometheus (Debian package, temp config and
storage on 127.0.0.1) must then return those series through /api/v1/query. To run the same
check against a cluster, call prom_harness.running_prometheus with the nodes' metrics
addresses as targets (tests/confidential does, inside the head's network namespace; the last test
here runs that netns mode against a namespace of its own, without a cluster).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conclave.runtime import netns

from .prom_harness import running_prometheus

SERVER = r"""
import sys, time
from prometheus_client import CollectorRegistry, Gauge
from conclave.runtime.metrics import ConclaveMetrics, serve_metrics

class Peer:
    def __init__(self, hs, rx, tx):
        self.latest_handshake, self.rx_bytes, self.tx_bytes = hs, rx, tx

m = ConclaveMetrics()
m.record_admission("admitted", "ok")
m.record_admission("admitted", "ok")
m.record_admission("rejected", "measurement_mismatch")
m.set_peers_admitted(2)
m.record_evidence_verified("node-b")
m.record_eviction("node-c", "reattestation_failed")
m.update_wireguard({"node-b": Peer(time.time() - 3, 4096, 8192)})
m.observe_verification("tdx", 0.04)
m.record_secret_released("ray_token")

vllm = CollectorRegistry()
Gauge("vllm:num_requests_running", "running requests", ["model_name"], registry=vllm).labels("smollm2").set(5)
upstream = serve_metrics(vllm, "127.0.0.1", 0)
head = serve_metrics(m.registry, "127.0.0.1", 0, upstream_url=f"http://127.0.0.1:{upstream.port}/metrics")
print(head.port, flush=True)
sys.stdin.read()  # serve until the test closes stdin
head.close(); upstream.close()
"""


def _serve(prefix: list[str]):
    proc = subprocess.Popen([*prefix, sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().strip())
        yield f"127.0.0.1:{port}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def metrics_process():
    yield from _serve([])


def _value(series: list[dict], **labels) -> float:
    for s in series:
        if all(s["metric"].get(k) == v for k, v in labels.items()):
            return float(s["value"][1])
    raise AssertionError(f"no series with {labels} in {series}")


def test_prometheus_scrapes_conclave_and_vllm_metrics(metrics_process):
    with running_prometheus([metrics_process]) as prom:
        up = prom.wait_for_series('up{job="conclave"} == 1')
        assert _value(up, instance=metrics_process) == 1
        admissions = prom.wait_for_series("conclave_admissions_total")
        assert _value(admissions, result="admitted", reason="ok") == 2
        assert _value(admissions, result="rejected", reason="measurement_mismatch") == 1
        assert _value(prom.wait_for_series("conclave_peers_admitted")) == 2
        assert _value(prom.wait_for_series("conclave_evictions_total"),
                      reason="reattestation_failed") == 1
        assert _value(prom.wait_for_series("conclave_wireguard_rx_bytes"), peer="node-b") == 4096
        assert _value(prom.wait_for_series("conclave_wireguard_handshake_age_seconds"),
                      peer="node-b") >= 3
        assert _value(prom.wait_for_series("conclave_peer_evidence_age_seconds"),
                      peer="node-b") >= 0
        assert _value(prom.wait_for_series("conclave_verification_seconds_count"), tee="tdx") == 1
        assert _value(prom.wait_for_series("conclave_secrets_released_total"),
                      name="ray_token") == 1
        assert _value(prom.wait_for_series("conclave_upstream_up")) == 1
        assert _value(prom.wait_for_series('{__name__="vllm:num_requests_running"}'),
                      model_name="smollm2") == 5


@pytest.mark.netns
def test_prometheus_inside_a_network_namespace(require_root):
    """The harness' netns mode (used by tests/confidential in the head's namespace): Prometheus
    and the target both live on 127.0.0.1 of a namespace this test creates and deletes."""
    name = f"cops-prom-{os.getpid()}"
    netns.add_netns(name)
    try:
        serving = _serve(["ip", "netns", "exec", name])
        target = next(serving)
        try:
            with running_prometheus([target], netns=name) as prom:
                assert prom.netns == name
                assert _value(prom.wait_for_series('up{job="conclave"} == 1'), instance=target) == 1
                series = prom.wait_for_series("conclave_admissions_total", count=2)
                assert _value(series, result="rejected", reason="measurement_mismatch") == 1
        finally:
            serving.close()
    finally:
        netns.del_netns(name)
    assert not netns.netns_exists(name)
