"""The head's /status page and /v1/status.json through the real front (simulated evidence, stub
upstream): keyless, no secret in them, every manifest stage listed with its public facts, the
serving figures counted from what the front relays, evictions shown, strict page headers."""
from __future__ import annotations

import json
import ssl
import threading
from types import SimpleNamespace

import httpx
import pytest

from conclave.runtime.serving.serving_stats import ServingStats
from conclave.runtime.serving.status_page import ASSETS, asset_bytes
from conclave.runtime.serving.status_view import agent_facts

from front_support import API_KEY, STAGES

KEY = {"Authorization": f"Bearer {API_KEY}"}
PROMPT = "what is the capital of France, secret-prompt-words?"


def _http(front) -> httpx.Client:
    return httpx.Client(base_url=front.url, verify=ssl.create_default_context(cafile=str(front.cert_path)),
                        timeout=20)


def _chat(http, *, stream: bool = False, model: str = "smollm2", max_tokens: int = 16) -> httpx.Response:
    body = {"model": model, "stream": stream, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": PROMPT}]}
    if not stream:
        return http.post("/v1/chat/completions", headers=KEY, json=body)
    with http.stream("POST", "/v1/chat/completions", headers=KEY, json=body) as r:
        r.read()
    return r


def _status(http) -> dict:
    r = http.get("/v1/status.json")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["cache-control"] == "no-store"
    return r.json()


def test_status_page_and_its_assets_need_no_key_and_load_nothing_remote(make_front):
    front = make_front(api_key=API_KEY)
    with _http(front) as http:
        assert http.get("/v1/models").status_code == 401        # the key is required elsewhere
        page = http.get("/status")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert 'src="/status/app.js"' in page.text and 'href="/status/style.css"' in page.text
        for path, (name, ctype) in ASSETS.items():
            r = http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), path
            assert r.content == asset_bytes(name)
            assert "http://" not in r.text.replace("http://www.w3.org/2000/svg", "") and "https://" not in r.text, \
                f"{path} refers to another origin"
        assert http.get("/status/other.js", headers=KEY).status_code == 404
        refused = http.post("/status", content=b"x")
        assert refused.status_code == 405 and refused.json()["error"]["code"] == "method_not_allowed"
        refused = http.post("/v1/status.json", content=b"{}")
        assert refused.status_code == 405 and refused.json()["error"]["code"] == "method_not_allowed"


def test_status_json_lists_every_stage_with_its_public_facts(make_front, deployment):
    front = make_front(api_key=API_KEY)
    with _http(front) as http:
        doc = _status(http)
    assert doc["version"] == 1 and doc["serving"] == {"state": "serving", "missing": []}
    assert doc["manifest_digest"] == deployment.manifest.digest.hex()
    assert doc["model_digest"] == deployment.manifest.model_digest
    assert [(s["node"], s["owner"], s["role"], s["layers"]) for s in doc["stages"]] == \
        [(s.node, s.owner, s.role, [s.layer_start, s.layer_end]) for s in STAGES]
    for stage in doc["stages"]:
        assert stage["admitted"] is True and stage["tee"] == "sim"
        assert stage["gpus"] == {"required": 0, "attested": 0}
        assert len(stage["evidence_sha256"]) == 64 and 0 <= stage["evidence_age_s"] < 60
        assert stage["evidence_at"].endswith("Z")
    head, worker = doc["stages"]
    assert head["freshness"] == "fresh" and worker["freshness"] == "cached"
    assert [e["event"] for e in worker["events"]] == ["admitted"]
    # the digests are the ones the signed run report names
    with _http(front) as http:
        report = json.loads(http.get("/v1/report").content)
    assert [s["evidence_sha256"] for s in report["report"]["stages"]] == [s["evidence_sha256"] for s in doc["stages"]]


def test_figures_count_what_the_front_relays(make_front):
    front = make_front(api_key=API_KEY)
    with _http(front) as http:
        before = _status(http)["figures"]
        assert before["requests_total"] == 0 and before["completion_tokens_total"] == 0
        assert before["ttft_ms"]["p50"] is None and before["tokens_per_s"] == 0
        assert _chat(http).status_code == 200                     # usage: 7 completion tokens
        assert _chat(http, stream=True).status_code == 200        # 7 content events
        assert _chat(http, model="other").status_code == 404
        assert http.get("/v1/models", headers=KEY).status_code == 200    # not a completion: not counted
        after = _status(http)["figures"]
    assert after["requests_total"] == 3 and after["requests_failed"] == 1 and after["requests_in_flight"] == 0
    assert after["completion_tokens_total"] == 14
    assert after["tokens_per_s"] == pytest.approx(14 / after["rate_window_s"])
    assert after["ttft_ms"]["samples"] == 1 and after["ttft_ms"]["p50"] > 0
    assert after["latency_ms"]["samples"] == 2 and after["latency_ms"]["p95"] >= after["ttft_ms"]["p50"]


