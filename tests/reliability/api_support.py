"""Small HTTP helpers for the reliability tests against the cluster's OpenAI endpoint."""
from __future__ import annotations

import json
import re
import socket
import time
from urllib.parse import urlsplit

import httpx

MODEL = "smollm2"
HELLO = [{"role": "user", "content": "Say hello."}]


def headers(cluster, key: str | None = "default") -> dict:
    key = cluster.api_key if key == "default" else key
    return {"Authorization": f"Bearer {key}"} if key else {}


def server_root(cluster) -> str:
    """http://127.0.0.1:P (the endpoint without /v1)."""
    return cluster.base_url.removesuffix("/v1")


def chat(cluster, body: dict | bytes | str, *, key: str | None = "default", timeout: float = 120) -> httpx.Response:
    hdrs = {**headers(cluster, key), "Content-Type": "application/json"}
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(cluster.base_url + "/chat/completions", content=content, headers=hdrs, timeout=timeout)


def assert_openai_error(resp: httpx.Response, low: int = 400, high: int = 499) -> dict:
    assert low <= resp.status_code <= high, (resp.status_code, resp.text[:500])
    body = resp.json()
    err = body.get("error")
    assert isinstance(err, dict), body
    assert err.get("message") and err.get("type"), body
    return err


def assert_still_serving(cluster, timeout: float = 120) -> float:
    """A normal chat request succeeds; returns its latency in seconds."""
    t0 = time.monotonic()
    resp = chat(cluster, {"model": MODEL, "messages": HELLO, "max_tokens": 4, "temperature": 0}, timeout=timeout)
    assert resp.status_code == 200, resp.text[:500]
    assert resp.json()["choices"][0]["message"]["content"]
    return time.monotonic() - t0


METRIC_RE = re.compile(r'^(vllm:[a-z_]+)\{([^}]*)\} ([0-9.e+-]+)$')


def metrics(cluster) -> dict[str, float]:
    """vLLM's Prometheus gauges/counters, summed over labels except finished_reason (kept in the key)."""
    text = httpx.get(server_root(cluster) + "/metrics", headers=headers(cluster), timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        reason = re.search(r'finished_reason="([^"]+)"', labels)
        key = f"{name}:{reason.group(1)}" if reason else name
        out[key] = out.get(key, 0.0) + float(value)
    return out


def wait_until(pred, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def raw_streaming_request(cluster, body: dict, *, rcvbuf: int = 4096) -> socket.socket:
    """Send a streaming request on a socket with a tiny receive buffer, and return it unread."""
    url = urlsplit(cluster.base_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect((url.hostname, url.port))
    payload = json.dumps(body).encode()
    head = (f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            f"Authorization: Bearer {cluster.api_key}\r\nAccept: text/event-stream\r\n\r\n").encode()
    sock.sendall(head + payload)
    return sock
