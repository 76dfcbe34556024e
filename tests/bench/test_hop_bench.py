"""benchmarks/hop_bench.py's message sizes and aggregation (the namespace run itself needs root and
wireguard-go: `flock /tmp/conclave-netns.lock .venv/bin/python -m benchmarks.hop_bench`)."""
from __future__ import annotations

import pytest

from benchmarks import hop_bench


def test_pipeline_message_sizes():
    assert hop_bench.message_bytes(576, 1) == 2304
    assert hop_bench.message_bytes(4096, 1) == 16 * 1024        # hidden_states + residual, bf16
    assert hop_bench.message_bytes(8192, 2048) == 64 * 2**20


def _case(model, tokens, path, p50, tput, repeat_factor=1.0):
    return {"model": model, "hidden": hop_bench.HIDDEN[model], "tokens": tokens,
            "bytes": hop_bench.message_bytes(hop_bench.HIDDEN[model], tokens), "path": path,
            "rtt_ms_p50": p50 * repeat_factor, "rtt_ms_p99": 2 * p50 * repeat_factor, "throughput_gbit_s": tput}


def test_summary_ratios_and_the_costs_the_scaling_model_takes():
    cases = [_case("8b", 1, "plain", 0.1, 4.0), _case("8b", 1, "overlay", 0.5, 1.0),
             _case("8b", 1, "plain", 0.2, 4.0), _case("8b", 1, "overlay", 0.6, 0.5),
             _case("70b", 2048, "plain", 100.0, 8.0), _case("70b", 2048, "overlay", 400.0, 2.0),
             _case("70b", 2048, "plain", 100.0, 8.0), _case("70b", 2048, "overlay", 400.0, 2.0)]
    summary = hop_bench.summarize(cases)
    assert [(e["model"], e["tokens"]) for e in summary] == [("8b", 1), ("70b", 2048)]
    small = summary[0]
    assert small["plain"]["rtt_ms_p50"] == pytest.approx(0.15) and small["overlay"]["rtt_ms_p50"] == pytest.approx(0.55)
    assert small["ratio_throughput_gbit_s"] == pytest.approx(0.75 / 4.0, abs=1e-3)
    assert small["ratio_rtt_ms_p50_pairs"] == [3.0, 5.0]
    assert small["added_one_way_ms_p50"] == pytest.approx(0.2)
    costs = hop_bench.hop_costs(summary)
    assert costs["overlay_added_latency_s"] == pytest.approx(0.2e-3)
    assert costs["from_bytes"] == 64 * 2**20
    assert costs["encryption_s_per_byte"] == pytest.approx(8 / 2e9 - 8 / 8e9)
    assert "| 70b (8192) | 2048 | 64.0 MiB |" in hop_bench.table({"summary": summary})
