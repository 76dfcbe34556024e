"""A loopback OpenAI-compatible completions server with known, controlled timing.

Streams `max_tokens` chunks: the first after `ttft_s`, each next one `itl_s` later, then a
usage-only chunk and `[DONE]` (like vLLM with stream_options.include_usage). Prompts that are
the strings "FAIL400" / "FAIL500" get that HTTP status; a wrong API key gets 401. Every
request is recorded (payload and arrival time) so tests can check what the harness sent.
"""
from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubOpenAI:
    def __init__(self, *, ttft_s: float = 0.05, itl_s: float = 0.01, api_key: str | None = None,
                 send_usage: bool = True, model: str = "stub-model",
                 tls: tuple[str, str] | None = None) -> None:
        """tls: (certfile, keyfile) to serve https instead of http."""
        self.ttft_s, self.itl_s, self.api_key, self.send_usage, self.model = ttft_s, itl_s, api_key, send_usage, model
        self.received: list[tuple[float, dict]] = []
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # close after each response: the stream ends at EOF

            def log_message(self, *args):  # quiet
                pass

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                return stub.api_key is None or self.headers.get("Authorization") == f"Bearer {stub.api_key}"

            def do_GET(self):
                if not self._authorized():
                    return self._json(401, {"error": "unauthorized"})
                if self.path == "/v1/models":
                    return self._json(200, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})
                self._json(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub._lock:
                    stub.received.append((time.perf_counter(), body))
                if not self._authorized():
                    return self._json(401, {"error": "unauthorized"})
                if self.path != "/v1/completions":
                    return self._json(404, {"error": "not found"})
                if body.get("prompt") == "FAIL400":
                    return self._json(400, {"error": "bad request"})
                if body.get("prompt") == "FAIL500":
                    return self._json(500, {"error": "server error"})
                with stub._lock:
                    stub.active += 1
                    stub.max_active = max(stub.max_active, stub.active)
                try:
                    self._stream(body)
                finally:
                    with stub._lock:
                        stub.active -= 1

            def _stream(self, body: dict) -> None:
                n = int(body.get("max_tokens", 16))
                prompt = body.get("prompt")
                prompt_tokens = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                start = time.perf_counter()
                try:
                    for i in range(n):
                        # absolute schedule: chunk i is due at ttft + i*itl after the request arrived
                        time.sleep(max(0.0, start + stub.ttft_s + i * stub.itl_s - time.perf_counter()))
                        chunk = {"id": "x", "object": "text_completion", "model": stub.model,
                                 "choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    if stub.send_usage:
                        usage = {"id": "x", "object": "text_completion", "model": stub.model, "choices": [],
                                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                           "total_tokens": prompt_tokens + n}}
                        self.wfile.write(f"data: {json.dumps(usage)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, name="stub-openai", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "StubOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
