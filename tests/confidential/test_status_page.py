"""The head's /status page of the running local confidential cluster, in a real headless Chromium:
every node and its layer range drawn, each node's lifecycle state as the head knows it, a
screenshot written, and the serving figures moving while real completions run through vLLM."""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from front.status_page_browser import StatusDom, dump_dom, png_colours, screenshot

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(1800)]

SCREENSHOT_KEEP = os.environ.get("CONCLAVE_STATUS_SCREENSHOT")   # also copy the PNG here when set
LOAD_REQUESTS = 3
LOAD_TOKENS = 96


def _origin(cluster) -> str:
    endpoint = cluster.base_url
    assert endpoint.endswith("/v1"), endpoint
    return endpoint[: -len("/v1")]


def test_status_page_shows_the_running_cluster(ccluster, tmp_path):
    origin = _origin(ccluster)
    nodes = ccluster.status["nodes"]
    summary = httpx.get(origin + "/v1/status.json", verify=ccluster.verify, timeout=30)   # no key
    assert summary.status_code == 200 and ccluster.api_key not in summary.text
    assert [s["node"] for s in summary.json()["stages"]] == [n["node_id"] for n in nodes]   # stage = node id

    page = StatusDom(dump_dom(origin + "/status"))
    assert page.polls() >= 2
    drawn, rows = page.pipeline(), page.rows()
    assert list(drawn) == [n["node_id"] for n in nodes] == list(rows)
    for node in nodes:
        layers = f"{node['layers'][0]}-{node['layers'][1]}"
        box = drawn[node["node_id"]]
        assert box["layers"] == layers and f"layers {layers}" in box["text"], box
        assert f"TEE {node['tee']}" in box["text"] and rows[node["node_id"]][5] == layers
        # the head serves; a worker's last lifecycle state is ray_joined (its signed statement)
        assert box["state"] == ("serving" if node["role"] == "head" else "ray_joined"), box
    assert "serving" in page.tree.xpath('//*[@id="serving-state"]')[0].text_content()
    assert ccluster.api_key not in page.dom

    shot = screenshot(origin + "/status", tmp_path / "status.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_colours(shot) > 50
    if SCREENSHOT_KEEP:
        shutil.copy(shot, Path(SCREENSHOT_KEEP))


def test_status_page_figures_move_under_load(ccluster):
    origin = _origin(ccluster)
    before = StatusDom(dump_dom(origin + "/status", budget_ms=3000))
    requests0, tokens0 = before.number("requests"), before.number("tokens")
    first_token = threading.Event()
    results: list[int] = []

    def load() -> None:
        body = {"model": ccluster.status["model"]["name"], "stream": True, "max_tokens": LOAD_TOKENS,
                "ignore_eos": True, "temperature": 0, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Count from one to one hundred in words."}]}
        headers = {"Authorization": f"Bearer {ccluster.api_key}"}
        with httpx.Client(verify=ccluster.verify, timeout=300) as http:
            for _ in range(LOAD_REQUESTS):
                with http.stream("POST", ccluster.base_url + "/chat/completions", json=body, headers=headers) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {") and '"content"' in line:
                            first_token.set()
                results.append(r.status_code)

    runner = threading.Thread(target=load, daemon=True)
    runner.start()
    try:
        assert first_token.wait(120), "no token streamed"
        during = StatusDom(dump_dom(origin + "/status", budget_ms=3000))
        assert during.number("requests") > requests0 and during.number("tokens") > tokens0
        assert during.number("ttft") > 0
    finally:
        runner.join(600)
    assert not runner.is_alive() and results == [200] * LOAD_REQUESTS
    after = StatusDom(dump_dom(origin + "/status", budget_ms=3000))
    assert after.number("requests") == requests0 + LOAD_REQUESTS
    assert after.number("tokens") == tokens0 + LOAD_REQUESTS * LOAD_TOKENS      # usage.completion_tokens
    assert after.number("tokens") > during.number("tokens") and after.number("in-flight") == 0
    doc = json.loads(httpx.get(origin + "/v1/status.json", verify=ccluster.verify, timeout=30).text)
    assert doc["figures"]["tokens_per_s"] >= 0 and doc["figures"]["ttft_ms"]["samples"] >= LOAD_REQUESTS
