"""The /status page in a real headless Chromium (Debian's chromium) against the real front with
simulated evidence and the stub upstream: the drawn DOM has every stage's node and layer range,
a screenshot is written and is not blank, and the figures move while requests run."""
from __future__ import annotations

import os
import shutil
import ssl
import threading
from pathlib import Path

import httpx

from front_support import API_KEY, STAGES
from status_page_browser import StatusDom, dump_dom, png_colours, screenshot

KEY = {"Authorization": f"Bearer {API_KEY}"}
SCREENSHOT_KEEP = os.environ.get("CONCLAVE_STATUS_SCREENSHOT")   # also copy the PNG here when set


def _chat(front, *, stream: bool, max_tokens: int = 16) -> int:
    body = {"model": "smollm2", "stream": stream, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "capital of France?"}]}
    with httpx.Client(base_url=front.url, verify=ssl.create_default_context(cafile=str(front.cert_path)),
                      timeout=60) as http:
        if not stream:
            return http.post("/v1/chat/completions", headers=KEY, json=body).status_code
        with http.stream("POST", "/v1/chat/completions", headers=KEY, json=body) as r:
            r.read()
        return r.status_code


def test_chromium_draws_every_stage_and_its_layer_range(make_front, tmp_path):
    front = make_front(api_key=API_KEY)
    page = StatusDom(dump_dom(front.url + "/status"))
    assert page.polls() >= 2, "the page polls /v1/status.json by itself"
    drawn, rows = page.pipeline(), page.rows()
    assert list(drawn) == [s.node for s in STAGES] == list(rows)
    for s in STAGES:
        layers = f"{s.layer_start}-{s.layer_end}"
        box = drawn[s.node]
        assert box["layers"] == layers and f"layers {layers}" in box["text"], box
        assert f"owner {s.owner}" in box["text"] and "TEE sim" in box["text"]
        assert box["state"] == "admitted"
        assert rows[s.node][:6] == [s.node, s.role, s.owner, "sim", "0/0", layers]
    assert page.figure("requests") == "0"
    assert "serving" in page.tree.xpath('//*[@id="serving-state"]')[0].text_content()
    assert API_KEY not in page.dom

    shot = screenshot(front.url + "/status", tmp_path / "status.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert png_colours(shot) > 50, "the screenshot is (nearly) blank"
    if SCREENSHOT_KEEP:
        shutil.copy(shot, Path(SCREENSHOT_KEEP))


def test_chromium_figures_move_while_requests_run(make_front, vllm):
    front = make_front(api_key=API_KEY)
    before = StatusDom(dump_dom(front.url + "/status"))
    assert before.number("requests") == 0 and before.number("tokens") == 0

    running = threading.Thread(target=_chat, kwargs={"front": front, "stream": True, "max_tokens": 500},
                               daemon=True)                 # 140 chunks, 0.12 s apart: ~17 s
    running.start()
    try:
        assert vllm.streamed.wait(10)
        during = StatusDom(dump_dom(front.url + "/status", budget_ms=3000))
        assert during.number("in-flight") == 1
        assert during.number("tokens") > 0 and during.number("tokens-per-s") > 0
        assert during.number("ttft") > 0
        for _ in range(2):
            assert _chat(front, stream=False) == 200
    finally:
        running.join(60)
    assert not running.is_alive()
    after = StatusDom(dump_dom(front.url + "/status", budget_ms=3000))
    assert after.number("requests") == 3 and after.number("in-flight") == 0
    assert after.number("tokens") > during.number("tokens")
