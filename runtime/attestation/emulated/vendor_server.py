"""The HTTP side of the emulated vendor services (Intel PCS, AMD KDS): a small threaded server
on a given host:port that a test or the local orchestrator starts and stops, and that can be
told to stop answering while it keeps its port (as an unreachable vendor looks to a client).

Subclasses implement `respond(path, query)` -> (status, body, headers). Everything served is
public vendor-shaped data; nothing secret passes through here.
"""
from __future__ import annotations

import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Mapping


class VendorServer:
    """Base class: start(), stop(), base_url, set_down(True/False), requests (paths seen)."""

    name = "vendor"

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._down = threading.Event()
        self.requests: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "VendorServer":
        if self._server is not None:
            return self
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                service.requests.append(self.path)
                if service._down.is_set():
                    self.close_connection = True   # no answer at all: the client sees a dropped link
                    return
                split = urllib.parse.urlsplit(self.path)
                query = {k: v[-1] for k, v in urllib.parse.parse_qs(split.query).items()}
                try:
                    status, body, headers = service.respond(split.path, query)
                except Exception:  # an emulator bug must show as a server error, not a hang
                    status, body, headers = 500, b"internal error", {}
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
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

    def __enter__(self) -> "VendorServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"emulated {self.name} is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- controls ----------------------------------------------------------------------------
    def set_down(self, down: bool = True) -> None:
        """Stop answering (requests are dropped without a response) or answer again."""
        if down:
            self._down.set()
        else:
            self._down.clear()

    @property
    def down(self) -> bool:
        return self._down.is_set()

    def respond(self, path: str, query: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        raise NotImplementedError
