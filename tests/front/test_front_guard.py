"""The head's TLS front with the shared guard: API key (when the front holds it), 4 MiB bodies,
and in-flight requests ended at once when a stage is evicted (stage_lost) or the engine
connection breaks mid-stream (upstream_lost)."""
from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import httpx
import openai
import pytest

from front_support import API_KEY, OPEN_ROUTES

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
KEY = {"Authorization": f"Bearer {API_KEY}"}


def _http(front, timeout: float = 10) -> httpx.Client:
    return httpx.Client(base_url=front.url, verify=ssl.create_default_context(cafile=str(front.cert_path)),
                        timeout=timeout)


def _evict_from_another_thread(front, name: str = "node-1", reason: str = "reattestation_failed") -> float:
    """What the agent does: the hook runs on an agent thread, not on the front's loop."""
    t = threading.Thread(target=front.on_peer_evicted, args=(name, reason))
    t.start()
    t.join(5)
    return time.monotonic()


def test_with_the_key_the_front_checks_it_on_every_route_but_the_public_ones(make_front, vllm):
    front = make_front(api_key=API_KEY)
    routes = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics"), ("GET", "/version"),
              *OPEN_ROUTES, ("GET", "/no/such/route")]
    with _http(front) as http:
        keyless = {f"{m} {p}": http.request(m, p, json={} if m == "POST" else None) for m, p in routes}
        assert {r: x.status_code for r, x in keyless.items() if x.status_code != 401} == {}
        assert all(x.json()["error"]["code"] == "invalid_api_key" for x in keyless.values())
        assert vllm.seen == []
        # the public routes stay keyless: clients verify the head before they send anything
        assert http.get("/v1/attestation", params={"nonce": "00" * 32}).status_code == 200
        assert http.get("/v1/report").status_code == 200
        assert http.get("/health").status_code == 200
        # the key opens the allowlist only
        assert http.get("/v1/models", headers=KEY).status_code == 200
        assert "vllm:num_requests_running" in http.get("/metrics", headers=KEY).text
        assert http.get("/version", headers=KEY).status_code == 200
        assert http.post("/invocations", headers=KEY, json={}).status_code == 404
    assert API_KEY not in repr(front)


def test_a_ten_megabyte_body_gets_413_by_default(make_front, vllm):
    front = make_front()
    with _http(front, timeout=30) as http:
        r = http.post("/v1/chat/completions", content=b"{" + b" " * (10_000_000 - 2) + b"}",
                      headers={**KEY, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert not any(s["path"] == "/v1/chat/completions" for s in vllm.seen)


def test_eviction_ends_an_in_flight_stream_with_stage_lost(make_front, vllm):
    front = make_front()
    lines: list[str] = []
    evicted_at = None
    with _http(front, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", headers=KEY,
                         json={"model": "smollm2", "stream": True, "max_tokens": 1000, "messages": MESSAGES}) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if not line:
                    continue
                lines.append(line)
                if len(lines) == 2:
                    evicted_at = _evict_from_another_thread(front)
    ended = time.monotonic()
    assert evicted_at is not None
    # 140 chunks x 0.12 s would take 17 s: the stream ended right after the eviction
    assert ended - evicted_at < 2.0, ended - evicted_at
    error = json.loads(lines[-1][len("data: "):])["error"]
    assert error["code"] == "stage_lost" and error["param"] is None
    assert "node-1" in error["message"] and "reattestation_failed" in error["message"]
    assert all(json.loads(line[6:])["object"] == "chat.completion.chunk" for line in lines[:-1])
    assert vllm.aborted.wait(5), "the engine kept generating for an ended stream"
    assert front.guard.in_flight == 0
    with _http(front) as http:                         # and serving stays stopped
        r = http.get("/v1/models", headers=KEY)
        assert r.status_code == 503 and r.json()["error"]["code"] == "stage_not_attested"


def test_eviction_surfaces_in_the_openai_sdk(make_front, deployment):
    front = make_front()
    client = openai.OpenAI(base_url=front.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30,
                           http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(
                               cafile=str(front.cert_path))))
    got = []
    with pytest.raises(openai.APIError) as err:
        with client.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True,
                                            max_tokens=1000) as stream:
            for chunk in stream:
                got.append(chunk)
                if len(got) == 1:
                    _evict_from_another_thread(front, reason="evidence_expired")
    assert err.value.code == "stage_lost" and "evidence_expired" in err.value.message
    front.on_peer_admitted(**deployment.worker_admission())     # re-admitted: serving resumes
    assert [m.id for m in client.models.list().data] == ["smollm2"]


def test_eviction_answers_a_request_waiting_for_its_response_with_503(make_front, vllm):
    front = make_front()
    result: dict = {}

    def ask():
        with _http(front, timeout=30) as http:
            result["resp"] = http.post("/v1/chat/completions", headers=KEY,
                                       json={"model": "smollm2", "messages": [{"role": "user", "content": "wait"}]})
            result["at"] = time.monotonic()
    t = threading.Thread(target=ask)
    t.start()
    assert vllm.waiting.wait(5)                      # the engine holds the response header back
    evicted_at = _evict_from_another_thread(front)
    t.join(10)
    resp = result["resp"]
    assert result["at"] - evicted_at < 2.0           # not the engine's 5 s
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["code"] == "stage_not_attested" and error["missing"] == ["node-1"]
    assert error["type"] == "conclave_attestation_error"


