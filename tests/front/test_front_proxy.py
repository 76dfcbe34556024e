"""`conclave proxy` (real CLI, subprocess) in front of the head front: forwards while the head
verifies, answers 503 with the reason once the head's evidence turns bad (a stage evicted)."""
from __future__ import annotations

import json
import ssl

import httpx

from front_support import API_KEY, CliProcess, free_port, wait_until


def _status(base: str):
    try:
        return httpx.get(base + "/conclave/status", timeout=5)
    except httpx.HTTPError:
        return None


def test_proxy_forwards_while_verified_then_refuses(make_front, files, vllm, deployment):
    front = make_front()
    man, root = files
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proxy = CliProcess("proxy", "--upstream", front.url, "--manifest", str(man), "--sim-root", str(root),
                       "--listen", f"127.0.0.1:{port}", "--reverify", "0.5", "--timeout", "5",
                       "--owner-fingerprint", deployment.manifest.owner_fingerprint)
    try:
        ready = wait_until(lambda: (r := _status(base)) is not None and r.status_code == 200 and r, 20)
        assert ready, f"proxy never verified the front: {proxy.output() if proxy.proc.poll() is not None else ''}"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/v1/models", headers=headers).json()["data"][0]["id"] == "smollm2"
            with http.stream("POST", "/v1/chat/completions", headers=headers,
                             json={"model": "smollm2", "stream": True,
                                   "messages": [{"role": "user", "content": "capital?"}]}) as resp:
                events = [line for line in resp.iter_lines() if line]
            assert resp.status_code == 200 and events[-1] == "data: [DONE]"
            assert http.get("/v1/models").status_code == 401          # vLLM's key check still applies

            front.on_peer_evicted("node-1", "reattestation_failed")   # the head's evidence turns bad
            forwarded = len(vllm.seen)

            # the front refuses at once (stage_not_attested); within a re-verify period the proxy's
            # own check fails too and it stops forwarding (node_missing). Through the proxy, a reply
            # in flight while its re-verification flips is cut (its design), so ask the front directly.
            r = httpx.get(front.url + "/v1/models", headers=headers, timeout=10,
                          verify=ssl.create_default_context(cafile=str(front.cert_path)))
            assert r.status_code == 503 and r.json()["error"]["code"] == "stage_not_attested"

            def refused():
                try:
                    r = http.get("/v1/models", headers=headers)
                except httpx.TransportError:            # cut while the proxy's verdict flipped
                    return None
                return r if r.status_code == 503 and r.json()["error"]["code"] == "node_missing" else None
            r = wait_until(refused, 10)
            assert r is not None, "proxy kept forwarding after the head lost a stage"
            before = len(vllm.seen)
            r = http.post("/v1/chat/completions", headers=headers,
                          json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503 and len(vllm.seen) == before   # nothing reached the engine
            assert json.loads(http.get("/conclave/status").content)["reason"] == "node_missing"
            assert forwarded >= 2
    finally:
        proxy.stop()
    assert proxy.proc.returncode is not None
