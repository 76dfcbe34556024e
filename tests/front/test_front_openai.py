"""OpenAI clients through the head front: forwarding, streaming, errors, limits."""
from __future__ import annotations

import json
import os
import socket
import ssl
import time

import httpx
import openai
import pytest

from conclave.runtime.serving.front import parse_upstream

from front_support import API_KEY, FakeVllm, free_port

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _trust(front) -> ssl.SSLContext:
    """What `conclave status` hands clients: the front's certificate as the only CA."""
    return ssl.create_default_context(cafile=str(front.cert_path))


def _client(front, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=front.url + "/v1", api_key=api_key, max_retries=0, timeout=10,
                         http_client=openai.DefaultHttpxClient(verify=_trust(front)))


def _http(front) -> httpx.Client:
    return httpx.Client(base_url=front.url, verify=_trust(front), timeout=10)


def test_chat_and_models_through_the_front(make_front, vllm):
    front = make_front()
    client = _client(front)
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    reply = client.chat.completions.create(model="smollm2", messages=MESSAGES)
    assert reply.choices[0].message.content == "The capital of France is Paris."
    chat = [s for s in vllm.seen if s["path"] == "/v1/chat/completions"]
    assert chat and chat[-1]["authorization"] == f"Bearer {API_KEY}"   # the API key reached vLLM


def test_streaming_arrives_chunk_by_chunk(make_front, vllm):
    front = make_front()
    client = _client(front)
    started = time.monotonic()
    arrivals, text = [], []
    with client.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True) as stream:
        for chunk in stream:
            arrivals.append(time.monotonic() - started)
            if chunk.choices:       # the final chunk carries the receipt and no choices (like usage)
                text.append(chunk.choices[0].delta.content or "")
            last = chunk
    assert "".join(text) == "The capital of France is Paris."
    assert set(last.model_extra["conclave_receipt"]) == {"receipt", "signature", "report_key"}
    words = len(FakeVllm.STREAM_WORDS)
    assert len(arrivals) == words + 1
    # the upstream needs words * GAP seconds; an incremental relay hands the first chunk over
    # long before the last one is produced, and the chunks spread over that whole time
    assert arrivals[0] < (words - 2) * FakeVllm.STREAM_GAP, arrivals
    assert arrivals[-1] - arrivals[0] >= (words - 2) * FakeVllm.STREAM_GAP, arrivals


def test_raw_sse_bytes_pass_unchanged(make_front):
    front = make_front()
    with _http(front) as http:
        with http.stream("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"model": "smollm2", "messages": MESSAGES, "stream": True}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers.get("cache-control") == "no-cache"
            events = [line for line in resp.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][len("data: "):])["object"] == "chat.completion.chunk"


def test_upstream_errors_pass_through(make_front):
    front = make_front()
    client = _client(front)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "bad prompt"}])
    assert bad.value.status_code == 400 and bad.value.body["type"] == "BadRequestError"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert missing.value.status_code == 404
    with pytest.raises(openai.AuthenticationError) as denied:
        _client(front, api_key="sk-wrong").models.list()
    assert denied.value.status_code == 401