def test_eviction_with_nothing_in_flight_and_before_start(deployment, make_front):
    front = make_front(admit_worker=False)
    front.on_peer_admitted(**deployment.worker_admission())
    front.on_peer_evicted("node-1", None)            # nothing in flight: only the gate changes
    with _http(front) as http:
        r = http.get("/health")
        assert r.status_code == 503 and r.json()["error"]["missing"] == ["node-1"]


def test_upstream_lost_mid_stream_through_the_front(make_front):
    front = make_front()
    with _http(front) as http:
        with http.stream("POST", "/v1/chat/completions", headers=KEY,
                         json={"model": "smollm2", "stream": True,
                               "messages": [{"role": "user", "content": "die"}]}) as resp:
            lines = [line for line in resp.iter_lines() if line]
    assert len(lines) == 3
    error = json.loads(lines[-1][len("data: "):])["error"]
    assert error == {"message": error["message"], "type": "conclave_upstream_error", "param": None,
                     "code": "upstream_lost"}


def test_a_non_streaming_completion_cut_mid_body_becomes_a_clean_error(make_front):
    """Completions are buffered to sign their receipt, so a cut engine never leaks half a body."""
    front = make_front()
    with _http(front) as http:
        r = http.post("/v1/chat/completions", headers=KEY,
                      json={"model": "smollm2", "messages": [{"role": "user", "content": "die"}]})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_lost"
    assert "conclave-receipt" not in r.headers


def test_raw_socket_sees_the_error_event_then_the_end_of_the_stream(make_front):
    """Byte level: the final event is a whole SSE event, followed by the chunked terminator."""
    front = make_front()
    ctx = ssl.create_default_context(cafile=str(front.cert_path))
    body = json.dumps({"model": "smollm2", "stream": True, "messages": [{"role": "user", "content": "die"}]})
    with socket.create_connection(front.bound, timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        data = b""
        while chunk := tls.recv(65536):               # the front closes the connection afterwards
            data += chunk
    assert data.endswith(b"0\r\n\r\n")
    assert b'"code": "upstream_lost"}}\n\n' in data
    events = [line for line in data.split(b"\n") if line.startswith(b"data: ")]
    assert len(events) == 3                           # two whole chunks, no half one, the error
    assert [json.loads(e[6:]).get("object", "error") for e in events] == ["chat.completion.chunk"] * 2 + ["error"]


def test_the_head_agent_hands_the_bundle_api_key_to_its_front(deployment, vllm, tmp_path):
    """runtime/cli/node.py: the key comes from the agent's stdin bundle (never argv) into the front."""
    from types import SimpleNamespace

    from conclave.overlay.evidence import SimEvidenceSource
    from conclave.overlay.identity import NodeIdentity
    from conclave.runtime.cli.node import _head_front, bundle_api_key
    from conclave.runtime.errors import UsageError

    assert bundle_api_key({}) is None and bundle_api_key({"api_key": API_KEY}) == API_KEY
    for bad in ("", "two words", 42, ["k"]):
        with pytest.raises(UsageError) as err:
            bundle_api_key({"api_key": bad})
        assert err.value.reason == "bundle_invalid"
    args = SimpleNamespace(front_port=0, front_upstream=vllm.address, front_cert_out=tmp_path / "ca.crt",
                           model_manifest=None)
    cfg = SimpleNamespace(node_name="node-0", role="head", manifest=deployment.manifest,
                          manifest_digest=deployment.manifest.digest, underlay_host="127.0.0.1",
                          evidence_source=SimEvidenceSource(deployment.head_attester))
    agent = SimpleNamespace(cfg=cfg, identity=NodeIdentity.generate(), admission_hooks=[])
    front = _head_front(args, cfg, agent, api_key=bundle_api_key({"api_key": API_KEY}))
    front.on_peer_admitted(**deployment.worker_admission())
    front.start_in_thread()
    try:
        front.cert_path = args.front_cert_out
        with _http(front) as http:
            assert http.get("/metrics").status_code == 401
            assert http.get("/metrics", headers=KEY).status_code == 200
    finally:
        front.stop_thread()
    assert API_KEY not in repr(front)


def test_a_stranger_evicted_ends_nothing(make_front):
    """Only a manifest stage's eviction stops serving; other peers come and go without effect."""
    front = make_front()
    lines = []
    with _http(front) as http:
        with http.stream("POST", "/v1/chat/completions", headers=KEY,
                         json={"model": "smollm2", "stream": True, "messages": MESSAGES}) as resp:
            for line in resp.iter_lines():
                if line:
                    lines.append(line)
                    if len(lines) == 1:
                        _evict_from_another_thread(front, name="not-a-stage")
    assert lines[-1] == "data: [DONE]" and len(lines) == 9        # 7 words, the receipt, [DONE]
    assert lines[-2].startswith('data: {"choices":[],"conclave_receipt":')
