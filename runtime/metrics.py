"""Prometheus metrics of Conclave nodes: one definition, used by the node agent and the head.

Why one module: metric names and label sets are an operator-facing interface (dashboards,
alerts). Defining them once keeps the agent and the head from drifting apart, and keeps labels
to stable values only: reasons come from the reason enums, peers are node names, secrets are
named by their purpose — never a secret value, key or nonce.

Age-like values (time since a peer's last verified evidence, since its last WireGuard
handshake) are computed at scrape time from stored timestamps by a custom collector, so a peer
that stops re-attesting shows a growing age without anybody having to update a gauge.

Serving: `serve_metrics(registry, address, port)` binds exactly the address given (default
127.0.0.1; a wildcard address needs `allow_wildcard=True`). `serve_metrics(...,
upstream_url=...)` also appends another exposition fetched at scrape time — the head passes
vLLM's own `/metrics` URL so one scrape returns Conclave's and vLLM's serving metrics.
"""
from __future__ import annotations

import ipaddress
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Mapping, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from conclave.runtime.errors import ConclaveError

# Prometheus text format 0.0.4: understood by every Prometheus and by vLLM's exposition.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_ADDRESS = "127.0.0.1"
UPSTREAM_TIMEOUT_S = 5.0
VERIFICATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ADMISSION_RESULTS = ("admitted", "rejected")
_SECRET_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class ObservedPeerLike(Protocol):
    """What the WireGuard observed state gives per peer (overlay.device.ObservedPeer fits)."""

    latest_handshake: float | None
    rx_bytes: int
    tx_bytes: int


@dataclass
class _WgSample:
    latest_handshake: float | None
    rx_bytes: int
    tx_bytes: int


