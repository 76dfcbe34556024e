"""Serving benchmark: local cluster with N = 1, 2, 3 hosts vs plain vLLM in one server, same run.

Each configuration is driven through the OpenAI API with the same bounded request set
(default 32 streamed completions, concurrency 8, fixed prompts, max_tokens 64, greedy,
ignore_eos so every request produces exactly max_tokens). Reports output tokens/s, TTFT and
TPOT (p50/p99), and peak resident memory per host (sum of RSS of every process inside the
host's network namespace, sampled every 0.5 s) and for the whole cluster (peak of the sum).
The cluster is started and stopped through the real CLI (`conclave up --local --detach`,
`conclave down`). The baseline is vLLM's OpenAI server in the root namespace with
VLLM_TARGET_DEVICE=cpu (no plugin, no Ray, vLLM's default executor), eager like one stage.

Run as root from the checkout:  .venv/bin/python benchmarks/serving_bench.py --out benchmarks/serving_results.json
CPU-heavy: stop other work first; on 2 cores expect about 15-20 minutes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import httpx

PROMPTS = (
    "Write a short story about a robot learning to paint.",
    "Explain how a rainbow forms.",
    "List some tips for staying productive while working from home.",
    "Describe the water cycle in simple terms.",
    "What are the benefits of regular exercise?",
    "Summarize the history of the printing press.",
    "Give me a recipe for a simple tomato soup.",
    "Why is the sky blue?",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


class RssSampler:
    """Peak RSS per group of processes; `groups` maps a name to a function listing its pids."""

    def __init__(self, groups: dict, interval: float = 0.5) -> None:
        self.groups, self.interval = groups, interval
        self.peak = {name: 0 for name in groups}
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for name, lister in self.groups.items():
                value = sum(rss_kb(p) for p in lister())
                self.peak[name] = max(self.peak[name], value)
                total += value
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


async def one_request(client: httpx.AsyncClient, url: str, headers: dict, model: str, prompt: str,
                      max_tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text") and first is None:
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    first = first or end
    return {"ttft": first - start, "latency": end - start, "tokens": tokens,
            "tpot": (end - first) / (tokens - 1) if tokens > 1 else 0.0}


async def drive(base_url: str, api_key: str | None, model: str, requests: int, concurrency: int,
                max_tokens: int) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url + "/completions"
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(one_request(client, url, headers, model, p, 8) for p in PROMPTS[:2]))  # warm-up

        async def bounded(i: int):
            async with sem:
                return await one_request(client, url, headers, model, PROMPTS[i % len(PROMPTS)], max_tokens)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded(i) for i in range(requests)))
        wall = time.perf_counter() - start
    ttft = sorted(r["ttft"] * 1000 for r in results)
    tpot = sorted(r["tpot"] * 1000 for r in results)
    total = sum(r["tokens"] for r in results)

    def pct(values, q):
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]

    return {"requests": requests, "concurrency": concurrency, "max_tokens": max_tokens, "wall_s": round(wall, 2),
            "output_tokens": total, "output_tok_s": round(total / wall, 2),
            "ttft_ms_p50": round(statistics.median(ttft), 1), "ttft_ms_p99": round(pct(ttft, 0.99), 1),
            "tpot_ms_p50": round(statistics.median(tpot), 1), "tpot_ms_p99": round(pct(tpot, 0.99), 1)}


def conclave(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conclave.runtime", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def bench_cluster(stages: int, opts) -> dict:
    state_dir = tempfile.mkdtemp(prefix="conclave-bench-")
    env = dict(os.environ, CONCLAVE_STATE_DIR=state_dir)
    t0 = time.perf_counter()
    up = conclave(["up", "--local", "--nodes", str(stages), "--port", str(free_port()), "--model", opts.model,
                   "--detach", "--json"], env, 1500)
    try:
        if up.returncode != 0:
            raise RuntimeError(f"conclave up failed: {up.stderr[-2000:]}")
        startup = time.perf_counter() - t0
        status = json.loads(up.stdout.strip().splitlines()[-1])
        groups = {n["name"]: (lambda ns=n["netns"]: netns_pids(ns)) for n in status["nodes"]}
        with RssSampler(groups) as sampler:
            result = asyncio.run(drive(status["endpoint"], status["api_key"], opts.model, opts.requests,
                                       opts.concurrency, opts.max_tokens))
        result.update({"config": f"conclave local, {stages} host(s)", "hosts": stages,
                       "startup_s": round(startup, 1),
                       "peak_rss_mb_per_host": {k: round(v / 1024) for k, v in sampler.peak.items()},
                       "peak_rss_mb_cluster": round(sampler.peak_total / 1024)})
        return result
    finally:
        down = conclave(["down"], env, 600)
        if down.returncode != 0:
            print(f"conclave down failed: {down.stderr[-2000:]}", file=sys.stderr)


def bench_plain(opts, model_path: str, dtype: str) -> dict:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "RAY_"))}
    env["VLLM_TARGET_DEVICE"] = "cpu"  # plain vLLM: no out-of-tree platform plugin
    log = tempfile.NamedTemporaryFile(prefix="vllm-plain-", suffix=".log", delete=False)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
            "--served-model-name", opts.model, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
            "--max-model-len", "2048", "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--max-num-seqs", "16",
            "--enforce-eager"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"plain vLLM exited; see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("plain vLLM did not start")
            time.sleep(2)
        startup = time.perf_counter() - t0
        with RssSampler({"server": lambda: tree_pids(proc.pid)}) as sampler:
            result = asyncio.run(drive(f"http://127.0.0.1:{port}/v1", None, opts.model, opts.requests,
                                       opts.concurrency, opts.max_tokens))
        result.update({"config": "plain vLLM, one server (no Ray)", "hosts": 1, "startup_s": round(startup, 1),
                       "peak_rss_mb_per_host": {"server": round(sampler.peak["server"] / 1024)},
                       "peak_rss_mb_cluster": round(sampler.peak_total / 1024)})
        return result
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        os.unlink(log.name)


def markdown(results: list[dict]) -> str:
    lines = ["| configuration | output tok/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | peak RSS per host (MB) "
             "| peak RSS total (MB) | start (s) |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for r in results:
        per_host = ", ".join(f"{k}: {v}" for k, v in r["peak_rss_mb_per_host"].items())
        lines.append(f"| {r['config']} | {r['output_tok_s']} | {r['ttft_ms_p50']} / {r['ttft_ms_p99']} | "
                     f"{r['tpot_ms_p50']} / {r['tpot_ms_p99']} | {per_host} | {r['peak_rss_mb_cluster']} | "
                     f"{r['startup_s']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1,2,3", help="host counts to measure (default 1,2,3)")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--out", help="write the JSON results here")
    opts = parser.parse_args()
    from conclave.runtime.model import registry
    folder, manifest = registry.lookup(opts.model)
    t0 = time.perf_counter()
    results = []
    if not opts.no_baseline:
        results.append(bench_plain(opts, str(folder), manifest["dtype"]))
        print(json.dumps(results[-1]), flush=True)
    for n in (int(x) for x in opts.hosts.split(",")):
        results.append(bench_cluster(n, opts))
        print(json.dumps(results[-1]), flush=True)
    report = {"machine": {"cpus": os.cpu_count(), "model": opts.model, "dtype": manifest["dtype"]},
              "bench_wall_s": round(time.perf_counter() - t0, 1), "results": results}
    if opts.out:
        Path(opts.out).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(results))
    print(f"benchmark took {report['bench_wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
