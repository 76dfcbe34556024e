"""The official `openai` client drives the 3-host endpoint served by vLLM's own OpenAI server."""
from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(2400)]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(cluster3) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster3.base_url, api_key=cluster3.api_key, timeout=120, max_retries=0)


def _still_serving(client: openai.OpenAI) -> None:
    resp = client.completions.create(model="smollm2", prompt="One, two,", max_tokens=4, temperature=0)
    assert resp.choices[0].text


def test_models_lists_the_served_name(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["smollm2"]


def test_chat_completion(client):
    resp = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=24)
    assert "Paris" in resp.choices[0].message.content
    assert resp.usage.completion_tokens > 0


def test_text_completion(client):
    resp = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8,
                                     temperature=0)
    assert resp.choices[0].text.strip()
    assert resp.usage.completion_tokens <= 8


def test_streaming_chat_arrives_in_pieces_and_matches(client):
    full = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=24)
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=24,
                                            stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == full.choices[0].message.content


def test_streaming_completion_matches(client):
    full = client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=16, temperature=0)
    pieces = [c.choices[0].text for c in client.completions.create(
        model="smollm2", prompt="Once upon a time", max_tokens=16, temperature=0, stream=True) if c.choices]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == full.choices[0].text


def _assert_openai_error(resp: httpx.Response, status: int) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body.get("error"), dict), body
    assert body["error"].get("message") and body["error"].get("type")


def test_invalid_json_is_a_400_and_serving_continues(cluster3, client):
    resp = cluster3.post("/chat/completions", b"{not json")
    assert 400 <= resp.status_code < 500
    _assert_openai_error(resp, resp.status_code)
    _still_serving(client)


def test_unknown_model_is_404(cluster3, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=4)
    assert info.value.status_code == 404
    _assert_openai_error(info.value.response, 404)
    _still_serving(client)


@pytest.mark.parametrize("max_tokens", [100_000, -1])
def test_bad_max_tokens_is_400(cluster3, client, max_tokens):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=max_tokens)
    assert info.value.status_code == 400
    _assert_openai_error(info.value.response, 400)
    _still_serving(client)


def test_prompt_longer_than_context_is_400(cluster3, client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="smollm2", prompt="hello " * 5000, max_tokens=4)
    _still_serving(client)


def test_wrong_api_key_is_401(cluster3, client):
    bad = openai.OpenAI(base_url=cluster3.base_url, api_key="wrong-" + cluster3.api_key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.status_code == 401
    _still_serving(client)


def test_missing_api_key_is_401(cluster3):
    assert cluster3.api_key, "the cluster must generate an API key by default"
    assert httpx.get(cluster3.base_url + "/models", timeout=30).status_code == 401
    assert cluster3.post("/completions", {"model": "smollm2", "prompt": "x", "max_tokens": 1}, key=None).status_code == 401


def test_secrets_never_in_argv(cluster3):
    """The API key (and Ray's token variable) reach processes only through their environment."""
    from pathlib import Path
    key = cluster3.api_key.encode()
    for pid in cluster3.footprint.pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert key not in cmdline
        assert b"RAY_AUTH_TOKEN" not in cmdline and b"VLLM_API_KEY" not in cmdline


def test_supplied_api_key_file_is_used(golden_small):
    assert golden_small[1]["status"]["api_key"] == golden_small["key_file"]
    assert golden_small[1]["models_without_key"] == 401
    assert golden_small[1]["models_with_wrong_key"] == 401


def test_no_api_key_serves_openly(golden_small):
    assert golden_small[2]["status"]["api_key"] is None
    assert golden_small[2]["models_without_key"] == 200