def test_public_routes_need_no_api_key_and_others_are_forwarded(make_front, vllm):
    front = make_front()
    with _http(front) as http:
        assert http.get("/v1/attestation", params={"nonce": "00" * 32}).status_code == 200
        assert http.get("/v1/report").status_code == 200
        assert http.get("/v1/models").status_code == 401                       # vLLM's own key check
        assert http.get("/health").status_code == 200
        # the front holds no API key here: routes vLLM serves to anyone are not public
        for path in ("/metrics", "/version"):
            r = http.get(path, headers={"Authorization": f"Bearer {API_KEY}"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
        r = http.get("/v1/models?x=1", headers={"Authorization": f"Bearer {API_KEY}", "X-Custom": "kept"})
        assert r.status_code == 200
    last = vllm.seen[-1]
    assert (last["path"], last["x_custom"]) == ("/v1/models?x=1", "kept")
    assert not any(s["path"].startswith(("/v1/attestation", "/v1/report", "/metrics", "/version"))
                   for s in vllm.seen)


@pytest.mark.parametrize("path,status,code", [
    ("/admin", 404, "not_found"),
    ("/v1/../admin", 400, "invalid_path"),
    ("/v1/%2e%2e/admin", 400, "invalid_path"),
    ("/v1/./models", 400, "invalid_path"),
    ("/v1/models%2F..%2Fx", 400, "invalid_path"),
])
def test_unrouted_and_tricky_paths(make_front, vllm, path, status, code):
    front = make_front()
    seen = len(vllm.seen)
    ctx = ssl.create_default_context(cafile=str(front.cert_path))
    with socket.create_connection(front.bound, timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        # a raw request line: HTTP clients would normalize these paths before sending
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
                    "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == str(status).encode() and json.loads(body)["error"]["code"] == code
    assert len(vllm.seen) == seen


def test_attestation_route_checks_nonce_and_method(make_front):
    front = make_front()
    with _http(front) as http:
        r = http.get("/v1/attestation")
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_nonce"
        r = http.get("/v1/attestation", params={"nonce": "00" * 4})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_nonce"
        r = http.post("/v1/attestation", params={"nonce": "00" * 32})
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        r = http.get("/v1/attestation", params={"nonce": "ab" * 32})
        assert r.headers["cache-control"] == "no-store" and r.json()["nonce"] == "ab" * 32


def test_request_body_limit(make_front, vllm):
    front = make_front(max_body=64 * 1024)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with _http(front) as http:
        big = {"model": "smollm2", "messages": [{"role": "user", "content": "x" * (128 * 1024)}]}
        r = http.post("/v1/chat/completions", json=big, headers=headers)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunked():                      # no Content-Length: the limit holds while streaming in
            for _ in range(40):
                yield b"x" * 4096
        r = http.post("/v1/chat/completions", content=chunked(), headers=headers)
        assert r.status_code == 413
    with _http(front) as http:
        ok = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": MESSAGES}, headers=headers)
        assert ok.status_code == 200
    assert not any(s.get("body_len", 0) > 64 * 1024 for s in vllm.seen)


def test_upstream_down_is_an_openai_error(make_front):
    front = make_front(upstream=f"127.0.0.1:{free_port()}")
    with pytest.raises(openai.APIStatusError) as err:
        _client(front).models.list()
    assert err.value.status_code == 503
    assert err.value.body["code"] == "engine_unavailable" and err.value.body["message"]


def test_serving_stops_while_a_stage_is_not_attested(make_front, deployment, vllm):
    front = make_front(admit_worker=False, api_key=API_KEY)
    with pytest.raises(openai.APIStatusError) as err:
        _client(front).models.list()
    assert err.value.status_code == 503 and err.value.body["code"] == "stage_not_attested"
    assert err.value.body["missing"] == ["node-1"]
    assert not any(s["path"].startswith("/v1/models") for s in vllm.seen)
    with _http(front) as http:
        health = http.get("/health")                                  # keyless, and says what is missing
        assert health.status_code == 503
        assert health.json()["error"]["code"] == "stage_not_attested"
        assert health.json()["error"]["missing"] == ["node-1"]
        metrics = http.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        assert metrics.status_code == 200 and "vllm:num_requests_running" in metrics.text   # operators keep them
    front.on_peer_admitted(**deployment.worker_admission())
    assert [m.id for m in _client(front).models.list().data] == ["smollm2"]


def test_upstream_parsing_and_public_cert(make_front, tmp_path):
    assert parse_upstream("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert parse_upstream("http://[::1]:8000/") == "http://[::1]:8000"
    for bad in ("https://127.0.0.1:8000", "127.0.0.1", "http://h:1/path"):
        with pytest.raises(ValueError):
            parse_upstream(bad)
    front = make_front()
    path = front.write_public_cert(tmp_path / "sub" / "ca.crt")
    assert path.read_bytes() == front.identity.cert_pem and b"PRIVATE" not in path.read_bytes()
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert "PRIVATE" not in repr(front) and "redacted" in repr(front)


def test_client_disconnect_mid_stream_reaches_the_engine(make_front, vllm):
    """A client that goes away mid-stream must not leave the engine generating for nobody."""
    front = make_front()
    ctx = _trust(front)
    body = json.dumps({"model": "smollm2", "messages": MESSAGES, "stream": True, "max_tokens": 1000}).encode()
    with socket.create_connection(front.bound, timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        first = tls.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and not vllm.aborted.is_set()
    assert vllm.aborted.wait(5), "the upstream stream kept running after the client left"


def test_expect_continue_is_answered_by_the_front(make_front, vllm):
    front = make_front()
    with _http(front) as http:
        r = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": MESSAGES},
                      headers={"Authorization": f"Bearer {API_KEY}", "Expect": "100-continue"})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    assert vllm.seen[-1]["expect"] is None


def test_serve_forever_runs_until_stopped(deployment, vllm):
    import threading

    from conclave.runtime.endpoint.tls import generate_head_identity
    from conclave.runtime.serving.front import HeadFront
    from conclave.runtime.serving.front_report import RunReportState
    from front_support import new_report_signer

    identity, signer = generate_head_identity(["127.0.0.1"]), new_report_signer()
    port = free_port()
    front = HeadFront(builder=deployment.builder(identity.spki_sha256, signer.public_key),
                      report=RunReportState(manifest=deployment.manifest, signer=signer),
                      upstream=vllm.address, identity=identity, listen_host="127.0.0.1", listen_port=port)
    front.on_peer_admitted(**deployment.worker_admission())
    stop = threading.Event()
    thread = threading.Thread(target=front.serve_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        ctx = ssl.create_default_context(cadata=identity.cert_pem.decode())

        def up():
            try:
                return httpx.get(f"https://127.0.0.1:{port}/health", verify=ctx, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        deadline = time.monotonic() + 10
        while not up():
            assert time.monotonic() < deadline, "serve_forever never listened"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://127.0.0.1:{port}/health", verify=ctx, timeout=2)
