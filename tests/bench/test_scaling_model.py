"""The scaling model's formulas: anchors, monotonicity, regimes, calibration."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from benchmarks import scaling_model as sm

KIB = 1024
FAST = sm.Link(bandwidth_bps=100e9, latency_s=0.5e-3)


def test_boundary_bytes_anchor_16_and_32_kib():
    assert sm.MODELS["8b"].boundary_bytes_per_token == 16 * KIB  # 4096 x bf16 x (hidden + residual)
    assert sm.MODELS["70b"].boundary_bytes_per_token == 32 * KIB
    assert sm.MODELS["405b"].boundary_bytes_per_token == 64 * KIB
    one_tensor = replace(sm.MODELS["8b"], boundary_tensors=1)
    assert one_tensor.boundary_bytes_per_token == 8 * KIB
    assert replace(one_tensor, bytes_per_elem=4).boundary_bytes_per_token == 16 * KIB  # = one fp32 tensor
    assert sm.MODELS["smollm2"].boundary_bytes_per_token == 576 * 4 * 2


def test_link_transfer_and_encryption_cost():
    link = sm.Link(bandwidth_bps=8e9, latency_s=1e-3)  # 1 GB/s
    assert link.transfer_s(1e6) == pytest.approx(1e-3 + 1e-3)
    enc = sm.encryption_cost(overlay_bps=10e9, plain_bps=100e9)
    assert enc == pytest.approx(8 / 10e9 - 8 / 100e9)
    assert sm.Link(100e9, 0.0, enc).effective_bps == pytest.approx(10e9)
    assert sm.encryption_cost(200e9, 100e9) == 0.0  # never negative
    with pytest.raises(ValueError):
        sm.encryption_cost(0, 1e9)


def test_ttft_grows_with_nodes_latency_and_encryption():
    model = sm.MODELS["70b"]
    comp = sm.gpu_compute(model, per_stage_overhead_s=1e-4)
    values = [sm.ttft(model, comp, FAST, n, 2048) for n in (1, 2, 4, 8, 16)]
    assert values == sorted(values) and values[0] < values[-1]
    slow = replace(FAST, latency_s=20e-3)
    assert sm.ttft(model, comp, slow, 4, 2048) > sm.ttft(model, comp, FAST, 4, 2048)
    enc = replace(FAST, encryption_s_per_byte=sm.encryption_cost(10e9, 100e9))
    assert sm.ttft(model, comp, enc, 4, 2048) > sm.ttft(model, comp, FAST, 4, 2048)
    # one node: no hop at all
    assert sm.ttft(model, comp, slow, 1, 2048) == sm.ttft(model, comp, FAST, 1, 2048)


def test_throughput_falls_with_latency_and_rises_with_bandwidth():
    model = sm.MODELS["8b"]
    comp = sm.gpu_compute(model)
    tps = [sm.decode(model, comp, replace(FAST, latency_s=lat), 4, 64)["tokens_per_s"]
           for lat in (1e-4, 1e-3, 1e-2, 5e-2)]
    assert tps == sorted(tps, reverse=True)
    bws = [sm.decode(model, comp, replace(FAST, bandwidth_bps=bw, latency_s=0), 4, 64)["tokens_per_s"]
           for bw in (1e8, 1e9, 1e10, 1e11)]
    assert bws == sorted(bws)


def test_bandwidth_bound_regime():
    model = sm.MODELS["70b"]
    comp = sm.Compute(decode_fixed_s=1e-4, decode_per_seq_s=1e-6, prefill_per_token_s=1e-6)
    slow = sm.Link(bandwidth_bps=100e6, latency_s=0.0)  # 100 Mbit/s
    a = sm.decode(model, comp, slow, 4, 64)
    b = sm.decode(model, comp, replace(slow, bandwidth_bps=50e6), 4, 64)
    assert a["regime"] == "link-bandwidth" and a["link_share"] > 0.9
    assert b["tokens_per_s"] == pytest.approx(a["tokens_per_s"] / 2, rel=0.02)  # halve bandwidth, halve tok/s
    # a 16-sequence micro-batch of 32 KiB tokens over 100 Mbit/s
    assert a["hop_s"] == pytest.approx(16 * 32 * KIB * 8 / 100e6)
    lat = sm.decode(model, comp, sm.Link(100e9, 50e-3), 4, 64)
    assert lat["regime"] == "link-latency"
    fast = sm.decode(model, sm.gpu_compute(model), FAST, 4, 64)
    assert fast["regime"] == "compute"


def test_dedicated_nodes_add_compute_but_colocated_ones_do_not():
    model = sm.MODELS["70b"]
    comp = sm.Compute(decode_fixed_s=0.01, decode_per_seq_s=2e-3, prefill_per_token_s=1e-4)
    ideal = sm.Link(1e15, 0.0)
    ded = [sm.decode(model, comp, ideal, n, 64)["tokens_per_s"] for n in (1, 2, 4)]
    assert ded == sorted(ded) and ded[2] > 2 * ded[0]
    col = replace(comp, colocated=True)
    shared = [sm.decode(model, col, ideal, n, 64)["tokens_per_s"] for n in (1, 2, 4)]
    assert all(s <= shared[0] * 1.0001 for s in shared)
    with_overhead = replace(col, per_stage_overhead_s=2e-3)
    lossy = [sm.decode(model, with_overhead, ideal, n, 64)["tokens_per_s"] for n in (1, 2, 3)]
    assert lossy == sorted(lossy, reverse=True)


def test_min_nodes_by_memory():
    gib80 = 80 * 2**30
    assert sm.min_nodes(sm.MODELS["8b"], gib80) == 1
    assert sm.min_nodes(sm.MODELS["70b"], gib80) == 3  # 141 GB of bf16 weights > 2 x 68.7 GB usable
    assert sm.min_nodes(sm.MODELS["405b"], gib80) == 12


def test_calibration_recovers_a_known_overhead():
    model = sm.MODELS["smollm2"]
    link = sm.Link(10e9, 50e-6)
    truth = replace(sm.fit_local(0.034, 8), per_stage_overhead_s=6e-3)
    measured = {n: {"tpot_ms": sm.decode(model, truth, link, n, 8)["tpot_s"] * 1000} for n in (2, 3)}
    measured[1] = {"tpot_ms": 34.0}
    # N=1 measurement carries the overhead too; calibrate the way the sweep does
    check = sm.check_against_measurement(model, link, measured, 8)
    assert check["calibration"]["fitted_on_nodes"] == 2
    rows = {r["nodes"]: r for r in check["rows"]}
    assert rows[2]["predicted_tpot_ms_with_overhead"] == pytest.approx(measured[2]["tpot_ms"], rel=1e-6)
    assert rows[3]["predicted_tpot_ms_with_overhead"] == pytest.approx(measured[3]["tpot_ms"], rel=0.1)
    assert rows[3]["predicted_tpot_ms_link_only"] < measured[3]["tpot_ms"]


def test_cli_prints_the_three_model_classes(capsys):
    assert sm.main(["--nodes", "1,2,4"]) == 0
    out = capsys.readouterr().out
    assert "16 KiB per token" in out and "32 KiB per token" in out and "64 KiB per token" in out
    assert out.count("| 4 |") == 3


def test_two_point_fit_of_the_step_cost():
    comp = sm.fit_local(0.040, 8, tpot_s_at_1=0.019)  # t(8) = 40 ms, t(1) = 19 ms
    assert comp.decode_per_seq_s == pytest.approx(0.003)
    assert comp.decode_fixed_s == pytest.approx(0.016)
    assert comp.decode_step_s(1) == pytest.approx(0.019) and comp.colocated


def _hop_file(tmp_path, enc=2e-9, added=80e-6):
    path = tmp_path / "hop.json"
    path.write_text(json.dumps({"bench": "hop", "hop_costs": {"encryption_s_per_byte": enc,
                                                              "overlay_added_latency_s": added}}))
    return path


def test_measured_hop_costs_replace_the_assumed_ones(tmp_path):
    costs = sm.measured_hop_costs(_hop_file(tmp_path))
    link, source = sm.overlay_link(100e9, 0.5e-3, costs)
    assert source.startswith("measured") and link.encryption_s_per_byte == 2e-9
    assert link.latency_s == pytest.approx(0.5e-3 + 80e-6)          # the overlay's added one-way latency
    # no file (or a broken one): the documented assumption, 10 Gbit/s encrypted, nothing added
    assert sm.measured_hop_costs(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{\"hop_costs\": {\"encryption_s_per_byte\": -1, \"overlay_added_latency_s\": 0}}")
    assert sm.measured_hop_costs(tmp_path / "bad.json") is None
    assumed, source = sm.overlay_link(100e9, 0.5e-3, None)
    assert source == "assumed" and assumed.latency_s == 0.5e-3
    assert assumed.encryption_s_per_byte == pytest.approx(sm.encryption_cost(10e9, 100e9))
    # an explicit overlay throughput wins over the file
    given, source = sm.overlay_link(100e9, 0.5e-3, costs, overlay_bps=1e9)
    assert source == "given" and given.encryption_s_per_byte == pytest.approx(sm.encryption_cost(1e9, 100e9))


def test_cli_uses_the_hop_results_file(tmp_path, capsys):
    assert sm.main(["--model", "8b", "--nodes", "1,2", "--json", "--hop-results", str(_hop_file(tmp_path))]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hop_costs_source"].startswith("measured") and out["link"]["encryption_s_per_byte"] == 2e-9
    assert sm.main(["--model", "8b", "--nodes", "1,2", "--json", "--hop-results", str(tmp_path / "none")]) == 0
    assert json.loads(capsys.readouterr().out)["hop_costs_source"] == "assumed"


def test_committed_hop_results_are_usable():
    costs = sm.measured_hop_costs()
    assert costs is not None, "benchmarks/results/hop.json (benchmarks/hop_bench.py) is missing or unusable"
    assert costs["encryption_s_per_byte"] > 0
