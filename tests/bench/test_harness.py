"""The harness against a loopback stub server with known timing: metrics, errors, bounds, CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks.harness import cli, compare, datasets, memory, runner
from benchmarks.harness.errors import HarnessError
from benchmarks.harness.metrics import RequestOutput, compute_metrics
from conclave.runtime.cli import main as conclave_main

from .stub_openai import StubOpenAI

TTFT, ITL, TOKENS = 0.12, 0.03, 8


def _run(stub: StubOpenAI, requests, **kw) -> dict:
    cfg = runner.BenchConfig(endpoint=stub.endpoint, **kw)
    return runner.run(cfg, requests)


def test_ttft_tpot_itl_match_the_servers_known_delays():
    reqs = datasets.fixed_prompts(6, TOKENS, seed=1)
    with StubOpenAI(ttft_s=TTFT, itl_s=ITL) as stub:
        result = _run(stub, reqs, concurrency=3)
    m = result["metrics"]
    assert (m["requests"], m["completed"], m["failed"]) == (6, 6, 0)
    assert result["config"]["model"] == "stub-model"  # resolved through GET /v1/models
    assert m["total_output_tokens"] == 6 * TOKENS  # from usage.completion_tokens
    # the stub sleeps on an absolute schedule, so measured values can only be late, by little
    # (tolerances leave room for a loaded 2-core machine; the gaps between the quantities are larger)
    assert TTFT * 1000 <= m["ttft_ms"]["p50"] < TTFT * 1000 + 80
    assert ITL * 1000 - 10 < m["itl_ms"]["median"] < ITL * 1000 + 20
    assert ITL * 1000 - 5 < m["tpot_ms"]["mean"] < ITL * 1000 + 20
    assert m["itl_ms"]["count"] == 6 * (TOKENS - 1)
    e2e = TTFT + (TOKENS - 1) * ITL
    assert e2e * 1000 <= m["e2el_ms"]["mean"] < e2e * 1000 + 100
    # two waves of 3 at concurrency 3: duration about 2 * e2e
    assert 2 * e2e <= m["duration_s"] < 2 * e2e + 1.0
    assert m["output_throughput"] == pytest.approx(6 * TOKENS / m["duration_s"])
    assert m["request_throughput"] == pytest.approx(6 / m["duration_s"])


def test_errors_are_counted_per_kind_and_excluded_from_latency():
    reqs = [datasets.SampleRequest(p, -1, 4) for p in ("FAIL400", "ok one", "FAIL500", "FAIL400", "ok two")]
    with StubOpenAI(ttft_s=0.01, itl_s=0.01) as stub:
        result = _run(stub, reqs, model="stub-model")
    m = result["metrics"]
    assert (m["completed"], m["failed"]) == (2, 3)
    assert m["errors"] == {"http_4xx": 2, "http_5xx": 1}
    assert m["ttft_ms"]["count"] == 2 and m["total_output_tokens"] == 8
    statuses = sorted(r["status"] for r in result["per_request"])
    assert statuses == [200, 200, 400, 400, 500]


def test_unreachable_endpoint_counts_transport_errors():
    cfg = runner.BenchConfig(endpoint="http://127.0.0.1:9/v1", model="m", request_timeout_s=5)
    result = runner.run(cfg, datasets.fixed_prompts(2, 4, seed=0))
    assert result["metrics"]["errors"] == {"transport": 2}
    assert result["all_failed"]


def test_without_usage_the_chunks_are_counted():
    with StubOpenAI(ttft_s=0.01, itl_s=0.005, send_usage=False) as stub:
        result = _run(stub, datasets.fixed_prompts(2, 5, seed=0))
    assert result["metrics"]["total_output_tokens"] == 10


def test_concurrency_cap_is_respected():
    with StubOpenAI(ttft_s=0.05, itl_s=0.01) as stub:
        result = _run(stub, datasets.fixed_prompts(8, 4, seed=0), concurrency=2)
        assert stub.max_active == 2
    assert result["metrics"]["completed"] == 8


def test_random_dataset_sends_exact_token_ids_and_usage_sets_prompt_len():
    reqs = datasets.random_tokens(3, 17, 4, 1000, seed=5)
    with StubOpenAI(ttft_s=0.01, itl_s=0.005) as stub:
        result = _run(stub, reqs)
        sent = sorted((b["prompt"] for _, b in stub.received), key=lambda p: p[0])
    assert sent == sorted((r.prompt for r in reqs), key=lambda p: p[0])
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} and b["ignore_eos"]
               and b["max_tokens"] == 4 for _, b in stub.received)
    assert result["metrics"]["total_input_tokens"] == 3 * 17


def test_poisson_arrivals_follow_the_seeded_schedule():
    offsets = runner.arrival_delays(6, 10.0, seed=3)
    with StubOpenAI(ttft_s=0.01, itl_s=0.005) as stub:
        _run(stub, datasets.fixed_prompts(6, 2, seed=0), request_rate=10.0, seed=3, model="stub-model")
        arrivals = sorted(t for t, _ in stub.received)
    gaps_sent = np.diff(arrivals)
    gaps_planned = np.diff(offsets)
    assert np.max(np.abs(gaps_sent - gaps_planned)) < 0.05


def test_run_stops_at_its_time_bound():
    # every request would take 0.1 + 49 * 0.2 = 9.9 s; the bound is 1 s
    reqs = datasets.fixed_prompts(4, 50, seed=0)
    with StubOpenAI(ttft_s=0.1, itl_s=0.2) as stub:
        t0 = time.monotonic()
        result = _run(stub, reqs, concurrency=2, max_duration_s=1.0, model="stub-model")
        elapsed = time.monotonic() - t0
    assert elapsed < 3.0
    m = result["metrics"]
    assert m["errors"] == {"cancelled": 2} and m["completed"] == 0
    assert result["not_sent"] == 2
    assert 1.0 <= m["duration_s"] < 2.0


def test_request_timeout_is_an_error_of_its_own():
    with StubOpenAI(ttft_s=2.0, itl_s=0.01) as stub:
        t0 = time.monotonic()
        result = _run(stub, datasets.fixed_prompts(1, 2, seed=0), request_timeout_s=0.3, model="stub-model")
    assert time.monotonic() - t0 < 1.5
    assert result["metrics"]["errors"] == {"timeout": 1}


def test_metric_formulas_on_known_records():
    outs = [RequestOutput(success=True, ttft=0.1, latency=0.5, itl=[0.1] * 4, chunks=5, output_tokens=5),
            RequestOutput(success=True, ttft=0.3, latency=0.3, itl=[], chunks=1, output_tokens=1),
            RequestOutput(success=True, ttft=0.2, latency=1.0, itl=[0.2] * 4, chunks=5, output_tokens=9),
            RequestOutput(success=False, error_kind="http_5xx")]
    m = compute_metrics(outs, 2.0)
    assert m["completed"] == 3 and m["failed"] == 1 and m["errors"] == {"http_5xx": 1}
    # TPOT only for requests with > 1 token: (0.5-0.1)/4 = 0.1, (1.0-0.2)/8 = 0.1
    assert m["tpot_ms"]["mean"] == pytest.approx(100.0) and m["tpot_ms"]["count"] == 2
    assert m["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert m["ttft_ms"]["p90"] == pytest.approx(np.percentile([100, 300, 200], 90))
    assert m["itl_ms"]["count"] == 8 and m["itl_ms"]["mean"] == pytest.approx(150.0)
    assert m["output_throughput"] == pytest.approx(15 / 2.0)
    assert m["request_throughput"] == pytest.approx(1.5)


def test_datasets_are_seeded_and_reproducible():
    a = datasets.random_tokens(5, 32, 8, 49152, seed=7, range_ratio=0.5)
    b = datasets.random_tokens(5, 32, 8, 49152, seed=7, range_ratio=0.5)
    c = datasets.random_tokens(5, 32, 8, 49152, seed=8, range_ratio=0.5)
    assert a == b and a != c
    assert all(len(r.prompt) == r.prompt_len and 16 <= r.prompt_len <= 48 for r in a)
    assert all(100 <= t < 49152 for r in a for t in r.prompt)
    assert datasets.fixed_prompts(10, 4, seed=1) == datasets.fixed_prompts(10, 4, seed=1)
    assert [r.prompt for r in datasets.fixed_prompts(8, 4, seed=1)] != [r.prompt for r in
                                                                        datasets.fixed_prompts(8, 4, seed=2)]
    assert runner.arrival_delays(20, 5.0, seed=1) == runner.arrival_delays(20, 5.0, seed=1)
    assert runner.arrival_delays(3, math.inf, seed=1) == [0.0, 0.0, 0.0]
    gaps = np.diff(runner.arrival_delays(4000, 5.0, seed=1))
    assert np.mean(gaps) == pytest.approx(0.2, rel=0.08)


def test_bad_arguments_are_usage_errors():
    with pytest.raises(HarnessError) as err:
        datasets.random_tokens(0, 8, 8, 1000, seed=0)
    assert err.value.reason == "bad_num_requests" and err.value.usage
    with pytest.raises(HarnessError) as err:
        runner.arrival_delays(3, -1.0, seed=0)
    assert err.value.reason == "bad_rate"


def _result(out_tps, ttft_p50, rss=None):
    stats = {"mean": ttft_p50, "p50": ttft_p50, "p90": ttft_p50, "p99": ttft_p50}
    return {"metrics": {"request_throughput": out_tps / 10, "output_throughput": out_tps, "ttft_ms": stats,
                        "tpot_ms": stats, "itl_ms": stats, "failed": 0},
            "memory": {"peak_rss_mib_total": rss} if rss else None}


def test_compare_ratios_table_and_plots(tmp_path):
    base, cand = _result(200.0, 100.0, rss=1000.0), _result(150.0, 250.0, rss=2500.0)
    rows = {r["metric"]: r for r in compare.compare_rows([base, cand])}
    assert rows["output throughput (tok/s)"]["ratios"] == [pytest.approx(0.75)]
    assert rows["TTFT p50 (ms)"]["ratios"] == [pytest.approx(2.5)]
    assert rows["peak RSS total (MiB)"]["ratios"] == [pytest.approx(2.5)]
    assert rows["failed requests"]["ratios"] == [None]  # 0 / 0 is undefined, not 1
    table = compare.markdown_table([base, cand], ["plain", "conclave"])
    assert "| output throughput (tok/s) | 200.00 | 150.00 | 0.750 | higher |" in table
    paths = compare.plot_compare([base, cand], ["plain", "conclave"], tmp_path)
    assert len(paths) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_cli_compare_mode_against_two_endpoints(tmp_path):
    with StubOpenAI(ttft_s=0.02, itl_s=0.005) as fast, StubOpenAI(ttft_s=0.1, itl_s=0.02) as slow:
        code = cli.main(["--endpoint", fast.endpoint, "--endpoint", slow.endpoint, "--label", "fast",
                         "--label", "slow", "--num-requests", "4", "--output-len", "6", "--warmups", "0",
                         "--out", str(tmp_path / "c.json"), "--plots-dir", str(tmp_path / "plots")])
    assert code == 0
    report = json.loads((tmp_path / "c.json").read_text())
    rows = {r["metric"]: r for r in report["compare"]}
    assert rows["TTFT p50 (ms)"]["ratios"][0] > 2.0  # slow / fast
    assert rows["output throughput (tok/s)"]["ratios"][0] < 0.6
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["compare_latency.png", "compare_throughput.png"]


def test_conclave_bench_wrapper_runs_the_harness_with_api_key_file(tmp_path, capsys):
    key = tmp_path / "key"
    key.write_text("sekret-123\n")
    with StubOpenAI(ttft_s=0.01, itl_s=0.005, api_key="sekret-123") as stub:
        ok = conclave_main(["bench", "--endpoint", stub.endpoint, "--num-requests", "3", "--output-len", "3",
                            "--api-key-file", str(key), "--out", str(tmp_path / "r.json")])
        key.write_text("wrong\n")
        bad = conclave_main(["bench", "--endpoint", stub.endpoint, "--model", "stub-model", "--num-requests", "2",
                             "--api-key-file", str(key), "--json"])
    assert ok == 0 and json.loads((tmp_path / "r.json").read_text())["metrics"]["completed"] == 3
    assert bad == 3  # every request got 401: the run failed
    err = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert err["reason"] == "all_requests_failed"
    assert "sekret" not in (tmp_path / "r.json").read_text()


def test_conclave_bench_reports_a_missing_harness_clearly():
    from conclave.runtime.cli import bench
    from conclave.runtime.errors import ConclaveError
    with pytest.raises(ConclaveError) as err:
        bench._import("benchmarks.no_such_module")
    assert err.value.reason == "bench_unavailable"


def test_peak_rss_of_a_process_tree():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(80 << 20); b[::4096] = b'x' * "
                              "len(b[::4096]); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while memory.rss_kib(child.pid) < 80 * 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
        with memory.PeakRssSampler(memory.pid_trees({"h0": [child.pid]}), interval=0.05) as sampler:
            time.sleep(0.2)
        res = sampler.result()
        assert 80 <= res["peak_rss_mib_per_host"]["h0"] < 200
        assert res["peak_rss_mib_total"] == res["peak_rss_mib_per_host"]["h0"]
        assert sampler.samples >= 2
    finally:
        child.kill()
        child.wait()


def _self_signed(tmp_path):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stub head")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def test_https_endpoint_is_verified_against_the_given_ca_cert(tmp_path):
    cert, key = _self_signed(tmp_path)
    reqs = datasets.fixed_prompts(2, 3, seed=0)
    with StubOpenAI(ttft_s=0.01, itl_s=0.005, tls=(cert, key)) as stub:
        trusted = runner.run(runner.BenchConfig(endpoint=stub.endpoint, ca_cert=cert, model="stub-model"), reqs)
        untrusted = runner.run(runner.BenchConfig(endpoint=stub.endpoint, model="stub-model"), reqs)
    assert stub.endpoint.startswith("https://")
    assert trusted["metrics"]["completed"] == 2
    assert untrusted["metrics"]["errors"] == {"transport": 2}  # unknown CA: refused, never silently accepted
