"""Bounded load on a running local cluster: C concurrent clients, N requests, mixed streaming.

    CONCLAVE_STATE_DIR=DIR .venv/bin/python benchmarks/load_test.py [--requests 2000] [--concurrency 64]
                                                                   [--max-tokens 8] [--json]

Reads the endpoint and API key from the cluster state (STATE_DIR/cluster.json). Requests cycle
through chat, streaming chat, completion and streaming completion with short prompts and small
max_tokens, so the run is bounded. Checks: zero 5xx, zero transport errors, every request
answered exactly once (one response id per request, all distinct; every stream ends with
[DONE] and carries one id), and the summed RSS of the cluster's processes (everything in its
network namespaces, its process groups and the supervisor, with descendants) measured after a
warm-up and after the run grows by at most --max-growth (default 25 % + 512 MiB). Reports p50 /
p99 latency and throughput. Traffic goes only to the cluster's 127.0.0.1 endpoint.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

PROMPTS = ("Say hi.", "Count to three.", "Name a color.", "What is 2+2?", "One word for happy?",
           "Name a fruit.", "Say yes or no.", "Spell cat.")
KINDS = ("chat", "chat-stream", "completion", "completion-stream")


def cluster_pids(state: dict) -> set[int]:
    """The cluster's processes: netns members, recorded process groups, the supervisor, and descendants."""
    roots: set[int] = set()
    for name in state.get("created", {}).get("netns", []):
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
        roots |= {int(p) for p in out.split()}
    roots |= {int(g["pid"]) for g in state.get("groups", [])}
    for key in ("supervisor_pid", "engine_pid"):
        if state.get(key):
            roots.add(int(state[key]))
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    seen, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen or not Path(f"/proc/{pid}").exists():
            continue
        seen.add(pid)
        stack += children.get(pid, [])
    return seen


def rss_bytes(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _body(i: int, kind: str, max_tokens: int) -> tuple[str, dict]:
    prompt = PROMPTS[i % len(PROMPTS)]
    stream = kind.endswith("-stream")
    if kind.startswith("chat"):
        return "/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": prompt}],
                                     "max_tokens": max_tokens, "stream": stream}
    return "/completions", {"model": "smollm2", "prompt": prompt, "max_tokens": max_tokens, "stream": stream}


async def _one(client: httpx.AsyncClient, base: str, i: int, max_tokens: int) -> dict:
    kind = KINDS[i % len(KINDS)]
    path, body = _body(i, kind, max_tokens)
    t0 = time.perf_counter()
    rec = {"i": i, "kind": kind, "status": None, "ids": [], "error": None, "done": False}
    try:
        if body["stream"]:
            async with client.stream("POST", base + path, json=body) as resp:
                rec["status"] = resp.status_code
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        rec["done"] = True
                        continue
                    chunk = json.loads(data)
                    if "error" in chunk:
                        rec["error"] = f"stream error: {str(chunk['error'])[:200]}"
                    elif chunk.get("id") and chunk["id"] not in rec["ids"]:
                        rec["ids"].append(chunk["id"])
        else:
            resp = await client.post(base + path, json=body)
            rec["status"] = resp.status_code
            if resp.status_code == 200:
                rec["ids"] = [resp.json()["id"]]
                rec["done"] = True
            else:
                rec["error"] = resp.text[:200]
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
    rec["latency"] = time.perf_counter() - t0
    return rec


async def _drive(base: str, key: str | None, *, requests: int, concurrency: int, max_tokens: int,
                 timeout: float) -> list[dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: list[dict] = []
    counter = iter(range(requests))
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:
        async def worker():
            for i in counter:
                results.append(await _one(client, base, i, max_tokens))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def run_load(state_file: Path, *, requests: int, concurrency: int = 64, max_tokens: int = 8,
             timeout: float = 300, warmup: int = 64, max_growth_frac: float = 0.25,
             max_growth_abs: int = 512 * 1024 * 1024) -> dict:
    state = json.loads(Path(state_file).read_text())
    base, key = state["endpoint"], state.get("api_key")
    asyncio.run(_drive(base, key, requests=warmup, concurrency=concurrency, max_tokens=max_tokens, timeout=timeout))
    pids_before = cluster_pids(state)
    rss_before = rss_bytes(pids_before)
    t0 = time.monotonic()
    recs = asyncio.run(_drive(base, key, requests=requests, concurrency=concurrency, max_tokens=max_tokens,
                              timeout=timeout))
    wall = time.monotonic() - t0
    pids_after = cluster_pids(state)
    rss_after = rss_bytes(pids_after)
    statuses = Counter(str(r["status"]) for r in recs)
    ids = [i for r in recs for i in r["ids"]]
    id_counts = Counter(ids)
    per_request_ids = Counter(len(r["ids"]) for r in recs)
    answered_once = sum(1 for r in recs if r["status"] == 200 and len(r["ids"]) == 1 and r["done"] and not r["error"])
    lat = [r["latency"] for r in recs if r["status"] == 200]
    bound = int(rss_before * (1 + max_growth_frac) + max_growth_abs)
    result = {
        "requests": requests, "concurrency": concurrency, "max_tokens": max_tokens,
        "responses": len(recs), "statuses": dict(statuses),
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "transport_errors": sum(1 for r in recs if r["status"] is None),
        "answered_exactly_once": answered_once,
        "distinct_ids": len(id_counts), "duplicate_ids": sum(1 for n in id_counts.values() if n > 1),
        "requests_by_id_count": {str(k): v for k, v in sorted(per_request_ids.items())},
        "by_kind": dict(Counter(r["kind"] for r in recs)),
        "wall_s": round(wall, 1), "requests_per_s": round(len(recs) / wall, 2) if wall else None,
        "latency_p50_s": round(percentile(lat, 50), 3), "latency_p99_s": round(percentile(lat, 99), 3),
        "latency_max_s": round(max(lat), 3) if lat else None,
        "rss_before_mib": round(rss_before / 2**20, 1), "rss_after_mib": round(rss_after / 2**20, 1),
        "rss_growth_mib": round((rss_after - rss_before) / 2**20, 1), "rss_bound_mib": round(bound / 2**20, 1),
        "processes_before": len(pids_before), "processes_after": len(pids_after),
        "errors": [r["error"] for r in recs if r["error"]][:10],
    }
    result["ok"] = (result["responses"] == requests and result["server_errors_5xx"] == 0
                    and result["transport_errors"] == 0 and answered_once == requests
                    and result["distinct_ids"] == requests and result["duplicate_ids"] == 0
                    and rss_after <= bound)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", help="cluster state folder (default: CONCLAVE_STATE_DIR)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.state_dir:
        state_dir = Path(args.state_dir)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from conclave.runtime import config
        state_dir = config.state_dir()
    result = run_load(state_dir / "cluster.json", requests=args.requests, concurrency=args.concurrency,
                      max_tokens=args.max_tokens)
    print(json.dumps(result, indent=None if not args.json else 2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("needs root (reads the cluster's network namespaces)", file=sys.stderr)
    sys.exit(main())