class _AgeCollector(Collector):
    """Scrape-time ages from stored timestamps (evidence verification, WireGuard handshakes)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.evidence_verified_at: dict[str, float] = {}
        self.wireguard: dict[str, _WgSample] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = self._clock()
        with self._lock:
            evidence = dict(self.evidence_verified_at)
            wg = dict(self.wireguard)
        age = GaugeMetricFamily("conclave_peer_evidence_age_seconds",
                                "Seconds since this peer's evidence was last verified",
                                labels=["peer"])
        for peer, at in sorted(evidence.items()):
            age.add_metric([peer], max(0.0, now - at))
        yield age
        hs = GaugeMetricFamily("conclave_wireguard_handshake_age_seconds",
                               "Seconds since the last WireGuard handshake with this peer "
                               "(peers that never completed one are absent; see _never)",
                               labels=["peer"])
        never = GaugeMetricFamily("conclave_wireguard_handshake_never",
                                  "1 if no WireGuard handshake with this peer has completed yet",
                                  labels=["peer"])
        rx = GaugeMetricFamily("conclave_wireguard_rx_bytes", "Bytes received from this peer "
                               "as reported by the WireGuard device", labels=["peer"])
        tx = GaugeMetricFamily("conclave_wireguard_tx_bytes", "Bytes sent to this peer "
                               "as reported by the WireGuard device", labels=["peer"])
        for peer, sample in sorted(wg.items()):
            if sample.latest_handshake is not None:
                hs.add_metric([peer], max(0.0, now - sample.latest_handshake))
            never.add_metric([peer], 1.0 if sample.latest_handshake is None else 0.0)
            rx.add_metric([peer], float(sample.rx_bytes))
            tx.add_metric([peer], float(sample.tx_bytes))
        yield hs
        yield never
        yield rx
        yield tx

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # names are fixed above; describing would call collect at registration


NODE_STATES = ("booting", "attested", "meshed", "shard_verified", "ray_joined", "serving", "degraded")

class ConclaveMetrics:
    """The metric objects and the small recording helpers the agent and head call.

    Each instance owns its registry (tests make their own; a process uses `default()`).
    `clock` returns unix seconds; it is a parameter so tests control ages.
    """

    def __init__(self, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self.admissions = Counter("conclave_admissions_total",
                                  "Peer admission decisions by result and reason",
                                  ["result", "reason"], registry=self.registry)
        self.peers_admitted = Gauge("conclave_peers_admitted",
                                    "Peers currently admitted to the overlay",
                                    registry=self.registry)
        self.evictions = Counter("conclave_evictions_total", "Admitted peers evicted, by reason",
                                 ["reason"], registry=self.registry)
        self.verification_seconds = Histogram("conclave_verification_seconds",
                                              "Evidence verification latency per TEE type",
                                              ["tee"], buckets=VERIFICATION_BUCKETS,
                                              registry=self.registry)
        self.secrets_released = Counter("conclave_secrets_released_total",
                                        "Secrets released HPKE-sealed to attested peers, by name",
                                        ["name"], registry=self.registry)
        self.device_restarts = Counter("conclave_wireguard_device_restarts_total",
                                       "WireGuard devices recreated after their daemon or interface died, by reason",
                                       ["reason"], registry=self.registry)
        self.node_state = Gauge("conclave_node_state",
                                "This node's stage lifecycle state (1 for the current one): booting, attested, meshed, "
                                "shard_verified, ray_joined, serving, degraded", ["state"], registry=self.registry)
        self.node_degraded = Gauge("conclave_node_degraded_reasons",
                                   "Reasons this node (the head: the pipeline) does not serve now (1 each)",
                                   ["reason"], registry=self.registry)
        self.tcb_grace_until = Gauge("conclave_peer_tcb_grace_until_seconds",
                                     "Unix time until which this peer's OutOfDate TCB is accepted only under the "
                                     "policy's tcb_grace_until (absent: not on grace)", ["peer"],
                                     registry=self.registry)
        self._ages = _AgeCollector(clock)
        self.registry.register(self._ages)

    # -- admission and eviction -------------------------------------------------------------
    def record_admission(self, result: str, reason: str) -> None:
        """result is 'admitted' or 'rejected'; reason is a stable reason string ('ok' if none)."""
        if result not in ADMISSION_RESULTS:
            raise ValueError(f"admission result must be one of {ADMISSION_RESULTS}")
        self.admissions.labels(result=result, reason=str(reason)).inc()

    def set_peers_admitted(self, count: int) -> None:
        self.peers_admitted.set(count)

    def record_evidence_verified(self, peer: str, at: float | None = None) -> None:
        """Called after a peer's evidence verified (admission or re-attestation)."""
        with self._ages._lock:
            self._ages.evidence_verified_at[peer] = self._clock() if at is None else at

    def record_tcb_grace(self, peer: str, until: float | None) -> None:
        """After a peer's evidence verified: the end of its TCB grace (unix seconds), None if not on grace."""
        if until is None:
            try:
                self.tcb_grace_until.remove(peer)
            except KeyError:
                pass
        else:
            self.tcb_grace_until.labels(peer=peer).set(float(until))

    def record_eviction(self, peer: str, reason: str) -> None:
        """Counts the eviction and drops every per-peer series of that peer."""
        self.evictions.labels(reason=str(reason)).inc()
        self.forget_peer(peer)

    def record_device_restart(self, reason: str) -> None:
        """reason: an overlay.reasons.DeviceReason string (daemon exited, socket or interface gone)."""
        self.device_restarts.labels(reason=str(reason)).inc()

    def forget_peer(self, peer: str) -> None:
        self.record_tcb_grace(peer, None)
        with self._ages._lock:
            self._ages.evidence_verified_at.pop(peer, None)
            self._ages.wireguard.pop(peer, None)

    # -- node lifecycle ---------------------------------------------------------------------
    def set_node_state(self, state: str, reasons: Iterable[str] = ()) -> None:
        """One series per known state (1 for the current one) and one per current reason."""
        for known in NODE_STATES:
            self.node_state.labels(state=known).set(1.0 if known == state else 0.0)
        self.node_degraded.clear()
        for reason in sorted(set(reasons)):
            self.node_degraded.labels(reason=str(reason)).set(1.0)

    # -- verification latency ---------------------------------------------------------------
    def observe_verification(self, tee: str, seconds: float) -> None:
        self.verification_seconds.labels(tee=str(tee)).observe(seconds)

    def time_verification(self, tee: str):
        """Context manager: `with metrics.time_verification("tdx"): verify(...)`."""
        return self.verification_seconds.labels(tee=str(tee)).time()

    # -- secrets ----------------------------------------------------------------------------
    def record_secret_released(self, name: str) -> None:
        """name is the secret's purpose (e.g. 'wg_psk', 'ray_token', 'model_key'), never a value.

        Names must be short lowercase identifiers, so a value passed by mistake (base64, hex
        key material) is refused rather than exported as a label.
        """
        if not _SECRET_NAME.fullmatch(name):
            raise ValueError("secret name must match [a-z][a-z0-9_]{0,31} (a purpose, not a value)")
        self.secrets_released.labels(name=name).inc()

    # -- WireGuard observed state -----------------------------------------------------------
    def update_wireguard(self, peers: dict[str, ObservedPeerLike]) -> None:
        """Replace the WireGuard samples with the device's observed state.

        `peers` maps a peer name to its observed peer (overlay.device.ObservedPeer). Peers absent
        from the map disappear from the WireGuard series (removed from the device).
        """
        fresh = {name: _WgSample(p.latest_handshake, int(p.rx_bytes), int(p.tx_bytes))
                 for name, p in peers.items()}
        with self._ages._lock:
            self._ages.wireguard = fresh

    def update_wireguard_from_device(self, observed, names: Mapping[object, str]) -> None:
        """Feed an overlay.device.ObservedDevice; `names` maps each peer public key to a name.

        A device peer without a name (it should not exist: only admitted peers are configured)
        is still exported, labelled "unknown:<first 8 base64 chars of its public key>", so it
        shows up on a dashboard instead of hiding.
        """
        peers = {}
        for key, peer in observed.peers.items():
            name = names.get(key)
            if name is None:
                name = "unknown:" + key.to_base64()[:8]
            peers[name] = peer
        self.update_wireguard(peers)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