def test_in_flight_stream_shows_while_it_runs(make_front, vllm):
    front = make_front(api_key=API_KEY)
    done = threading.Event()

    def long_stream():
        with _http(front) as http:
            _chat(http, stream=True, max_tokens=500)              # 140 chunks, 0.12 s apart
        done.set()

    worker = threading.Thread(target=long_stream, daemon=True)
    worker.start()
    try:
        assert vllm.streamed.wait(10)
        with _http(front) as http:
            during = _status(http)["figures"]
            assert during["requests_in_flight"] == 1 and during["ttft_ms"]["samples"] == 1
            first = during["completion_tokens_total"]
            threading.Event().wait(0.6)
            assert _status(http)["figures"]["completion_tokens_total"] > first
    finally:
        worker.join(60)
    assert done.is_set()


def test_no_secret_in_the_page_or_the_summary(make_front):
    front = make_front(api_key=API_KEY)
    with _http(front) as http:
        answer = _chat(http).json()["choices"][0]["message"]["content"]
        _chat(http, stream=True)
        texts = [http.get(p).text for p in ASSETS] + [http.get("/v1/status.json").text]
    for text in texts:
        assert API_KEY not in text and "Bearer" not in text
        assert "secret-prompt-words" not in text and answer not in text     # nothing per request
    assert API_KEY not in repr(front) and API_KEY not in repr(front.stats.snapshot())


def test_eviction_and_failed_rounds_show_as_events(make_front, deployment):
    front = make_front(api_key=API_KEY)
    front.on_reattested("node-1", "failed", reason="collateral_expired")
    front.on_peer_evicted("node-1", "evidence_expired")
    with _http(front) as http:
        doc = _status(http)
    assert doc["serving"] == {"state": "not_serving", "missing": ["node-1"]}
    worker = doc["stages"][1]
    assert worker["admitted"] is False and worker["tee"] is None and worker["evidence_age_s"] is None
    assert [(e["event"], e["reason"]) for e in worker["events"]] == \
        [("admitted", None), ("failed", "collateral_expired"), ("evicted", "evidence_expired")]
    front.on_peer_admitted(**deployment.worker_admission())
    with _http(front) as http:
        doc = _status(http)
    assert doc["serving"]["state"] == "serving" and doc["stages"][1]["admitted"] is True
    assert doc["stages"][1]["events"][-1]["event"] == "admitted"      # admitted again after the eviction
    front.on_peer_admitted(**deployment.worker_admission())
    with _http(front) as http:
        assert _status(http)["stages"][1]["events"][-1]["event"] == "reattested"


def test_node_facts_from_the_head_agent_are_shown(make_front):
    front = make_front()
    front.node_facts = lambda: {"node-0": {"lifecycle": {"state": "serving", "reasons": []}},
                                "node-1": {"tcb_status": "UpToDate",
                                           "lifecycle": {"state": "ray_joined", "reasons": []}}}
    with _http(front) as http:
        doc = _status(http)
    assert doc["stages"][1]["tcb_status"] == "UpToDate"
    assert doc["stages"][1]["lifecycle"]["state"] == "ray_joined"
    front.node_facts = lambda: {"node-0": {"lifecycle": {"state": "degraded", "reasons": ["engine_exited"]}}}
    with _http(front) as http:
        doc = _status(http)
    assert doc["serving"]["state"] == "not_serving"
    front.node_facts = _raises
    with _http(front) as http:      # the agent's view is optional: the summary still answers
        assert _status(http)["stages"][1]["lifecycle"] is None


def _raises():
    raise RuntimeError("agent stopping")


def test_agent_facts_reads_lifecycle_statements_and_tcb_status():
    admitted = SimpleNamespace(claims_summary={"tcb_status": "OutOfDate"})
    agent = SimpleNamespace(
        cfg=SimpleNamespace(node_name="node-0"),
        stage_extra={"state": "degraded", "reasons": [{"reason": "engine_exited", "detail": "pid 7 exited"},
                                                      {"reason": "not-a-reason", "detail": ""}]},
        peer_statements=lambda: {"node-1": {"state": "ray_joined"}, "node-2": {"state": "<script>"}},
        peers={"k1": SimpleNamespace(node_id="node-1", admitted=admitted),
               "k2": SimpleNamespace(node_id="node-2", admitted=None)})
    facts = agent_facts(agent)
    assert facts["node-0"]["lifecycle"] == {"state": "degraded", "reasons": ["engine_exited"]}
    assert facts["node-1"] == {"lifecycle": {"state": "ray_joined", "reasons": []}, "tcb_status": "OutOfDate"}
    assert facts["node-2"] == {"lifecycle": {"state": "unknown", "reasons": []}}   # no free text passes


def test_stream_tokens_prefer_usage_when_the_stream_carries_it():
    stats = ServingStats()
    ex = stats.begin()
    chunk = {"choices": [{"index": 0, "delta": {"content": "a"}}]}
    ex.feed_stream(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: " + json.dumps(chunk).encode()[:10])
    ex.feed_stream(json.dumps(chunk).encode()[10:] + b"\n\n")
    ex.feed_stream(b'data: {"choices": [], "usage": {"completion_tokens": 5}}\n\ndata: [DONE]\n\n')
    ex.finish(200)
    figures = stats.snapshot()
    assert figures["completion_tokens_total"] == 5 and figures["ttft_ms"]["samples"] == 1
    ex = stats.begin()
    ex.finish(None)                  # cut or aborted
    assert stats.snapshot()["requests_failed"] == 1 and stats.snapshot()["requests_in_flight"] == 0
