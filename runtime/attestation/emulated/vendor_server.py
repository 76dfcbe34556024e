"""The HTTP side of the emulated vendor services (Intel PCS, AMD KDS): a small threaded server
on a given host:port that a test or the local orchestrator starts and stops, and that can be
told to stop answering while it keeps its port (as an unreachable vendor looks to a client).

Subclasses implement `respond(path, query)` -> (status, body, headers). Everything served is
public vendor-shaped data; nothing secret passes through here.
"""
from __future__ import annotations

import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Mapping

from conclave.runtime.attestation.emulated.http_service import ThreadedHttpService


class VendorServer(ThreadedHttpService):
    """Base class: start(), stop(), base_url, set_down(True/False), requests (paths seen)."""

    name = "vendor"

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.requests: list[str] = []

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                service.requests.append(self.path)
                if service.down:
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

        return Handler

    @property
    def base_url(self) -> str:
        return self.origin

    def respond(self, path: str, query: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        raise NotImplementedError
