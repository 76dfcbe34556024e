"""benchmarks/front_bench.py at tiny size (real stub, real HeadFront process, real TLS), its
aggregation, and the serving figures' compact-chunk fast path it led to (same counts as parsing)."""
from __future__ import annotations

import json

import pytest

from benchmarks import front_bench
from conclave.runtime.serving.serving_stats import ServingStats, _compact_tokens


def test_tiny_run_has_every_figure_for_both_arms():
    result = front_bench.run_bench(streams=[1, 4], total_chunks=40, repeat=1, paced_rate=400, paced_s=0.2)
    assert set(result["levels"]) == {1, 4}
    for streams, level in result["levels"].items():
        assert level["direct_chunks_per_s"]["median"] > 0 and level["front_chunks_per_s"]["median"] > 0
        assert level["throughput_ratio"] == pytest.approx(
            level["front_chunks_per_s"]["median"] / level["direct_chunks_per_s"]["median"], rel=1e-2)
        assert level["latency_p50_ms"]["front"]["median"] <= level["latency_p99_ms"]["front"]["median"]
        assert level["front_cpu_s_per_1000_chunks"]["median"] >= 0
        assert set(level["paced"]["latency_p50_ms"]) == {"direct", "front"}
    saturated = [r for r in result["runs"] if not r["paced_itl_us"]]
    assert {(r["arm"], r["streams"]) for r in saturated} == {(a, n) for a in ("direct", "front") for n in (1, 4)}
    for run in saturated:
        assert run["chunks"] == run["streams"] * (40 // run["streams"])     # every content chunk arrived
        assert ("front" in run["cpu_s"]) == (run["arm"] == "front")
    assert result["machine_before"]["loadavg"] and "steal_share" in result
    table = front_bench.table(result)
    assert table.count("\n| 1 |") == 2 and table.count("\n| 4 |") == 2   # saturated and paced rows


def _run(arm, streams, rate, p50=1.0, front_cpu=0.05):
    return {"arm": arm, "streams": streams, "paced_itl_us": 0.0, "chunks_per_s": rate, "chunks": 1000,
            "latency_ms": {"p50": p50, "p99": p50 * 2},
            "cpu_s_per_1000_chunks": {"stub": 0.01, **({"front": front_cpu} if arm == "front" else {})},
            "front_one_core_chunks_per_s": 1000 / front_cpu}


def test_summary_is_ratio_of_medians_with_the_range_of_pair_ratios():
    runs = [_run("direct", 8, 100), _run("front", 8, 90, p50=3.0), _run("direct", 8, 200), _run("front", 8, 100, p50=5.0),
            _run("direct", 8, 150), _run("front", 8, 150, p50=4.0)]
    level = front_bench.summarize(runs)[8]
    assert level["throughput_ratio"] == round(100 / 150, 3)
    assert level["throughput_ratio_pairs"] == [0.5, 1.0]
    assert level["added_latency_p50_ms"] == 3.0
    assert level["front_one_core_chunks_per_s"] == 20000.0


def test_percentile_interpolates_like_numpy():
    assert front_bench.percentile([1, 2, 3, 4], 50) == 2.5
    assert front_bench.percentile([5], 99) == 5
    with pytest.raises(ValueError):
        front_bench.percentile([], 50)


CHUNKS = [
    {"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": " a", "logprobs": None, "finish_reason": None}]},
    {"id": "c", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": 'quote "text":"x" inside'}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": None, "tool_calls": [{"index": 0, "id": "t"}]}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"reasoning_content": "hm", "content": ""}}]},
    {"id": "c", "choices": [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": {"content": [{"token": "x"}]}}]},
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 9}},
]


@pytest.mark.parametrize("chunk", CHUNKS, ids=range(len(CHUNKS)))
def test_compact_chunks_count_as_parsing_them_would(chunk):
    compact = json.dumps(chunk, separators=(",", ":")).encode()
    spaced = json.dumps(chunk).encode()
    assert _compact_tokens(spaced) is None                   # not vLLM's compact shape: parsed
    counts = []
    for payload in (compact, spaced):
        stats = ServingStats()
        ex = stats.begin()
        ex.feed_stream(b"data: " + payload + b"\n\n")
        counts.append((ex.streamed_tokens, ex.usage_tokens, stats.snapshot()["completion_tokens_total"]))
    assert counts[0] == counts[1]


def test_vllm_shaped_chunks_take_the_byte_path():
    def compact(doc):
        return json.dumps(doc, separators=(",", ":")).encode()
    assert [_compact_tokens(compact(c)) for c in CHUNKS[:4]] == [1, 0, 0, 1]
    assert _compact_tokens(compact(CHUNKS[-1])) is None        # usage: parsed
