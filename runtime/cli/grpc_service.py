"""Run one gRPC service in the foreground until SIGTERM/SIGINT (`conclave rendezvous`, `conclave broker`)."""
from __future__ import annotations

import signal
import threading
from typing import Callable

from conclave.runtime import log as clog

STOP_GRACE_SECONDS = 2.0


def serve_until_signalled(add_servicer: Callable, host: str, port: int, *, what: str, workers: int = 4,
                          max_request_bytes: int | None = None) -> None:
    """Bind add_servicer's service on host:port (ConclaveError port_in_use when taken), announce it as
    `what`, serve until a signal, then stop within the grace period."""
    from conclave.overlay import rpc
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = rpc.server(workers=workers, max_request_bytes=max_request_bytes or rpc.MAX_REQUEST_BYTES)
    add_servicer(server)
    bound = rpc.bind(server, host, port)
    server.start()
    try:
        clog.progress(f"{what} listening on {host}:{bound}")
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(STOP_GRACE_SECONDS).wait(STOP_GRACE_SECONDS + 1)
    clog.progress(f"{what} stopped")
