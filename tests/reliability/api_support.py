"""Small HTTP helpers for the reliability tests against the cluster's OpenAI endpoint."""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx

from serving import harness

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


# -- one streaming request watched through a fault (tests/confidential/test_faults.py, test_recovery.py) --
ERROR_WITHIN = 30.0        # an in-flight request ends within this after a fault
PROMPT = "Write a long story about a dragon who learns to fly over the mountains."
REFERENCE_TOKENS = 120
STREAM_TOKENS = 1200       # long enough to still be streaming when the fault lands
CHUNKS_BEFORE_FAULT = 10
RECOVERY_WITHIN = 360.0    # host back -> serving again (engine restart: ~60-120 s on 2 busy cores)


class Stream(threading.Thread):
    """One greedy streaming completion; records the text, how it ended and when."""

    def __init__(self, cluster, max_tokens: int):
        super().__init__(daemon=True)
        self.cluster, self.max_tokens = cluster, max_tokens
        self.text, self.chunks = "", 0
        self.started = threading.Event()
        self.outcome: str | None = None      # "done" | "error_event" | "cut" | "http_<status>"
        self.error: dict | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": self.max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True}
        try:
            with httpx.stream("POST", self.cluster.base_url + "/completions", json=body, verify=self.cluster.verify,
                              headers={"Authorization": f"Bearer {self.cluster.api_key}"},
                              timeout=httpx.Timeout(30, read=120)) as resp:
                if resp.status_code != 200:
                    self.outcome = f"http_{resp.status_code}"
                    return
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        self.outcome = "done"
                        return
                    event = json.loads(data)
                    if "error" in event:
                        self.outcome, self.error = "error_event", event["error"]
                        return
                    if not event.get("choices"):   # the head's receipt event (choices == []) before [DONE]
                        continue
                    self.text += event["choices"][0]["text"]
                    self.chunks += 1
                    if self.chunks >= CHUNKS_BEFORE_FAULT:
                        self.started.set()
            self.outcome = self.outcome or "cut"
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            self.outcome, self.error = "cut", {"exception": type(exc).__name__}
        finally:
            self.ended_at = time.monotonic()
            self.started.set()


def cluster_status(cluster) -> dict:
    return json.loads(harness.cli(["status", "--json"], cluster.env).stdout)


def wait_serving(cluster, recoveries: int) -> dict:
    """Until status is ready+ok with at least `recoveries` recoveries and a chat answers."""
    def ready():
        st = cluster_status(cluster)
        health = st.get("health") or {}
        ok = st["phase"] == "ready" and health.get("status") == "ok" and health.get("recoveries", 0) >= recoveries
        return st if ok else None
    st = wait_until(ready, RECOVERY_WITHIN, f"cluster ready again after {recoveries} recoveries", interval=2.0)
    assert "Paris" in harness.chat_answer(cluster)
    return st


def public_health(cluster) -> int:
    try:
        return httpx.get(cluster.base_url.rsplit("/v1", 1)[0] + "/health", timeout=10, verify=cluster.verify,
                         headers={"Authorization": f"Bearer {cluster.api_key}"}).status_code
    except httpx.HTTPError:
        return 0


def greedy_reference(cluster) -> str:
    """The greedy text every partial stream must be a prefix of (or extend)."""
    resp = cluster.post("/completions", {"model": "smollm2", "prompt": PROMPT, "max_tokens": REFERENCE_TOKENS,
                                         "temperature": 0, "ignore_eos": True})
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["text"]


def start_stream(cluster) -> Stream:
    stream = Stream(cluster, STREAM_TOKENS)
    stream.start()
    assert stream.started.wait(120), "the stream did not start"
    assert stream.outcome is None, f"the stream ended before the fault: {stream.outcome} {stream.error}"
    return stream


def assert_ended_cleanly(stream: Stream, fault_at: float, reference: str, *, must_fail: bool) -> float:
    stream.join(ERROR_WITHIN + 5)
    assert not stream.is_alive(), f"the in-flight stream still hangs {ERROR_WITHIN:.0f}s after the fault"
    took = stream.ended_at - fault_at
    assert took <= ERROR_WITHIN, f"the in-flight stream ended {took:.1f}s after the fault"
    n = min(len(stream.text), len(reference))
    assert stream.text[:n] == reference[:n], "the streamed text diverged from the greedy answer (corrupted)"
    if must_fail:
        assert stream.outcome in ("error_event", "cut"), (stream.outcome, stream.error)
    if stream.outcome == "error_event":
        # ours (stage_lost / upstream_lost) or, when vLLM notices the dead stage first, the engine's own
        # OpenAI-shaped error event: either way a readable message, never a silent cut mid-event
        assert stream.error.get("message") and stream.error.get("type"), stream.error
    print(f"\nin-flight stream: {stream.outcome} {stream.error or ''} {took:.1f}s after the fault, "
          f"{stream.chunks} chunks")
    return took
