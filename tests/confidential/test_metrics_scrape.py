"""A real Prometheus inside the head scrapes every node agent's metrics over the overlay (issue 6).

Prometheus (Debian package) runs in the head's inner network namespace (where the overlay is:
runtime/node/inner_netns.py), listening on 127.0.0.1 there,
with a temporary config and storage; it scrapes each agent's endpoint on the agent's OVERLAY
address (port 9469, the only address it binds), the way an operator's scraper inside the
deployment would. The head's agent appends vLLM's /metrics to its own exposition, so that one
target shows Conclave's and vLLM's serving metrics. Prometheus is stopped by PID and its files
are removed even when an assertion fails.
"""
from __future__ import annotations

import time

import pytest

from ops.prom_harness import running_prometheus

from .inner import inner_info

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(1800)]

METRICS_PORT = 9469              # runtime.agent.config.DEFAULT_METRICS_PORT: the cluster passes no other
PROM_PORT = 19090                # inside the head's namespace only
EVIDENCE_AGE_LIMIT = 2 * 600 + 30  # default re-attestation interval: an older peer would be evicted


def _by(series: list[dict], *labels: str) -> dict[tuple, float]:
    return {tuple(s["metric"].get(k) for k in labels): float(s["value"][1]) for s in series}


def test_prometheus_in_the_head_scrapes_every_agent_over_the_overlay(ccluster):
    started = time.monotonic()
    nodes = ccluster.status["nodes"]
    head = next(n for n in nodes if n["role"] == "head")
    instance = {n["node_id"]: f"{n['overlay_ip']}:{METRICS_PORT}" for n in nodes}
    names = set(instance)
    # the overlay exists only in the head's inner namespace (Ray and vLLM's): Prometheus runs there
    with running_prometheus(sorted(instance.values()), scrape_interval="2s",
                            netns=inner_info(head)["enter"], port=PROM_PORT) as prom:
        deadline = time.monotonic() + 30

        def wait_until(promql: str, count: int) -> list[dict]:
            return prom.wait_for_series(promql, count=count, deadline=deadline)

        up = _by(wait_until('up{job="conclave"} == 1', len(nodes)), "instance")
        assert set(up) == {(i,) for i in instance.values()} and set(up.values()) == {1.0}

        admitted = _by(wait_until('conclave_admissions_total{result="admitted",reason="ok"}', len(nodes)),
                       "instance")
        peers = _by(wait_until("conclave_peers_admitted", len(nodes)), "instance")
        verifications = _by(wait_until('sum by (instance) (conclave_verification_seconds_count{tee=~"tdx|snp"})',
                                       len(nodes)),
                            "instance")
        pairs = len(nodes) * (len(nodes) - 1)
        ages = _by(wait_until("conclave_peer_evidence_age_seconds", pairs), "instance", "peer")
        rx = _by(wait_until("conclave_wireguard_rx_bytes", pairs), "instance", "peer")
        tx = _by(wait_until("conclave_wireguard_tx_bytes", pairs), "instance", "peer")
        handshake = _by(wait_until("conclave_wireguard_handshake_age_seconds", pairs),
                        "instance", "peer")
        for node, inst in instance.items():
            others = names - {node}
            assert admitted[(inst,)] >= 2, f"{node}: admissions"
            assert peers[(inst,)] == 2, f"{node}: peers admitted"
            assert verifications[(inst,)] >= 2, f"{node}: verifications"
            for peer in others:
                assert 0 <= ages[(inst, peer)] < EVIDENCE_AGE_LIMIT, f"{node} -> {peer}: evidence age"
                assert rx[(inst, peer)] > 0 and tx[(inst, peer)] > 0, f"{node} <-> {peer}: WireGuard bytes"
                assert 0 <= handshake[(inst, peer)] < 3600, f"{node} <-> {peer}: handshake age"
            assert {p for (i, p) in ages if i == inst} == others        # no series for unknown peers

        # the ray token went from the head to each worker, counted by name only
        released = _by(prom.query('conclave_secrets_released_total{name="ray_token"}'), "instance")
        assert set(released) == {(instance[head["node_id"]],)}
        assert released[(instance[head["node_id"]],)] >= len(nodes) - 1
        # one scrape of the head's agent also carries vLLM's serving metrics
        upstream = _by(wait_until("conclave_upstream_up", 1), "instance")
        assert upstream == {(instance[head["node_id"]],): 1.0}
        vllm = wait_until('{__name__=~"vllm:.+"}', 1)
        assert {s["metric"]["instance"] for s in vllm} == {instance[head["node_id"]]}
        assert not prom.query("conclave_evictions_total > 0"), "no peer was evicted in a healthy cluster"
    assert time.monotonic() - started < 60
