"""runtime.metrics: values move as the agent's calls happen; serving binds only where told."""
from __future__ import annotations

import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from conclave.runtime import metrics as m
from conclave.runtime.errors import ConclaveError


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Peer:
    latest_handshake: float | None
    rx_bytes: int
    tx_bytes: int


def value(reg: CollectorRegistry, metric: str, **labels) -> float | None:
    return reg.get_sample_value(metric, labels)


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000_000.0)


@pytest.fixture
def metrics(clock: Clock) -> m.ConclaveMetrics:
    return m.ConclaveMetrics(CollectorRegistry(), clock=clock)


def test_admissions_counted_by_result_and_reason(metrics):
    reg = metrics.registry
    assert value(reg, "conclave_admissions_total", result="admitted", reason="ok") is None
    metrics.record_admission("admitted", "ok")
    metrics.record_admission("admitted", "ok")
    metrics.record_admission("rejected", "measurement_mismatch")
    assert value(reg, "conclave_admissions_total", result="admitted", reason="ok") == 2
    assert value(reg, "conclave_admissions_total", result="rejected",
                 reason="measurement_mismatch") == 1
    with pytest.raises(ValueError):
        metrics.record_admission("maybe", "ok")


def test_peers_admitted_gauge(metrics):
    metrics.set_peers_admitted(3)
    assert value(metrics.registry, "conclave_peers_admitted") == 3
    metrics.set_peers_admitted(1)
    assert value(metrics.registry, "conclave_peers_admitted") == 1


def test_evidence_age_grows_with_clock_and_resets_on_reverification(metrics, clock):
    reg = metrics.registry
    metrics.record_evidence_verified("node-b")
    assert value(reg, "conclave_peer_evidence_age_seconds", peer="node-b") == 0
    clock.now += 42
    assert value(reg, "conclave_peer_evidence_age_seconds", peer="node-b") == 42
    metrics.record_evidence_verified("node-b")
    assert value(reg, "conclave_peer_evidence_age_seconds", peer="node-b") == 0


def test_eviction_counts_and_drops_peer_series(metrics, clock):
    reg = metrics.registry
    metrics.record_evidence_verified("node-c")
    metrics.update_wireguard({"node-c": Peer(clock.now - 5, 10, 20)})
    metrics.record_eviction("node-c", "reattestation_failed")
    assert value(reg, "conclave_evictions_total", reason="reattestation_failed") == 1
    assert value(reg, "conclave_peer_evidence_age_seconds", peer="node-c") is None
    assert value(reg, "conclave_wireguard_rx_bytes", peer="node-c") is None


def test_wireguard_gauges_follow_observed_state(metrics, clock):
    reg = metrics.registry
    metrics.update_wireguard({"b": Peer(clock.now - 7, 100, 200), "c": Peer(None, 0, 148)})
    assert value(reg, "conclave_wireguard_handshake_age_seconds", peer="b") == 7
    assert value(reg, "conclave_wireguard_handshake_never", peer="b") == 0
    assert value(reg, "conclave_wireguard_rx_bytes", peer="b") == 100
    assert value(reg, "conclave_wireguard_tx_bytes", peer="b") == 200
    assert value(reg, "conclave_wireguard_handshake_age_seconds", peer="c") is None
    assert value(reg, "conclave_wireguard_handshake_never", peer="c") == 1
    clock.now += 3
    metrics.update_wireguard({"b": Peer(clock.now - 1, 150, 260)})  # c removed from the device
    assert value(reg, "conclave_wireguard_handshake_age_seconds", peer="b") == 1
    assert value(reg, "conclave_wireguard_rx_bytes", peer="b") == 150
    assert value(reg, "conclave_wireguard_handshake_never", peer="c") is None


def test_wireguard_accepts_overlay_observed_peer(metrics, clock):
    from conclave.overlay.device import ObservedPeer
    from conclave.overlay.keys import WgPrivateKey

    pub = WgPrivateKey.generate().public_key()
    observed = ObservedPeer(public_key=pub, allowed_ips=("100.64.0.2/32",), endpoint=None,
                            psk_fingerprint=None, keepalive=25, latest_handshake=clock.now - 2,
                            rx_bytes=5, tx_bytes=6)
    metrics.update_wireguard({"node-b": observed})
    assert value(metrics.registry, "conclave_wireguard_handshake_age_seconds", peer="node-b") == 2


