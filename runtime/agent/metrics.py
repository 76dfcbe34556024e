"""Prometheus metrics of the node agent, served on the OVERLAY address only."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._admissions = Histogram("conclave_admission_seconds", "Challenge to admitted decision",
                                     ["kind"], registry=self.registry,
                                     buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self._rejections = Counter("conclave_peer_rejections_total", "Peers rejected at admission",
                                   ["reason"], registry=self.registry)
        self._evictions = Counter("conclave_peer_evictions_total", "Admitted peers evicted",
                                  ["reason"], registry=self.registry)
        self._secret_refusals = Counter("conclave_secret_refusals_total", "Secret requests refused",
                                        ["reason"], registry=self.registry)
        self._server = None

    def admitted(self, seconds: float, reattest: bool) -> None:
        self._admissions.labels("reattest" if reattest else "join").observe(seconds)

    def rejected(self, reason: str) -> None:
        self._rejections.labels(reason).inc()

    def evicted(self, reason: str) -> None:
        self._evictions.labels(reason).inc()

    def secret_refused(self, reason: str) -> None:
        self._secret_refusals.labels(reason).inc()

    def serve(self, address: str, port: int) -> None:
        result = start_http_server(port, addr=address, registry=self.registry)
        self._server = result[0] if isinstance(result, tuple) else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
