"""PlainFront (the plain modes' public endpoint) in front of a fake vLLM: the guard decides what
reaches the engine (API key on every route but /health, allowlist, 4 MiB bodies), and a stream
whose engine connection breaks ends with an SSE error event instead of a silent cut."""
from __future__ import annotations

import json
import logging
import pickle
import socket
import time

import httpx
import openai
import pytest

from conclave.runtime.serving.api_guard import ApiKey, split_complete_events
from conclave.runtime.serving.plain_front import PlainFront

from front_support import API_KEY, OPEN_ROUTES, FakeVllm, FakeVllmProcess, free_port, wait_until

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
KEY = {"Authorization": f"Bearer {API_KEY}"}
TEN_MB = 10_000_000

# one route of every class vLLM 0.32 exposes: OpenAI (/v1), metrics/version, the unguarded
# inference and admin routes, FastAPI's docs, health's sibling /ping, unknown paths and path tricks
ROUTE_CLASSES = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
                 ("GET", "/metrics"), ("GET", "/version"), *OPEN_ROUTES, ("GET", "/redoc"),
                 ("GET", "/no/such/route"), ("GET", "//v1/models"), ("GET", "/V1/models"),
                 ("GET", "/%761/models"), ("HEAD", "/v1/models"), ("OPTIONS", "/v1/chat/completions"),
                 ("DELETE", "/v1/models")]


def _client(front, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=front.url + "/v1", api_key=api_key, max_retries=0, timeout=10)


