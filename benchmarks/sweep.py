"""Benchmark sweep in one run: node counts, network layers, and plain vLLM as the baseline.

    .venv/bin/python -m benchmarks.sweep --nodes 1,2,3 --out benchmarks/results/
    .venv/bin/python -m benchmarks.sweep --nodes 1,2,3 --networks plain,attested --out /tmp/r/

For each network layer and node count N: `conclave up --local --nodes N --detach` (a fresh
state folder, so it never touches another cluster), the harness with the same seeded request
set, peak RSS per host (every process in each host's network namespace), `conclave down`.
The baseline is vLLM's own OpenAI server on 127.0.0.1 in the root namespace, same model
folder, eager (one stage), no Ray, no plugin. Every ratio in the output compares numbers
measured in this same run. The N=1 cluster is also measured at concurrency 1 to calibrate the
scaling model's step cost, and the model is checked against the measured N>1 rows.

The network layer is always passed explicitly as `conclave up --network NAME` (`up` defaults
to the attested overlay); when `conclave up` rejects the name, that arm is skipped
with the reason recorded. Writes sweep.json, sweep.md and PNG plots into --out.
Needs root (network namespaces). CPU-heavy: run it on an otherwise idle machine.

Trustworthy ratios (issue 18): the arms run interleaved, for each N every network once per
repeat (`--repeat K`: plain, attested, plain, attested, ...; each a fresh `conclave up`, since
two clusters do not fit this machine at once), each cluster measured with every request set of
`--request-sets` (decode: the request set above; prefill: `--prefill-requests` random prompts
of `--prefill-input-len` tokens with `--prefill-output-len` output tokens). The summary gives
every figure as median with min-max over the repeats and every ratio network/plain as the
ratio of the medians with the range of the per-pair ratios (pair k: the k-th plain and the k-th
other arm of the same N, measured one after the other). Load average and steal time are
recorded before and after every arm.

    .venv/bin/python -m benchmarks.sweep --nodes 1,2 --networks plain,attested --repeat 2 \
        --request-sets decode,prefill --no-baseline --out benchmarks/results/repeat/
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import scaling_model
from benchmarks.machine import machine_state, proc_cpu_s, steal_share
from benchmarks.harness import compare, datasets, memory, runner

CONCLAVE = [sys.executable, "-m", "conclave.runtime"]
PLAIN = "plain"
REQUEST_SETS = ("decode", "prefill")
SUMMARY_METRICS = {"output_throughput": ("output_throughput",), "ttft_p50": ("ttft_ms", "p50"),
                   "tpot_p50": ("tpot_ms", "p50")}






def process_label(pid: int) -> str:
    """A short name for a process from its command line: `conclave node`, `wireguard-go`, `ray::...`."""
    try:
        argv = [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    words = [os.path.basename(argv[0])]
    if words[0].startswith("python") and len(argv) > 1:
        rest = argv[1:]
        words = rest[1:3] if rest[0] == "-m" else [os.path.basename(rest[0]), *rest[1:2]]
    elif words[0] == "conclave" and len(argv) > 1:
        words.append(argv[1])
    return " ".join(words)[:60]


def idle_cpu(hosts, seconds: float) -> dict | None:
    """Every host's processes while the cluster serves nothing (issue 18): % of one core over
    `seconds`, summed per process label ({host: {label: percent}})."""
    if hosts is None or seconds <= 0:
        return None
    pids = hosts()
    before: dict[tuple[str, int], float] = {}
    for host, host_pids in pids.items():
        for pid in host_pids:
            try:
                before[(host, pid)] = proc_cpu_s(pid)
            except OSError:
                pass
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    out: dict[str, dict[str, float]] = {}
    for (host, pid), cpu in before.items():
        try:
            used = proc_cpu_s(pid) - cpu
        except OSError:
            continue
        label = process_label(pid)
        out.setdefault(host, {})
        out[host][label] = round(out[host].get(label, 0.0) + used / wall * 100, 2)
    return out


def schedule(nodes: list[int], networks: list[str], repeat: int) -> list[tuple[int, int, str]]:
    """The arms in the order they run: for each N, every network once per repeat, interleaved
    (N=1: plain, attested, plain, attested; then N=2 ...)."""
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    return [(n, k, net) for n in nodes for k in range(repeat) for net in networks]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- local link (for the model check)

def measure_loopback_link(total_bytes: int = 256 << 20, pings: int = 200) -> dict:
    """One TCP stream's throughput and half the small-message round trip over 127.0.0.1.

    Stands in for the local veth between namespaces: both are in-kernel memory copies (the
    overlay benchmark measured 14-20 Gbit/s over veth on this machine).
    """
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def sink() -> None:
        conn, _ = server.accept()
        with conn:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    return
                if data == b"p":
                    conn.sendall(b"p")

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as cli:
        cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        for _ in range(pings):
            cli.sendall(b"p")
            cli.recv(1)
        rtt = (time.perf_counter() - t0) / pings
        block = b"\0" * (1 << 20)
        t0 = time.perf_counter()
        for _ in range(total_bytes // len(block)):
            cli.sendall(block)
        cli.shutdown(socket.SHUT_WR)
        thread.join(30)
        elapsed = time.perf_counter() - t0
    server.close()
    return {"bandwidth_bps": total_bytes * 8 / elapsed, "latency_s": rtt / 2, "method": "TCP over 127.0.0.1"}


# ---------------------------------------------------------------- the configurations

def conclave(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([*CONCLAVE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def bench(opts, endpoint: str, api_key: str | None, hosts, requests, concurrency: int | None = None,
          ca_cert: str | None = None) -> dict:
    cfg = runner.BenchConfig(endpoint=endpoint, model=opts.model, api_key=api_key, ca_cert=ca_cert,
                             concurrency=concurrency or opts.max_concurrency, request_rate=opts.request_rate,
                             seed=opts.seed, max_duration_s=opts.max_duration, request_timeout_s=opts.max_duration,
                             warmups=opts.warmups)
    result = runner.run(cfg, requests, hosts)
    result.pop("per_request", None)  # keep committed results small; the metrics hold the aggregates
    return result


def run_cluster(opts, network: str, nodes: int, requests, calibrate: bool, *, extra_sets: dict | None = None,
                repeat: int = 0) -> dict:
    """One arm: up, the request set (entry["result"]), every set of `extra_sets` on the same cluster
    (entry["results"][name], the first set under its name too), down; load and steal around it."""
    state = tempfile.mkdtemp(prefix="conclave-sweep-")
    env = dict(os.environ, CONCLAVE_STATE_DIR=state)
    argv = ["up", "--local", "--nodes", str(nodes), "--port", str(free_port()), "--model", opts.model,
            "--detach", "--json", "--network", network]   # always explicit: `up` defaults to attested
    entry: dict = {"config": f"conclave local, {network}, {nodes} node(s)", "kind": "cluster",
                   "network": network, "nodes": nodes, "repeat": repeat, "machine_before": machine_state()}
    t0 = time.perf_counter()
    up = conclave(argv, env, opts.start_timeout)
    try:
        if up.returncode != 0:
            tail = (up.stderr or up.stdout)[-1500:]
            if up.returncode == 1 and network != PLAIN and ("invalid choice" in tail or "--network" in tail):
                entry["skipped"] = f"`conclave up` does not accept --network {network}: {tail.strip()[-300:]}"
            else:
                entry["error"] = f"conclave up exited {up.returncode}: {tail.strip()[-600:]}"
            return entry
        entry["startup_s"] = round(time.perf_counter() - t0, 1)
        status = json.loads(up.stdout.strip().splitlines()[-1])
        hosts = memory.netns_hosts(memory.conclave_status_hosts(status))
        ca = status.get("ca_cert")  # the head's TLS front: verified against its own certificate
        entry["result"] = bench(opts, status["endpoint"], status.get("api_key"), hosts, requests, ca_cert=ca)
        if extra_sets:
            entry["results"] = {}
            for name, set_requests in extra_sets.items():
                entry["results"][name] = entry["result"] if set_requests is requests else bench(
                    opts, status["endpoint"], status.get("api_key"), hosts, set_requests, ca_cert=ca)
        if calibrate:
            entry["calibration_c1"] = bench(opts, status["endpoint"], status.get("api_key"), None,
                                            requests[:opts.calibration_requests], concurrency=1, ca_cert=ca)
        if getattr(opts, "idle_seconds", 0):
            entry["idle_cpu_percent"] = idle_cpu(hosts, opts.idle_seconds)
        return entry
    finally:
        down = conclave(["down"], env, 600)  # harmless when nothing is running
        if down.returncode != 0:
            entry["teardown_error"] = down.stderr[-600:]
            log(f"conclave down failed: {down.stderr[-600:]}")
        else:
            shutil.rmtree(state, ignore_errors=True)
        entry["machine_after"] = machine_state()
        entry["steal_share"] = steal_share(entry["machine_before"], entry["machine_after"])


def run_baseline(opts, requests) -> dict:
    from conclave.runtime.model import registry

    folder, manifest = registry.lookup(opts.model)
    dtype = manifest["dtype"] if manifest.get("dtype") in ("float32", "bfloat16") else "auto"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "RAY_"))}
    env["VLLM_TARGET_DEVICE"] = "cpu"  # plain vLLM: its own CPU platform, not Conclave's Ray plugin
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
            "--served-model-name", opts.model, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
            "--max-model-len", "2048", "--kv-cache-memory-bytes", str(256 << 20), "--max-num-seqs", "16",
            "--enforce-eager"]  # one stage: eager (compiled single-stage output is wrong on CPU, ENVIRONMENT.md)
    entry: dict = {"config": "plain vLLM, one process (baseline)", "kind": "baseline", "network": "none", "nodes": 1}
    logf = tempfile.NamedTemporaryFile(prefix="vllm-baseline-", suffix=".log", delete=False)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + opts.start_timeout
        while True:
            if proc.poll() is not None:
                entry["error"] = f"vLLM exited with {proc.returncode}: " + Path(logf.name).read_text()[-600:]
                return entry
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                entry["error"] = "vLLM did not answer in time"
                return entry
            time.sleep(2)
        entry["startup_s"] = round(time.perf_counter() - t0, 1)
        hosts = memory.pid_trees({"server": [proc.pid]})
        entry["result"] = bench(opts, f"http://127.0.0.1:{port}/v1", None, hosts, requests)
        return entry
    finally:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
        except ProcessLookupError:
            pass
        logf.close()
        os.unlink(logf.name)


# ---------------------------------------------------------------- reporting

def _m(entry: dict, *path):
    return compare.metric(entry.get("result") or {}, path)


def add_ratios(entries: list[dict]) -> None:
    """Ratios of numbers measured in this run: vs the baseline, vs N=1 of the same network, attested vs plain."""
    base = next((e for e in entries if e["kind"] == "baseline" and e.get("result")), None)
    ones = {e["network"]: e for e in entries if e["kind"] == "cluster" and e["nodes"] == 1 and e.get("result")}
    plain = {e["nodes"]: e for e in entries if e["kind"] == "cluster" and e["network"] == PLAIN and e.get("result")}
    for e in entries:
        if not e.get("result"):
            continue
        refs = {"vs_baseline": base, "vs_n1": ones.get(e["network"]),
                "vs_plain": plain.get(e["nodes"]) if e["network"] != PLAIN else None}
        e["ratios"] = {}
        for name, ref in refs.items():
            if ref is None or ref is e:
                continue
            e["ratios"][name] = {
                "output_throughput": compare.ratio(_m(e, "output_throughput"), _m(ref, "output_throughput")),
                "ttft_p50": compare.ratio(_m(e, "ttft_ms", "p50"), _m(ref, "ttft_ms", "p50")),
                "tpot_p50": compare.ratio(_m(e, "tpot_ms", "p50"), _m(ref, "tpot_ms", "p50")),
                "peak_rss_total": compare.ratio(compare.peak_rss_total(e["result"]),
                                                compare.peak_rss_total(ref["result"]))}


def _stat(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def aggregate(entries: list[dict], sets: list[str]) -> list[dict]:
    """Per N and request set: each network's figures as median (min-max) over its repeats, and
    each non-plain network against plain as the ratio of medians with the range of the per-pair
    ratios (pairs matched by repeat index)."""
    clusters = [e for e in entries if e.get("kind") == "cluster" and e.get("results")]
    rows = []
    for n in sorted({e["nodes"] for e in clusters}):
        for name in sets:
            arms: dict[str, list[dict]] = {}
            for e in sorted((e for e in clusters if e["nodes"] == n and name in e["results"]),
                            key=lambda e: e.get("repeat", 0)):
                arms.setdefault(e["network"], []).append(e)
            if not arms:
                continue
            row: dict = {"nodes": n, "request_set": name, "networks": {}}
            for net, es in arms.items():
                row["networks"][net] = {m: _stat([compare.metric(e["results"][name], path) for e in es])
                                        for m, path in SUMMARY_METRICS.items()}
                row["networks"][net]["repeats"] = [e.get("repeat", 0) for e in es]
            base = arms.get(PLAIN)
            row["vs_plain"] = {}
            for net, es in arms.items():
                if net == PLAIN or not base:
                    continue
                ratios = {}
                for m, path in SUMMARY_METRICS.items():
                    mine, ref = row["networks"][net][m], row["networks"][PLAIN][m]
                    by_k = {p.get("repeat", 0): compare.metric(p["results"][name], path) for p in base}
                    pairs = [compare.ratio(compare.metric(e["results"][name], path), by_k.get(e.get("repeat", 0)))
                             for e in es]
                    pairs = [x for x in pairs if x is not None]
                    ratios[m] = {"ratio_of_medians": compare.ratio(mine["median"], ref["median"]) if mine and ref else None,
                                 "pair_min": round(min(pairs), 3) if pairs else None,
                                 "pair_max": round(max(pairs), 3) if pairs else None, "pairs": len(pairs)}
                row["vs_plain"][net] = ratios
            rows.append(row)
    return rows


def summary_markdown(rows: list[dict]) -> str:
    def fig(stat, digits=1):
        return "n/a" if not stat else f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"

    def rat(r):
        if not r or r["ratio_of_medians"] is None:
            return "n/a"
        return f"{r['ratio_of_medians']:.3f} ({_f(r['pair_min'], 3)}-{_f(r['pair_max'], 3)})"
    lines = ["| N | request set | network | repeats | out tok/s median (min-max) | TTFT p50 ms | TPOT p50 ms "
             "| tok/s ÷ plain (pairs) | TTFT ÷ plain (pairs) |", "|---:|---|---|---:|---|---|---|---|---|"]
    for row in rows:
        for net, figs in row["networks"].items():
            vs = row["vs_plain"].get(net, {})
            lines.append(f"| {row['nodes']} | {row['request_set']} | {net} | {len(figs['repeats'])} "
                         f"| {fig(figs['output_throughput'])} | {fig(figs['ttft_p50'])} | {fig(figs['tpot_p50'])} "
                         f"| {rat(vs.get('output_throughput')) if vs else '-'} | {rat(vs.get('ttft_p50')) if vs else '-'} |")
    return "\n".join(lines)


def _f(value, digits=1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(entries: list[dict]) -> str:
    lines = ["| configuration | out tok/s | req/s | TTFT p50 / p90 / p99 (ms) | TPOT p50 / p90 / p99 (ms) "
             "| ITL p50 / p99 (ms) | failed | peak RSS per host (MiB) | peak RSS total (MiB) | start (s) "
             "| tok/s ÷ baseline | tok/s ÷ N=1 |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for e in entries:
        if not e.get("result"):
            why = e.get("skipped") or e.get("error") or "not run"
            lines.append(f"| {e['config']} | {'skipped' if e.get('skipped') else 'failed'}: {why[:160]} "
                         + "| " * 11 + "|")
            continue
        r = e["result"]
        mem = r.get("memory") or {}
        per = ", ".join(f"{h}: {v:.0f}" for h, v in (mem.get("peak_rss_mib_per_host") or {}).items())
        ratios = e.get("ratios", {})
        lines.append(
            f"| {e['config']} | {_f(_m(e, 'output_throughput'))} | {_f(_m(e, 'request_throughput'), 2)} "
            f"| {_f(_m(e, 'ttft_ms', 'p50'))} / {_f(_m(e, 'ttft_ms', 'p90'))} / {_f(_m(e, 'ttft_ms', 'p99'))} "
            f"| {_f(_m(e, 'tpot_ms', 'p50'))} / {_f(_m(e, 'tpot_ms', 'p90'))} / {_f(_m(e, 'tpot_ms', 'p99'))} "
            f"| {_f(_m(e, 'itl_ms', 'p50'))} / {_f(_m(e, 'itl_ms', 'p99'))} | {r['metrics']['failed']} "
            f"| {per} | {_f(mem.get('peak_rss_mib_total'), 0)} | {_f(e.get('startup_s'))} "
            f"| {_f((ratios.get('vs_baseline') or {}).get('output_throughput'), 3)} "
            f"| {_f((ratios.get('vs_n1') or {}).get('output_throughput'), 3)} |")
    return "\n".join(lines)


def model_check_markdown(check: dict) -> str:
    cal = check["calibration"]
    lines = [f"Calibration: N=1 TPOT {cal['n1_tpot_ms']:.1f} ms at concurrency {check['concurrency']}"
             + (f", {cal['n1_tpot_ms_at_concurrency_1']:.1f} ms at concurrency 1"
                if cal.get("n1_tpot_ms_at_concurrency_1") else "")
             + f" -> step = {cal['decode_fixed_ms']:.2f} ms + {cal['decode_per_seq_ms']:.2f} ms/sequence; "
             f"per-stage overhead fitted on N={cal['fitted_on_nodes']}: {cal['per_stage_overhead_ms']:.2f} ms; "
             f"link {check['link']['bandwidth_bps'] / 1e9:.1f} Gbit/s, {check['link']['latency_s'] * 1e6:.0f} µs.",
             "", "| N | measured TPOT p50 (ms) | predicted, link only (ms) | predicted, with fitted overhead (ms) "
             "| measured tok/s | predicted tok/s (with overhead) | hop per step (ms) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in check["rows"]:
        lines.append(f"| {r['nodes']} | {r['measured_tpot_ms']:.1f} | {r['predicted_tpot_ms_link_only']:.1f} "
                     f"| {r['predicted_tpot_ms_with_overhead']:.1f} | {_f(r['measured_tok_s'])} "
                     f"| {r['predicted_tok_s_with_overhead']:.1f} | {r['link_hop_ms']:.4f} |")
    return "\n".join(lines)


def plot(entries: list[dict], out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clusters = [e for e in entries if e["kind"] == "cluster" and e.get("result")]
    base = next((e for e in entries if e["kind"] == "baseline" and e.get("result")), None)
    networks = sorted({e["network"] for e in clusters})
    panels = (("output tokens/s", ("output_throughput",)), ("TTFT p50 (ms)", ("ttft_ms", "p50")),
              ("TPOT p50 (ms)", ("tpot_ms", "p50")), ("peak RSS total (MiB)", None))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    for ax, (title, path) in zip(axes, panels):
        for i, net in enumerate(networks):
            rows = sorted((e for e in clusters if e["network"] == net), key=lambda e: e["nodes"])
            ys = [(_m(e, *path) if path else compare.peak_rss_total(e["result"])) for e in rows]
            ax.plot([e["nodes"] for e in rows], ys, marker="o", color=f"C{i}", label=f"conclave ({net})")
        if base:
            y = _m(base, *path) if path else compare.peak_rss_total(base["result"])
            if y is not None:
                ax.axhline(y, color="k", linestyle="--", label="plain vLLM")
        ax.set_title(title)
        ax.set_xlabel("nodes (pipeline stages)")
        ax.set_xticks(sorted({e["nodes"] for e in clusters}) or [1])
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--nodes", default="1,2,3", help="node counts (default 1,2,3)")
    p.add_argument("--networks", default=PLAIN,
                   help="network layers, comma-separated, passed to `conclave up --network` (default plain)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--model", default="smollm2", help="imported model name (conclave model import)")
    p.add_argument("--dataset", choices=("fixed", "random"), default="fixed")
    p.add_argument("--num-requests", type=int, default=24)
    p.add_argument("--input-len", type=int, default=64, help="random dataset prompt tokens")
    p.add_argument("--output-len", type=int, default=48)
    p.add_argument("--max-concurrency", type=int, default=8)
    p.add_argument("--request-rate", type=float, default=float("inf"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmups", type=int, default=2)
    p.add_argument("--calibration-requests", type=int, default=4,
                   help="requests at concurrency 1 on the N=1 cluster (scaling-model calibration)")
    p.add_argument("--max-duration", type=float, default=240.0, help="bound of each measured phase (s)")
    p.add_argument("--start-timeout", type=float, default=900.0)
    p.add_argument("--budget", type=float, default=1500.0, help="skip configurations once this many s have passed")
    p.add_argument("--repeat", type=int, default=1, help="measurements per arm, interleaved across networks")
    p.add_argument("--request-sets", default="decode",
                   help="request sets measured on every cluster: decode (the set above), prefill")
    p.add_argument("--prefill-requests", type=int, default=8)
    p.add_argument("--prefill-input-len", type=int, default=1024)
    p.add_argument("--prefill-output-len", type=int, default=16)
    p.add_argument("--idle-seconds", type=float, default=0.0,
                   help="after the benchmark, CPU of every host's processes while idle for this long (0: off)")
    p.add_argument("--vocab-size", type=int, help="token ids for random prompts (default: the model's config.json)")
    p.add_argument("--out", required=True, help="folder for sweep.json, sweep.md and plots")
    opts = p.parse_args(argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    nodes = [int(x) for x in opts.nodes.split(",") if x]
    networks = [x.strip() for x in opts.networks.split(",") if x.strip()]

    sets = [x.strip() for x in opts.request_sets.split(",") if x.strip()]
    if not sets or any(x not in REQUEST_SETS for x in sets):
        p.error(f"--request-sets takes {', '.join(REQUEST_SETS)}")

    def vocab() -> int:
        if opts.vocab_size:
            return opts.vocab_size
        from conclave.runtime.model import registry
        return datasets.vocab_size_from_model_dir(registry.lookup(opts.model)[0])

    if opts.dataset == "random":
        requests = datasets.random_tokens(opts.num_requests, opts.input_len, opts.output_len, vocab(), seed=opts.seed)
    else:
        requests = datasets.fixed_prompts(opts.num_requests, opts.output_len, seed=opts.seed)
    set_requests = {"decode": requests}
    if "prefill" in sets:
        set_requests["prefill"] = datasets.random_tokens(opts.prefill_requests, opts.prefill_input_len,
                                                         opts.prefill_output_len, vocab(), seed=opts.seed)
    set_requests = {name: set_requests[name] for name in sets}
    first_set = set_requests[sets[0]]

    started = time.perf_counter()
    load_before = os.getloadavg()
    state_before = machine_state()
    entries: list[dict] = []

    def over_budget(name: str) -> bool:
        if time.perf_counter() - started > opts.budget:
            entries.append({"config": name, "kind": "skipped", "network": "", "nodes": 0,
                            "skipped": f"time budget of {opts.budget:.0f} s spent"})
            log(f"skipping {name}: time budget spent")
            return True
        return False

    if not opts.no_baseline and not over_budget("plain vLLM baseline"):
        log("baseline: plain vLLM in one process")
        entries.append(run_baseline(opts, requests))
        log(json.dumps(entries[-1].get("result", {}).get("metrics", {}).get("output_throughput")))
    dropped: set[str] = set()
    for n, k, network in schedule(nodes, networks, opts.repeat):
        if network in dropped:
            continue
        name = f"conclave local, {network}, {n} node(s)" + (f", repeat {k + 1}" if opts.repeat > 1 else "")
        if over_budget(name):
            continue
        log(f"{name}: up, bench, down")
        entry = run_cluster(opts, network, n, first_set, calibrate=(n == nodes[0] == 1 and k == 0 and network == networks[0]),
                            extra_sets=set_requests, repeat=k)
        if opts.repeat > 1:
            entry["config"] += f", repeat {k + 1}"
        entries.append(entry)
        if entry.get("skipped"):
            log(f"skipping network {network}: {entry['skipped']}")
            dropped.add(network)
            continue
        if entry.get("error"):
            log(f"{name} failed: {entry['error']}")
        else:
            log(f"{name}: {entry['result']['metrics']['output_throughput']:.1f} tok/s")
    add_ratios(entries)
    summary = aggregate(entries, sets)

    link = measure_loopback_link()
    measured = {e["nodes"]: {"tpot_ms": _m(e, "tpot_ms", "p50"), "output_tok_s": _m(e, "output_throughput")}
                for e in entries if e["kind"] == "cluster" and e["network"] == networks[0] and e.get("result")
                and e.get("repeat", 0) == 0}
    n1 = next((e for e in entries if e["kind"] == "cluster" and e["nodes"] == 1 and e.get("calibration_c1")), None)
    check = None
    spec = scaling_model.MODELS.get(opts.model)
    if spec and 1 in measured and len(measured) > 1:
        c1 = _m({"result": n1["calibration_c1"]}, "tpot_ms", "p50") if n1 else None
        check = scaling_model.check_against_measurement(
            spec, scaling_model.Link(link["bandwidth_bps"], link["latency_s"]), measured, opts.max_concurrency,
            tpot_ms_n1_at_1=c1)

    report = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.sweep", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "steal_share": steal_share(state_before, machine_state())},
        "request_set": {"dataset": opts.dataset, "num_requests": opts.num_requests, "output_len": opts.output_len,
                        "input_len": opts.input_len if opts.dataset == "random" else None,
                        "max_concurrency": opts.max_concurrency, "request_rate": str(opts.request_rate),
                        "seed": opts.seed, "warmups": opts.warmups, "ignore_eos": True, "temperature": 0.0,
                        "sets": {name: {"num_requests": len(reqs), "input_len": opts.prefill_input_len if name == "prefill"
                                        else (opts.input_len if opts.dataset == "random" else None),
                                        "output_len": opts.prefill_output_len if name == "prefill" else opts.output_len}
                                 for name, reqs in set_requests.items()}},
        "repeat": opts.repeat,
        "summary": summary,
        "sweep_wall_s": round(time.perf_counter() - started, 1),
        "local_link": link,
        "entries": entries,
        "scaling_model_check": check,
    }
    report["plots"] = plot(entries, out)
    (out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [f"Generated {report['generated']} by `{report['command']}` in {report['sweep_wall_s']} s "
          f"({report['machine']['cpus']} CPUs, load average before {report['machine']['loadavg_before'][0]}).",
          "", markdown(entries)]
    if summary:
        md += ["", f"Summary over {opts.repeat} interleaved repeat(s): median (min-max); ratios are ratios of "
               "medians (range of the per-pair ratios):", "", summary_markdown(summary)]
    if check:
        md += ["", "Scaling model vs measurement (same run):", "", model_check_markdown(check)]
    (out / "sweep.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    failed = [e for e in entries if e.get("error")]
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
