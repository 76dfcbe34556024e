"""The sweep's orchestration and reporting, with a fake `conclave` CLI at the process seam."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

import pytest

from benchmarks import sweep
from benchmarks.harness import datasets

from .stub_openai import StubOpenAI


def _entry(kind, network, nodes, tok_s, ttft, tpot, rss):
    stats = lambda v: {"mean": v, "p50": v, "p90": v, "p99": v}  # noqa: E731
    return {"config": f"{kind} {network} {nodes}", "kind": kind, "network": network, "nodes": nodes,
            "startup_s": 10.0,
            "result": {"metrics": {"output_throughput": tok_s, "request_throughput": tok_s / 48, "failed": 0,
                                   "ttft_ms": stats(ttft), "tpot_ms": stats(tpot), "itl_ms": stats(tpot)},
                       "memory": {"peak_rss_mib_per_host": {"n0": rss}, "peak_rss_mib_total": rss}}}


def test_ratios_compare_numbers_of_the_same_run(tmp_path):
    entries = [_entry("baseline", "none", 1, 200.0, 100.0, 30.0, 3000.0),
               _entry("cluster", "plain", 1, 190.0, 110.0, 31.0, 4000.0),
               _entry("cluster", "plain", 2, 150.0, 150.0, 45.0, 6000.0),
               _entry("cluster", "attested", 2, 120.0, 160.0, 50.0, 6100.0),
               {"config": "x", "kind": "cluster", "network": "attested", "nodes": 3, "skipped": "no flag"}]
    sweep.add_ratios(entries)
    assert entries[2]["ratios"]["vs_baseline"]["output_throughput"] == pytest.approx(0.75)
    assert entries[2]["ratios"]["vs_n1"]["output_throughput"] == pytest.approx(150 / 190)
    assert entries[3]["ratios"]["vs_plain"]["output_throughput"] == pytest.approx(0.8)
    assert entries[3]["ratios"]["vs_plain"]["peak_rss_total"] == pytest.approx(6100 / 6000)
    assert "vs_n1" not in entries[3]["ratios"]  # no attested N=1 measured: no made-up reference
    assert "vs_n1" not in entries[1]["ratios"]  # itself
    table = sweep.markdown(entries)
    assert "| 0.750 | 0.789 |" in table and "skipped: no flag" in table
    paths = sweep.plot(entries, tmp_path)
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG" and paths == [str(tmp_path / "sweep.png")]


def _fake_conclave(tmp_path, endpoint: str, accept_network: bool) -> list[str]:
    """A stand-in for `python -m conclave.runtime`: up prints a status line, down succeeds."""
    script = tmp_path / "fake_conclave.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        args = sys.argv[1:]
        open({str(tmp_path / 'calls.log')!r}, "a").write(" ".join(args) + "\\n")
        if args[0] == "up":
            if "--network" in args and args[args.index("--network") + 1] != "plain" and not {accept_network!r}:
                print("conclave up: error: argument --network: invalid choice: 'attested'", file=sys.stderr)
                sys.exit(1)
            print(json.dumps({{"endpoint": {endpoint!r}, "api_key": None, "nodes": []}}))
        sys.exit(0)
    """))
    return [sys.executable, str(script)]


def _opts(**kw):
    base = dict(model="stub-model", max_concurrency=2, request_rate=float("inf"), seed=0, max_duration=30.0,
                warmups=0, calibration_requests=2, start_timeout=30.0)
    base.update(kw)
    return argparse.Namespace(**base)


def test_cluster_arm_runs_up_bench_down_and_calibrates(tmp_path, monkeypatch):
    with StubOpenAI(ttft_s=0.02, itl_s=0.005) as stub:
        monkeypatch.setattr(sweep, "CONCLAVE", _fake_conclave(tmp_path, stub.endpoint, True))
        entry = sweep.run_cluster(_opts(), "plain", 1, datasets.fixed_prompts(4, 4, seed=0), calibrate=True)
    assert entry["result"]["metrics"]["completed"] == 4
    assert entry["calibration_c1"]["config"]["concurrency"] == 1
    assert entry["calibration_c1"]["metrics"]["completed"] == 2
    calls = (tmp_path / "calls.log").read_text().splitlines()
    # the layer is always explicit: `conclave up` defaults to the attested overlay
    assert calls[0].startswith("up --local --nodes 1 ") and "--network plain" in calls[0]
    assert calls[-1] == "down"


def test_attested_arm_is_skipped_when_up_rejects_the_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "CONCLAVE", _fake_conclave(tmp_path, "http://127.0.0.1:9/v1", False))
    entry = sweep.run_cluster(_opts(), "attested", 2, datasets.fixed_prompts(2, 4, seed=0), calibrate=False)
    assert "skipped" in entry and "result" not in entry and "error" not in entry
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert "--network attested" in calls[0] and calls[-1] == "down"