_default: ConclaveMetrics | None = None
_default_lock = threading.Lock()


def default() -> ConclaveMetrics:
    """The process-wide instance (its own registry, not prometheus_client's global one)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ConclaveMetrics()
        return _default


# -- HTTP serving ---------------------------------------------------------------------------
def _is_wildcard(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return address in ("", "*")


def fetch_exposition(url: str, timeout: float = UPSTREAM_TIMEOUT_S) -> bytes:
    """GET another Prometheus text exposition (vLLM's /metrics), asking for format 0.0.4.
    `http+unix://<percent-encoded socket path>/metrics` reaches a server on a unix socket."""
    if url.startswith("http+unix://"):
        return _fetch_unix(url, timeout)
    request = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - operator URL
        return response.read()


def _fetch_unix(url: str, timeout: float) -> bytes:
    from urllib.parse import unquote, urlsplit
    parts = urlsplit(url)
    status, body = unix_http_get(unquote(parts.netloc), parts.path or "/",
                                 {"Accept": "text/plain;version=0.0.4"}, timeout)
    if status != 200:
        raise OSError(f"upstream answered {status}")
    return body


def unix_http_get(socket_path: str, path: str, headers: dict, timeout: float) -> tuple[int, bytes]:
    """GET `path` from an HTTP server on the unix socket `socket_path` -> (status, body); OSError
    when it cannot be reached or does not speak HTTP."""
    import http.client
    import socket

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(socket_path)
            except OSError:
                sock.close()
                raise
            self.sock = sock

    conn = _Conn("localhost", timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except http.client.HTTPException as exc:
        raise OSError(str(exc)) from None
    finally:
        conn.close()


def merged_exposition(registry: CollectorRegistry, upstream_url: str | None,
                      fetch: Callable[[str], bytes] = fetch_exposition) -> bytes:
    """Our exposition, then the upstream one; `conclave_upstream_up` says whether it came.

    Metric names cannot collide: ours are `conclave_*`, vLLM's are `vllm:*`. An upstream that
    is down never hides our own metrics.
    """
    ours = generate_latest(registry)
    if upstream_url is None:
        return ours
    try:
        theirs = fetch(upstream_url)
        up = 1
    except (OSError, urllib.error.URLError, ValueError):
        theirs, up = b"", 0
    if theirs and not theirs.endswith(b"\n"):
        theirs += b"\n"
    status = (b"# HELP conclave_upstream_up 1 if the upstream /metrics (vLLM) answered\n"
              b"# TYPE conclave_upstream_up gauge\n"
              b"conclave_upstream_up " + str(up).encode() + b"\n")
    # An upstream in OpenMetrics ends with "# EOF", which must not appear mid-document.
    theirs = b"\n".join(line for line in theirs.split(b"\n") if line.strip() != b"# EOF")
    return ours + status + theirs


class MetricsServer:
    """A running /metrics endpoint; `close()` stops it. `port` is the bound port."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.address, self.port = server.server_address[:2]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, address: str = DEFAULT_ADDRESS, port: int = 0, *,
                  upstream_url: str | None = None, allow_wildcard: bool = False) -> MetricsServer:
    """Serve GET /metrics on (address, port) in a daemon thread; port 0 picks a free one.

    Nodes pass their overlay address: metrics are for the operator's scraper inside the
    deployment, not for the underlay. A wildcard bind (0.0.0.0, ::) is refused unless asked for.
    """
    if _is_wildcard(address) and not allow_wildcard:
        raise ConclaveError("metrics_bind_refused",
                            f"refusing to serve metrics on wildcard address {address!r}; "
                            "pass a specific address (the overlay or loopback address)")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            body = merged_exposition(registry, upstream_url)
            self.send_response(200)
            self.send_header("Content-Type", TEXT_CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet access log
            return

    family = ThreadingHTTPServer.address_family
    if ":" in address:
        import socket

        family = socket.AF_INET6

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    try:
        server = Server((address, port), Handler)
    except OSError as exc:
        raise ConclaveError("metrics_bind_failed",
                            f"cannot bind metrics server to {address}:{port}: {exc}") from exc
    thread = threading.Thread(target=server.serve_forever, name="conclave-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