def test_wireguard_from_observed_device_names_peers(metrics, clock):
    from conclave.overlay.device import ObservedDevice, ObservedPeer
    from conclave.overlay.keys import WgPrivateKey

    known, stray = (WgPrivateKey.generate().public_key() for _ in range(2))

    def peer(pub, rx):
        return ObservedPeer(public_key=pub, allowed_ips=(), endpoint=None, psk_fingerprint=None,
                            keepalive=0, latest_handshake=None, rx_bytes=rx, tx_bytes=0)

    device = ObservedDevice(interface="wgc0", listen_port=51820,
                            peers={known: peer(known, 11), stray: peer(stray, 22)})
    metrics.update_wireguard_from_device(device, {known: "node-b"})
    reg = metrics.registry
    assert value(reg, "conclave_wireguard_rx_bytes", peer="node-b") == 11
    assert value(reg, "conclave_wireguard_rx_bytes",
                 peer="unknown:" + stray.to_base64()[:8]) == 22


def test_verification_histogram_per_tee(metrics):
    reg = metrics.registry
    metrics.observe_verification("tdx", 0.03)
    metrics.observe_verification("tdx", 2.0)
    metrics.observe_verification("snp", 0.004)
    assert value(reg, "conclave_verification_seconds_count", tee="tdx") == 2
    assert value(reg, "conclave_verification_seconds_sum", tee="tdx") == pytest.approx(2.03)
    assert value(reg, "conclave_verification_seconds_bucket", tee="tdx", le="0.05") == 1
    assert value(reg, "conclave_verification_seconds_bucket", tee="snp", le="0.005") == 1
    with metrics.time_verification("nvgpu"):
        pass
    assert value(reg, "conclave_verification_seconds_count", tee="nvgpu") == 1


def test_secrets_released_by_name_never_value(metrics):
    secret_value = "c2VjcmV0LXJheS10b2tlbi1kby1ub3QtbGVhaw=="
    metrics.record_secret_released("ray_token")
    metrics.record_secret_released("ray_token")
    metrics.record_secret_released("wg_psk")
    reg = metrics.registry
    assert value(reg, "conclave_secrets_released_total", name="ray_token") == 2
    assert value(reg, "conclave_secrets_released_total", name="wg_psk") == 1
    # A caller passing a value by mistake is refused: names are short lowercase identifiers.
    with pytest.raises(ValueError):
        metrics.record_secret_released(secret_value)
    assert secret_value.encode() not in metrics.exposition()


def test_default_instance_is_shared_and_not_global_registry():
    from prometheus_client import REGISTRY

    assert m.default() is m.default()
    assert m.default().registry is not REGISTRY


def test_exposition_parses(metrics):
    metrics.record_admission("admitted", "ok")
    metrics.update_wireguard({"b": Peer(None, 1, 2)})
    names = {f.name for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert {"conclave_admissions", "conclave_peers_admitted", "conclave_wireguard_rx_bytes",
            "conclave_verification_seconds", "conclave_peer_evidence_age_seconds"} <= names


@pytest.mark.parametrize("address", ["0.0.0.0", "::", ""])
def test_wildcard_bind_refused_by_default(metrics, address):
    with pytest.raises(ConclaveError) as exc:
        m.serve_metrics(metrics.registry, address, 0)
    assert exc.value.reason == "metrics_bind_refused"


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


def test_serves_on_loopback_and_values_change(metrics):
    server = m.serve_metrics(metrics.registry, "127.0.0.1", 0)
    try:
        assert server.address == "127.0.0.1"
        url = f"http://127.0.0.1:{server.port}/metrics"
        ctype, body = _get(url)
        assert ctype.startswith("text/plain; version=0.0.4")
        assert 'conclave_evictions_total{reason="tcb_revoked"}' not in body
        metrics.record_eviction("x", "tcb_revoked")
        _, body = _get(url)
        assert 'conclave_evictions_total{reason="tcb_revoked"} 1.0' in body
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
        assert err.value.code == 404
    finally:
        server.close()


def test_merged_with_upstream_vllm_exposition(metrics):
    # A real second server standing in for vLLM's /metrics (its metrics are named vllm:*).
    upstream_reg = CollectorRegistry()
    from prometheus_client import Counter

    Counter("vllm:request_success", "vLLM finished requests", ["finished_reason"],
            registry=upstream_reg).labels("stop").inc(7)
    upstream = m.serve_metrics(upstream_reg, "127.0.0.1", 0)
    head = m.serve_metrics(metrics.registry, "127.0.0.1", 0,
                           upstream_url=f"http://127.0.0.1:{upstream.port}/metrics")
    try:
        metrics.record_admission("admitted", "ok")
        _, body = _get(f"http://127.0.0.1:{head.port}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["conclave_upstream_up"].samples[0].value == 1
        assert families["vllm:request_success"].samples[0].value == 7
        assert "conclave_admissions" in families
        upstream.close()
        upstream = None
        _, body = _get(f"http://127.0.0.1:{head.port}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["conclave_upstream_up"].samples[0].value == 0
        assert "vllm:request_success" not in families
        assert "conclave_admissions" in families
    finally:
        head.close()
        if upstream is not None:
            upstream.close()
