"""A real Prometheus inside the head scrapes every node agent's metrics over the overlay (issue 6).

Prometheus (Debian package) runs in the head's network namespace, listening on 127.0.0.1 there,
with a temporary config and storage; it scrapes each agent's endpoint on the agent's OVERLAY
address (port 9469, the only address it binds), the way an operator's scraper inside the
deployment would. The head's agent appends vLLM's /metrics to its own exposition, so that one
target shows Conclave's and vLLM's serving metrics. Prometheus is stopped by PID and its files
are removed even when an assertion fails.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import in_netns

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(1800)]

METRICS_PORT = 9469              # runtime.agent.config.DEFAULT_METRICS_PORT: the cluster passes no other
PROM_PORT = 19090                # inside the head's namespace only
EVIDENCE_AGE_LIMIT = 2 * 600 + 30  # default re-attestation interval: an older peer would be evicted
_FETCH = ("import sys, urllib.request\n"
          "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")


class NetnsProm:
    """Queries a Prometheus that listens on 127.0.0.1 inside a network namespace."""

    def __init__(self, netns: str, port: int) -> None:
        self.netns, self.base_url = netns, f"http://127.0.0.1:{port}"

    def _get(self, path: str) -> str:
        res = in_netns(self.netns, [sys.executable, "-c", _FETCH, self.base_url + path], timeout=15)
        if res.returncode != 0:
            raise OSError(f"GET {path} in {self.netns}: rc={res.returncode} {res.stderr.strip()[-500:]}")
        return res.stdout

    def ready(self) -> bool:
        try:
            return "Ready" in self._get("/-/ready")
        except OSError:
            return False

    def query(self, promql: str) -> list[dict]:
        body = json.loads(self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        if body.get("status") != "success":
            raise AssertionError(f"prometheus query failed: {body}")
        return body["data"]["result"]

    def wait_until(self, promql: str, count: int, deadline: float) -> list[dict]:
        """Poll until the query returns at least `count` series; fail at `deadline` (monotonic)."""
        while True:
            result = self.query(promql)
            if len(result) >= count:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql!r}: {len(result)} series, wanted {count}: {result}")
            time.sleep(0.5)


@contextlib.contextmanager
def prometheus_in_netns(netns: str, targets: list[str]) -> Iterator[NetnsProm]:
    binary = shutil.which("prometheus")
    if binary is None:  # a missing dependency fails, it does not skip
        raise AssertionError("prometheus not installed: apt-get install prometheus")
    workdir = Path(tempfile.mkdtemp(prefix="conclave-prom-netns-"))
    config = workdir / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [{"job_name": "conclave", "scrape_interval": "2s", "scrape_timeout": "2s",
                            "static_configs": [{"targets": targets}]}],
    }))
    log = open(workdir / "prometheus.log", "wb")
    # `ip netns exec` execs prometheus in place: this PID is prometheus itself
    proc = subprocess.Popen(["ip", "netns", "exec", netns, binary, f"--config.file={config}",
                             f"--storage.tsdb.path={workdir / 'data'}",
                             f"--web.listen-address=127.0.0.1:{PROM_PORT}",
                             "--storage.tsdb.retention.time=1h"],
                            stdout=log, stderr=subprocess.STDOUT)
    prom = NetnsProm(netns, PROM_PORT)
    try:
        deadline = time.monotonic() + 20
        while not prom.ready():
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError("prometheus not ready within 20 s")
            time.sleep(0.3)
        yield prom
    except BaseException:
        log.flush()
        print((workdir / "prometheus.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _by(series: list[dict], *labels: str) -> dict[tuple, float]:
    return {tuple(s["metric"].get(k) for k in labels): float(s["value"][1]) for s in series}


def test_prometheus_in_the_head_scrapes_every_agent_over_the_overlay(ccluster):
    started = time.monotonic()
    nodes = ccluster.status["nodes"]
    head = next(n for n in nodes if n["role"] == "head")
    instance = {n["node_id"]: f"{n['overlay_ip']}:{METRICS_PORT}" for n in nodes}
    names = set(instance)
    with prometheus_in_netns(head["netns"], sorted(instance.values())) as prom:
        deadline = time.monotonic() + 30
        up = _by(prom.wait_until('up{job="conclave"} == 1', len(nodes), deadline), "instance")
        assert set(up) == {(i,) for i in instance.values()} and set(up.values()) == {1.0}

        admitted = _by(prom.wait_until('conclave_admissions_total{result="admitted",reason="ok"}',
                                       len(nodes), deadline), "instance")
        peers = _by(prom.wait_until("conclave_peers_admitted", len(nodes), deadline), "instance")
        verifications = _by(prom.wait_until('conclave_verification_seconds_count{tee="sim"}', len(nodes),
                                            deadline), "instance")
        pairs = len(nodes) * (len(nodes) - 1)
        ages = _by(prom.wait_until("conclave_peer_evidence_age_seconds", pairs, deadline), "instance", "peer")
        rx = _by(prom.wait_until("conclave_wireguard_rx_bytes", pairs, deadline), "instance", "peer")
        tx = _by(prom.wait_until("conclave_wireguard_tx_bytes", pairs, deadline), "instance", "peer")
        handshake = _by(prom.wait_until("conclave_wireguard_handshake_age_seconds", pairs, deadline),
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
        upstream = _by(prom.wait_until("conclave_upstream_up", 1, deadline), "instance")
        assert upstream == {(instance[head["node_id"]],): 1.0}
        vllm = prom.wait_until('{__name__=~"vllm:.+"}', 1, deadline)
        assert {s["metric"]["instance"] for s in vllm} == {instance[head["node_id"]]}
        assert not prom.query("conclave_evictions_total > 0"), "no peer was evicted in a healthy cluster"
    assert time.monotonic() - started < 60
