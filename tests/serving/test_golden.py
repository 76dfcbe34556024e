"""Golden output through the real serving path: Paris, and token-identical greedy output for N = 1, 2, 3."""
from __future__ import annotations

import pytest

from . import harness
from .conftest import CLUSTER3_PARTITION

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(2400)]


def test_chat_answers_paris_for_every_stage_count(golden_small, cluster3):
    answers = {1: golden_small[1]["chat"], 2: golden_small[2]["chat"], 3: harness.chat_answer(cluster3)}
    for stages, answer in answers.items():
        assert "Paris" in answer, f"{stages} stage(s) answered {answer!r}"


def test_greedy_tokens_identical_for_1_2_3_stages(golden_small, cluster3):
    ids3 = harness.greedy_token_ids(cluster3)
    assert len(ids3) == len(harness.GOLDEN_PROMPTS)
    assert all(len(ids) > 0 for ids in ids3)
    for prompt, one, two, three in zip(harness.GOLDEN_PROMPTS, golden_small[1]["ids"], golden_small[2]["ids"], ids3):
        assert one == two == three, f"divergent greedy output for {prompt!r}: {one} / {two} / {three}"


def test_cluster_status_describes_every_node(golden_small, cluster3):
    for stages, status in ((1, golden_small[1]["status"]), (2, golden_small[2]["status"]), (3, cluster3.status)):
        assert status["endpoint"].startswith("http://127.0.0.1:") and status["endpoint"].endswith("/v1")
        nodes = status["nodes"]
        assert [n["role"] for n in nodes] == ["head"] + ["worker"] * (stages - 1)
        assert len({n["netns"] for n in nodes}) == stages
        assert all(n["underlay_ip"].startswith("198.1") for n in nodes)
        layers = [tuple(n["layers"]) for n in nodes]
        assert layers[0][0] == 0 and layers[-1][1] == 30
        assert all(a[1] == b[0] for a, b in zip(layers, layers[1:]))
    assert [tuple(n["layers"]) for n in cluster3.status["nodes"]] == [(0, 8), (8, 20), (20, 30)]
    assert all(n["shard_verified"] for n in cluster3.status["nodes"])
    assert cluster3.state_file.stat().st_mode & 0o777 == 0o600  # it holds the API key
    assert cluster3.status["partition"] == list(CLUSTER3_PARTITION)