def _raw(front: PlainFront, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    """One request with the path exactly as given (HTTP clients normalize // and %76)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {front.bound[0]}", "Connection: close", "Content-Length: 2"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(front.bound, timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n{}").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    hdrs = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
    return status, {k.lower(): v for k, v in hdrs.items()}, body


@pytest.mark.parametrize("auth", [None, "Bearer sk-wrong", f"Basic {API_KEY}", f"Bearer {API_KEY}x", "Bearer"],
                         ids=["none", "wrong-key", "wrong-scheme", "key-prefix", "empty-bearer"])
def test_every_route_class_refuses_a_request_without_the_key(make_plain, vllm, auth):
    front = make_plain()
    got = {}
    for method, path in ROUTE_CLASSES:
        status, headers, body = _raw(front, method, path, {"Authorization": auth} if auth else {})
        got[f"{method} {path}"] = status
        if method != "HEAD":
            assert json.loads(body)["error"]["code"] == "invalid_api_key", (method, path, body)
        assert headers.get("www-authenticate") == "Bearer"
    assert {r: c for r, c in got.items() if c != 401} == {}
    assert vllm.seen == []                                   # nothing reached the engine


def test_two_authorization_headers_are_refused(make_plain, vllm):
    front = make_plain()
    with socket.create_connection(front.bound, timeout=10) as sock:
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                     f"Authorization: Bearer other\r\nConnection: close\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 401")
    assert vllm.seen == []


def test_health_needs_no_key_and_the_key_opens_only_the_allowlist(make_plain, vllm):
    front = make_plain()
    with httpx.Client(base_url=front.url, timeout=10) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/v1/models", headers=KEY).json()["data"][0]["id"] == "smollm2"
        assert "vllm:num_requests_running" in http.get("/metrics", headers=KEY).text
        assert http.get("/version", headers=KEY).json() == {"route": "/version"}
        for method, path in OPEN_ROUTES:
            if path == "/version":
                continue
            r = http.request(method, path, headers=KEY, json={})
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    forwarded = {s["path"] for s in vllm.seen}
    assert forwarded == {"/health", "/v1/models", "/metrics", "/version"}
    assert all(s["authorization"] == f"Bearer {API_KEY}" for s in vllm.seen if s["path"] != "/health")


def test_without_a_key_the_guard_serves_v1_but_not_what_it_cannot_check(make_plain, vllm):
    front = make_plain(api_key=None)
    with httpx.Client(base_url=front.url, timeout=10) as http:
        r = http.get("/v1/models")
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}   # forwarded: vLLM's own answer
        assert http.get("/v1/models", headers=KEY).status_code == 200
        for path in ("/metrics", "/version", "/openapi.json"):
            assert http.get(path, headers=KEY).status_code == 404, path
    assert {s["path"] for s in vllm.seen} == {"/v1/models"}


def test_chat_and_streaming_pass_through(make_plain):
    front = make_plain()
    client = _client(front)
    reply = client.chat.completions.create(model="smollm2", messages=MESSAGES)
    assert reply.choices[0].message.content == "The capital of France is Paris."
    started, arrivals, text = time.monotonic(), [], []
    with client.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True) as stream:
        for chunk in stream:
            arrivals.append(time.monotonic() - started)
            text.append(chunk.choices[0].delta.content or "")
    assert "".join(text) == "The capital of France is Paris."
    words = len(FakeVllm.STREAM_WORDS)
    assert arrivals[-1] - arrivals[0] >= (words - 2) * FakeVllm.STREAM_GAP, arrivals   # relayed as produced


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_ten_megabyte_body_gets_413(make_plain, vllm, chunked):
    front = make_plain()                                     # the default limit: 4 MiB
    body = b"x" * TEN_MB
    content = (body[i:i + 65536] for i in range(0, TEN_MB, 65536)) if chunked else body
    with httpx.Client(base_url=front.url, timeout=30) as http:
        r = http.post("/v1/chat/completions", content=content, headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large" and r.json()["error"]["type"]
    assert not any(s["path"] == "/v1/chat/completions" for s in vllm.seen)
    with httpx.Client(base_url=front.url, timeout=10) as http:   # the guard keeps serving
        ok = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": MESSAGES}, headers=KEY)
    assert ok.status_code == 200


def test_a_body_under_the_limit_is_forwarded_whole(make_plain, vllm):
    front = make_plain()
    padding = "p" * (3 * 1024 * 1024)
    with httpx.Client(base_url=front.url, timeout=30) as http:
        r = http.post("/v1/chat/completions", headers=KEY,
                      json={"model": "smollm2", "messages": MESSAGES, "padding": padding})
    assert r.status_code == 200
    assert vllm.seen[-1]["body_len"] > 3 * 1024 * 1024


def _stream_lines(front, prompt: str) -> list[str]:
    lines = []
    with httpx.Client(base_url=front.url, timeout=10) as http:
        with http.stream("POST", "/v1/chat/completions", headers=KEY,
                         json={"model": "smollm2", "stream": True,
                               "messages": [{"role": "user", "content": prompt}]}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in resp.iter_lines() if line]
    return lines


def test_upstream_lost_mid_stream_ends_with_an_sse_error_event(make_plain):
    front = make_plain()
    lines = _stream_lines(front, "die now")
    assert len(lines) == 3, lines                # two whole events; the half one is dropped
    chunks = [json.loads(line[len("data: "):]) for line in lines[:2]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    error = json.loads(lines[2][len("data: "):])
    assert set(error) == {"error"}
    assert error["error"]["code"] == "upstream_lost" and error["error"]["type"] == "conclave_upstream_error"
    assert error["error"]["param"] is None and error["error"]["message"]
    assert wait_until(lambda: front.guard.in_flight == 0, 2)


def test_the_openai_sdk_raises_the_upstream_error(make_plain):
    front = make_plain()
    text = []
    with pytest.raises(openai.APIError) as err:
        with _client(front).chat.completions.create(
                model="smollm2", stream=True, messages=[{"role": "user", "content": "die"}]) as stream:
            for chunk in stream:
                text.append(chunk.choices[0].delta.content)
    assert err.value.code == "upstream_lost"
    assert text == FakeVllm.STREAM_WORDS[:2]


def test_engine_process_killed_mid_stream(make_plain):
    """A real engine death: the upstream process is SIGKILLed (by PID) while it streams."""
    with FakeVllmProcess() as engine:
        front = make_plain(upstream=engine.address)
        lines = []
        with httpx.Client(base_url=front.url, timeout=10) as http:
            with http.stream("POST", "/v1/chat/completions", headers=KEY,
                             json={"model": "smollm2", "stream": True, "max_tokens": 1000,
                                   "messages": MESSAGES}) as resp:
                t_kill = None
                for line in resp.iter_lines():
                    if not line:
                        continue
                    lines.append(line)
                    if len(lines) == 2:
                        engine.kill()
                        t_kill = time.monotonic()
        assert t_kill is not None and time.monotonic() - t_kill < 2
    error = json.loads(lines[-1][len("data: "):])["error"]
    assert error["code"] == "upstream_lost"
    assert all(json.loads(line[6:])["object"] == "chat.completion.chunk" for line in lines[:-1])


def test_upstream_lost_mid_plain_response_cuts_the_connection(make_plain):
    front = make_plain()
    with httpx.Client(base_url=front.url, timeout=10) as http:
        with pytest.raises(httpx.TransportError):      # incomplete body: never a "complete" 200
            http.post("/v1/chat/completions", headers=KEY,
                      json={"model": "smollm2", "messages": [{"role": "user", "content": "die"}]}).read()


def test_engine_down_is_503(make_plain):
    front = make_plain(upstream=f"127.0.0.1:{free_port()}")
    r = httpx.get(front.url + "/v1/models", headers=KEY, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"


def test_the_key_never_shows_in_repr_logs_or_pickles(make_plain, caplog):
    caplog.set_level(logging.DEBUG)
    front = make_plain()
    with httpx.Client(base_url=front.url, timeout=10) as http:
        http.get("/v1/models", headers=KEY)
        http.get("/v1/models", headers={"Authorization": "Bearer sk-guessed"})
        http.post("/v1/chat/completions", headers=KEY, json={"model": "smollm2", "stream": True,
                                                             "messages": [{"role": "user", "content": "die"}]})
    assert API_KEY not in repr(front) and "redacted" in repr(front)
    assert API_KEY not in repr(front.guard) and API_KEY not in repr(front.guard.api_key)
    assert "sk-guessed" not in caplog.text and API_KEY not in caplog.text
    assert "upstream lost" in caplog.text              # the log did capture this request's events
    with pytest.raises(TypeError):
        pickle.dumps(front.guard.api_key)


def test_api_key_matching():
    key = ApiKey("sk-1")
    assert key.matches(["Bearer sk-1"]) and key.matches(["bearer sk-1"]) and key.matches(["Bearer  sk-1 "])
    for bad in ([], ["Bearer sk-2"], ["Bearer sk-1x"], ["Bearer sk-"], ["Basic sk-1"], ["sk-1"],
                ["Bearer sk-1", "Bearer sk-1"], ["Bearer \udcff"]):
        assert not key.matches(bad), bad
    for invalid in ("", "has space", "tab\tkey"):
        with pytest.raises(ValueError):
            ApiKey(invalid)


def test_sse_events_are_split_at_blank_lines():
    assert split_complete_events(b"data: 1\n\ndata: 2\n\ndata: 3") == (b"data: 1\n\ndata: 2\n\n", b"data: 3")
    assert split_complete_events(b"data: 1\r\n\r\ndata") == (b"data: 1\r\n\r\n", b"data")
    assert split_complete_events(b"data: partial") == (b"", b"data: partial")
    assert split_complete_events(b"") == (b"", b"")


def test_more_concurrent_streams_than_a_default_connection_pool(make_plain, vllm):
    """120 streams at once all reach the engine together (aiohttp's default pool of 100 would hold
    20 back until others finish)."""
    import asyncio

    front = make_plain()

    async def one(client: httpx.AsyncClient) -> str:
        async with client.stream("POST", "/v1/chat/completions", headers=KEY,
                                 json={"model": "smollm2", "stream": True, "messages": MESSAGES}) as resp:
            return [line async for line in resp.aiter_lines() if line][-1]

    async def main() -> list[str]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=front.url, timeout=30, limits=limits) as client:
            return await asyncio.gather(*(one(client) for _ in range(120)))
    assert asyncio.run(main()) == ["data: [DONE]"] * 120
    assert vllm.max_active == 120


def test_end_in_flight_from_another_thread_says_why(make_plain, vllm):
    """What the supervisor does on a lost stage, before it stops the engine."""
    import threading

    front = make_plain()
    lines: list[str] = []
    with httpx.Client(base_url=front.url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", headers=KEY,
                         json={"model": "smollm2", "stream": True, "max_tokens": 1000, "messages": MESSAGES}) as resp:
            for line in resp.iter_lines():
                if line:
                    lines.append(line)
                    if len(lines) == 1:
                        t = threading.Thread(target=front.end_in_flight,
                                             args=("stage_lost", "stage n1 lost: ray_node_lost"))
                        t.start()
                        t.join(5)
                        ended_at = time.monotonic()
    assert time.monotonic() - ended_at < 2.0
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "stage_lost" and "ray_node_lost" in error["message"]
    assert vllm.aborted.wait(5)                                  # the engine request was cancelled too
    front.end_in_flight("stage_lost", "nothing in flight")       # harmless when idle
    assert httpx.get(front.url + "/v1/models", headers=KEY, timeout=10).status_code == 200