def test_sweep_main_writes_json_markdown_and_plot(tmp_path, monkeypatch):
    with StubOpenAI(ttft_s=0.02, itl_s=0.004) as stub:
        monkeypatch.setattr(sweep, "CONCLAVE", _fake_conclave(tmp_path, stub.endpoint, False))
        code = sweep.main(["--no-baseline", "--nodes", "1,2", "--networks", "plain,attested", "--model", "stub-model",
                           "--num-requests", "4", "--output-len", "4", "--max-concurrency", "2", "--warmups", "0",
                           "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "sweep.json").read_text())
    kinds = [(e["network"], e["nodes"], "result" in e, "skipped" in e) for e in report["entries"]]
    # interleaved per N; a network `up` rejects is dropped for the later N
    assert kinds == [("plain", 1, True, False), ("attested", 1, False, True), ("plain", 2, True, False)]
    assert report["scaling_model_check"] is None  # stub-model has no shape in the scaling model
    assert (tmp_path / "out" / "sweep.md").read_text().count("| conclave local, plain") == 2


def test_schedule_interleaves_networks_within_each_node_count():
    assert sweep.schedule([1, 2], ["plain", "attested"], 2) == [
        (1, 0, "plain"), (1, 0, "attested"), (1, 1, "plain"), (1, 1, "attested"),
        (2, 0, "plain"), (2, 0, "attested"), (2, 1, "plain"), (2, 1, "attested")]
    assert sweep.schedule([3], ["plain"], 1) == [(3, 0, "plain")]
    with pytest.raises(ValueError):
        sweep.schedule([1], ["plain"], 0)


def _arm(network, nodes, repeat, decode_tok_s, prefill_ttft):
    decode = _entry("cluster", network, nodes, decode_tok_s, 100.0, 30.0, 1000.0)["result"]
    prefill = _entry("cluster", network, nodes, 50.0, prefill_ttft, 40.0, 1000.0)["result"]
    return {"kind": "cluster", "network": network, "nodes": nodes, "repeat": repeat, "result": decode,
            "results": {"decode": decode, "prefill": prefill}}


def test_aggregate_gives_medians_ranges_and_pair_ratios():
    entries = [_arm("plain", 1, 0, 100.0, 200.0), _arm("attested", 1, 0, 90.0, 210.0),
               _arm("plain", 1, 1, 120.0, 300.0), _arm("attested", 1, 1, 60.0, 330.0),
               _arm("plain", 1, 2, 80.0, 250.0), _arm("attested", 1, 2, 88.0, 240.0),
               {"kind": "cluster", "network": "attested", "nodes": 2, "error": "up failed"}]
    rows = sweep.aggregate(entries, ["decode", "prefill"])
    assert [(r["nodes"], r["request_set"]) for r in rows] == [(1, "decode"), (1, "prefill")]
    decode, prefill = rows
    assert decode["networks"]["plain"]["output_throughput"] == {"median": 100.0, "min": 80.0, "max": 120.0, "n": 3}
    assert decode["networks"]["attested"]["output_throughput"]["median"] == 88.0
    tok = decode["vs_plain"]["attested"]["output_throughput"]
    assert tok["ratio_of_medians"] == pytest.approx(0.88)
    assert (tok["pair_min"], tok["pair_max"], tok["pairs"]) == (0.5, 1.1, 3)     # 60/120 and 88/80
    ttft = prefill["vs_plain"]["attested"]["ttft_p50"]
    assert ttft["ratio_of_medians"] == pytest.approx(240 / 250)
    assert (ttft["pair_min"], ttft["pair_max"]) == (0.96, 1.1)
    assert "plain" not in decode["vs_plain"]
    table = sweep.summary_markdown(rows)
    assert "| 1 | decode | attested | 3 | 88.0 (60.0-90.0) |" in table and "0.880 (0.500-1.100)" in table


def test_repeat_main_runs_every_arm_k_times_with_both_request_sets(tmp_path, monkeypatch):
    with StubOpenAI(ttft_s=0.01, itl_s=0.002) as stub:
        monkeypatch.setattr(sweep, "CONCLAVE", _fake_conclave(tmp_path, stub.endpoint, True))
        code = sweep.main(["--no-baseline", "--nodes", "1", "--networks", "plain,attested", "--model", "stub-model",
                           "--repeat", "2", "--request-sets", "decode,prefill", "--prefill-requests", "2",
                           "--prefill-input-len", "32", "--prefill-output-len", "2", "--vocab-size", "1000",
                           "--num-requests", "2", "--output-len", "3", "--max-concurrency", "2", "--warmups", "0",
                           "--calibration-requests", "1", "--out", str(tmp_path / "out")])
        prompts = [body["prompt"] for _, body in stub.received]
    assert code == 0
    report = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [(e["network"], e["repeat"]) for e in report["entries"]] == [
        ("plain", 0), ("attested", 0), ("plain", 1), ("attested", 1)]
    for e in report["entries"]:
        assert set(e["results"]) == {"decode", "prefill"} and e["results"]["decode"] is not None
        assert e["machine_before"]["loadavg"] and "steal_share" in e
        assert e["results"]["prefill"]["metrics"]["completed"] == 2
    assert sum(1 for p in prompts if isinstance(p, list) and len(p) == 32) == 2 * 4   # prefill prompts, 4 arms
    assert [(r["nodes"], r["request_set"]) for r in report["summary"]] == [(1, "decode"), (1, "prefill")]
    assert report["summary"][0]["vs_plain"]["attested"]["output_throughput"]["pairs"] == 2
    assert "Summary over 2 interleaved repeat(s)" in (tmp_path / "out" / "sweep.md").read_text()


def test_idle_cpu_is_summed_per_process_label(tmp_path):
    import os
    import subprocess
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        out = sweep.idle_cpu(lambda: {"h0": [busy.pid, os.getpid()]}, 1.0)
    finally:
        busy.kill()
        busy.wait()
    assert set(out) == {"h0"}
    spinning = [v for label, v in out["h0"].items() if label.startswith("-c")]
    assert spinning and spinning[0] > 5             # the spinning child (a share of a busy machine)
    assert sweep.idle_cpu(None, 1.0) is None and sweep.idle_cpu(lambda: {}, 0) is None
    assert sweep.process_label(os.getpid()) != "?"
