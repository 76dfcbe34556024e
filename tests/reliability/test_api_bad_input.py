"""Bad input and bad clients against the real plain-veth 3-host cluster's OpenAI endpoint.

Each case gets a 4xx with an OpenAI-style error body (or is handled), and after each one a
normal chat request still succeeds.
"""
from __future__ import annotations

import json
import time

import httpx
import pytest

from .api_support import (HELLO, MODEL, assert_openai_error, assert_still_serving, chat, headers, metrics,
                          raw_streaming_request, wait_until)

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(1800)]

TEN_MB = 10_000_000       # over the endpoint guard's 4 MiB body limit (runtime/serving/api_guard.py)


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe\x00garbage", b"[1, 2]", b'{"model": "smollm2"}',
                                  b'{"model": "smollm2", "messages": "not a list"}',
                                  b'{"model": "smollm2", "messages": [{"role": "user"}], "max_tokens": "x"}'],
                         ids=["not-json", "empty", "binary", "array", "no-messages", "messages-not-list",
                              "max-tokens-not-int"])
def test_malformed_body_is_a_4xx_openai_error(rcluster, body):
    assert_openai_error(chat(rcluster, body))
    assert_still_serving(rcluster)


def _assert_too_large(resp: httpx.Response) -> None:
    err = assert_openai_error(resp, 413, 413)
    assert err["code"] == "request_too_large", err


def test_ten_megabyte_invalid_body_is_a_413(rcluster):
    _assert_too_large(chat(rcluster, b"x" * TEN_MB, timeout=300))
    assert_still_serving(rcluster)


def test_ten_megabyte_prompt_is_refused_before_the_engine(rcluster):
    resp = chat(rcluster, {"model": MODEL, "messages": [{"role": "user", "content": "hello " * (TEN_MB // 6)}],
                           "max_tokens": 4}, timeout=300)
    _assert_too_large(resp)
    assert_still_serving(rcluster)


def test_ten_megabyte_body_of_unknown_fields_is_a_413(rcluster):
    """The guard caps bodies at 4 MiB (vLLM itself has no limit and would parse all of it)."""
    resp = chat(rcluster, {"model": MODEL, "messages": HELLO, "max_tokens": 4, "padding": "a" * TEN_MB}, timeout=300)
    _assert_too_large(resp)
    assert_still_serving(rcluster)


def test_a_body_under_the_limit_is_still_served(rcluster):
    resp = chat(rcluster, {"model": MODEL, "messages": HELLO, "max_tokens": 4, "padding": "a" * (3 * 1024 * 1024)},
                timeout=300)
    assert resp.status_code == 200, resp.text[:300]


@pytest.mark.parametrize("max_tokens", [-1, 0, 10**12, 2**63], ids=["negative", "zero", "huge", "int64-overflow"])
def test_bad_max_tokens_is_a_400(rcluster, max_tokens):
    err = assert_openai_error(chat(rcluster, {"model": MODEL, "messages": HELLO, "max_tokens": max_tokens}), 400, 400)
    assert err.get("param") in ("max_tokens", "body.max_tokens", None)
    assert_still_serving(rcluster)


def test_unknown_model_is_a_404(rcluster):
    assert_openai_error(chat(rcluster, {"model": "no-such-model", "messages": HELLO, "max_tokens": 4}), 404, 404)
    assert_still_serving(rcluster)


def test_prompt_longer_than_the_context_is_a_400(rcluster):
    max_len = int(rcluster.status.get("max_model_len") or 2048)
    resp = chat(rcluster, {"model": MODEL, "messages": [{"role": "user", "content": "hello " * (max_len + 100)}],
                           "max_tokens": 4})
    assert_openai_error(resp, 400, 400)
    assert_still_serving(rcluster)


def test_slow_clients_that_never_read_do_not_starve_others(rcluster):
    """Streaming requests whose clients never read (4 KiB receive buffers) while a normal request is served."""
    slow = [raw_streaming_request(rcluster, {"model": MODEL, "messages": HELLO, "max_tokens": 1024,
                                             "temperature": 1.0, "ignore_eos": True, "stream": True})
            for _ in range(4)]
    try:
        wait_until(lambda: metrics(rcluster).get("vllm:num_requests_running", 0) >= 1, 60, "slow streams running")
        latencies = [assert_still_serving(rcluster, timeout=90) for _ in range(3)]
        assert max(latencies) < 60, latencies
    finally:
        for sock in slow:
            sock.close()
    # the abandoned streams are aborted, not generated to the end
    wait_until(lambda: metrics(rcluster).get("vllm:num_requests_running", 1) == 0, 60, "slow streams aborted")
    assert_still_serving(rcluster)


def _generated(cluster) -> float:
    return metrics(cluster).get("vllm:generation_tokens_total", 0.0)


def test_client_disconnecting_mid_stream_aborts_its_request(rcluster):
    """1,500 tokens take about a minute here; after the client leaves, generation must stop within
    seconds, well short of 1,500 tokens, and the request must not finish by length."""
    wait_until(lambda: metrics(rcluster).get("vllm:num_requests_running", 1) == 0, 60, "an idle server")
    start = metrics(rcluster)
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=120) as client:
        with client.stream("POST", rcluster.base_url + "/chat/completions", json=body,
                           headers=headers(rcluster)) as resp:
            assert resp.status_code == 200
            lines, chunks = resp.iter_lines(), 0
            for line in lines:
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line[6:])
                    chunks += 1
                if chunks >= 20:
                    break
            assert chunks == 20
            resp.close()  # the client hangs up mid-stream
    # the client is gone: generation must come to rest within 30 s
    deadline = time.monotonic() + 30
    last = _generated(rcluster)
    while True:
        time.sleep(2)
        now = _generated(rcluster)
        if now == last:
            break
        assert time.monotonic() < deadline, "tokens still generated 30 s after the client left"
        last = now
    end = metrics(rcluster)
    produced = end.get("vllm:generation_tokens_total", 0.0) - start.get("vllm:generation_tokens_total", 0.0)
    assert 10 <= produced < 1500, produced
    assert end.get("vllm:request_success_total:length", 0.0) == start.get("vllm:request_success_total:length", 0.0)
    assert end.get("vllm:num_requests_running", 0.0) == 0
    assert_still_serving(rcluster)


def test_a_client_that_pauses_reading_still_gets_its_whole_stream(rcluster):
    """The counterpart of the disconnect: a slow reader is not mistaken for a gone one."""
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 40, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=120) as client:
        with client.stream("POST", rcluster.base_url + "/chat/completions", json=body,
                           headers=headers(rcluster)) as resp:
            assert resp.status_code == 200
            lines, seen = resp.iter_lines(), []
            for line in lines:
                if line.startswith("data: "):
                    seen.append(line[6:])
                if len(seen) >= 5:
                    break
            time.sleep(5)
            seen += [line[6:] for line in lines if line.startswith("data: ")]
    assert seen[-1] == "[DONE]"
    chunks = [json.loads(d) for d in seen[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content") is not None) >= 20
