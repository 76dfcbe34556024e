"""A small threaded HTTP server for the emulated vendor services (PCS, KDS, NVIDIA OCSP).

One lifecycle for all of them: start() on a given host:port (0: any free port), stop(), use as a
context manager, and set_down(True) to stop answering while keeping the port (how an unreachable
vendor looks to a client). Subclasses give the request handler class (`_handler()`); handlers
check `service.down` themselves.
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ThreadedHttpService:
    name = "service"

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._down = threading.Event()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self):
        if self._server is not None:
            return self
        self._server = ThreadingHTTPServer((self._host, self._port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"emulated-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """http://HOST:PORT of the running server."""
        if self._server is None:
            raise RuntimeError(f"emulated {self.name} is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def set_down(self, down: bool = True) -> None:
        """Stop answering (requests are dropped without a response) or answer again."""
        if down:
            self._down.set()
        else:
            self._down.clear()

    @property
    def down(self) -> bool:
        return self._down.is_set()
