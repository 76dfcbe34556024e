"""A client of the running local cluster, set up only by `conclave env`, gets answers whose signed
receipts `conclave receipt verify --local` accepts, and refuses once one byte of the answer changed."""
from __future__ import annotations

import json
import ssl

import httpx
import pytest

from serving import harness

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(900)]


def test_openai_client_from_conclave_env_and_receipts_verify(ccluster, tmp_path):
    import openai
    env = json.loads(harness.cli(["env", "--shell", "json"], ccluster.env).stdout)
    http = httpx.Client(verify=ssl.create_default_context(cafile=env["SSL_CERT_FILE"]), timeout=120)
    client = openai.OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], http_client=http)
    chat = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=16,
                                          messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in chat.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=16, stream=True,
        messages=[{"role": "user", "content": "What is the capital of France?"}]) if c.choices)
    assert "Paris" in streamed
    # the exact bytes, as README's quick start keeps them, and their receipt
    body = json.dumps({"model": "smollm2", "max_tokens": 8, "temperature": 0,
                       "messages": [{"role": "user", "content": "What is the capital of France?"}]}).encode()
    resp = http.post(env["OPENAI_BASE_URL"] + "/chat/completions", content=body,
                     headers={"Authorization": f"Bearer {env['OPENAI_API_KEY']}", "Content-Type": "application/json"})
    assert resp.status_code == 200 and resp.headers.get("Conclave-Receipt")
    (tmp_path / "req.json").write_bytes(body)
    (tmp_path / "resp.json").write_bytes(resp.content)
    (tmp_path / "receipt.txt").write_text(resp.headers["Conclave-Receipt"])
    args = ["receipt", "verify", "--local", "--request", str(tmp_path / "req.json"), "--response",
            str(tmp_path / "resp.json"), "--receipt", str(tmp_path / "receipt.txt"), "--json"]
    ok = harness.cli(args, ccluster.env, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr[-2000:]
    tampered = bytearray(resp.content)
    tampered[len(tampered) // 2] ^= 0x01
    (tmp_path / "resp.json").write_bytes(bytes(tampered))
    bad = harness.cli(args, ccluster.env, check=False)
    assert bad.returncode == 2 and json.loads(bad.stdout)["reason"] == "receipt_response_mismatch", bad.stdout
