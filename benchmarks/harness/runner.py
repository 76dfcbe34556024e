"""Run one bounded benchmark against one endpoint: arrivals, concurrency cap, time bound.

Bounds: the request set is finite (the dataset), every request has a timeout, and the whole
measured phase stops at `max_duration_s`: requests not yet sent are not sent (counted as
`not_sent`), requests in flight are cancelled (counted as failed, kind `cancelled`).
"""
from __future__ import annotations

import asyncio
import math
import random
import ssl
import time
from dataclasses import dataclass, field

import aiohttp

from benchmarks.harness import client
from benchmarks.harness.datasets import SampleRequest
from benchmarks.harness.errors import HarnessError
from benchmarks.harness.memory import HostPids, PeakRssSampler
from benchmarks.harness.metrics import DEFAULT_PERCENTILES, RequestOutput, compute_metrics


@dataclass
class BenchConfig:
    endpoint: str  # base URL ending in /v1
    model: str | None = None  # None: the first id of GET /v1/models
    api_key: str | None = field(default=None, repr=False)
    ca_cert: str | None = None  # PEM trust anchor for an https endpoint (Conclave's `ca_cert`); system CAs otherwise
    concurrency: int | None = None  # None: unbounded
    request_rate: float = math.inf  # requests/s; inf sends all at once
    burstiness: float = 1.0  # 1.0 = Poisson; gamma-distributed gaps otherwise (as vLLM)
    seed: int = 0
    max_duration_s: float = 600.0
    request_timeout_s: float = 300.0
    warmups: int = 0
    ignore_eos: bool = True
    temperature: float = 0.0
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    rss_interval_s: float = 0.5

    def public(self) -> dict:
        """The configuration as recorded in results (no API key)."""
        return {"endpoint": self.endpoint, "model": self.model, "ca_cert": self.ca_cert,
                "concurrency": self.concurrency,
                "request_rate": "inf" if math.isinf(self.request_rate) else self.request_rate,
                "burstiness": self.burstiness, "seed": self.seed, "max_duration_s": self.max_duration_s,
                "request_timeout_s": self.request_timeout_s, "warmups": self.warmups,
                "ignore_eos": self.ignore_eos, "temperature": self.temperature}


def arrival_delays(n: int, rate: float, *, seed: int, burstiness: float = 1.0) -> list[float]:
    """Cumulative send offsets (s) of n requests: all 0 for inf, else gamma(burstiness) gaps of mean 1/rate."""
    if rate <= 0 or burstiness <= 0:
        raise HarnessError("bad_rate", "--request-rate and --burstiness must be positive", usage=True)
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    theta = 1.0 / (rate * burstiness)
    offsets, t = [], 0.0
    for _ in range(n):
        offsets.append(t)
        t += rng.gammavariate(burstiness, theta)
    return offsets


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def _resolve_model(session: aiohttp.ClientSession, cfg: BenchConfig) -> str:
    try:
        async with session.get(cfg.endpoint.rstrip("/") + "/models", headers=_headers(cfg.api_key),
                               timeout=aiohttp.ClientTimeout(total=30)) as resp:
            if resp.status != 200:
                raise HarnessError("endpoint_refused", f"GET /models answered HTTP {resp.status}")
            models = (await resp.json()).get("data") or []
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        raise HarnessError("endpoint_unreachable", f"cannot reach {cfg.endpoint}: {exc}") from None
    if not models:
        raise HarnessError("no_model", f"{cfg.endpoint}/models lists no model; pass --model")
    return models[0]["id"]


async def _run(cfg: BenchConfig, requests: list[SampleRequest]) -> tuple[list[RequestOutput], float, int, str]:
    url = cfg.endpoint.rstrip("/") + "/completions"
    headers = _headers(cfg.api_key)
    offsets = arrival_delays(len(requests), cfg.request_rate, seed=cfg.seed, burstiness=cfg.burstiness)
    limit = cfg.concurrency if cfg.concurrency else len(requests)
    tls = ssl.create_default_context(cafile=cfg.ca_cert) if cfg.ca_cert else None  # verified, never switched off
    connector = aiohttp.TCPConnector(limit=limit + 4, force_close=False, ssl=tls if tls else True)
    async with aiohttp.ClientSession(connector=connector) as session:
        model = cfg.model or await _resolve_model(session, cfg)

        async def one(req: SampleRequest) -> RequestOutput:
            payload = client.build_payload(model, req, ignore_eos=cfg.ignore_eos, temperature=cfg.temperature)
            return await client.send(session, url, payload, headers, req.prompt_len, cfg.request_timeout_s)

        for req in requests[:cfg.warmups]:  # warm-up: sequential, not measured
            await one(req)

        sem = asyncio.Semaphore(limit)
        start = time.perf_counter()

        sent = [False] * len(requests)

        async def scheduled(i: int, req: SampleRequest, offset: float) -> RequestOutput:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            async with sem:
                sent[i] = True
                return await one(req)

        tasks = [asyncio.create_task(scheduled(i, r, o)) for i, (r, o) in enumerate(zip(requests, offsets))]
        done, pending = await asyncio.wait(tasks, timeout=cfg.max_duration_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        duration = time.perf_counter() - start
    outputs, not_sent = [], 0
    for i, task in enumerate(tasks):
        if task in done and not task.cancelled() and task.exception() is None:
            outputs.append(task.result())
        elif not sent[i]:
            not_sent += 1
        elif task in done and not task.cancelled():
            outputs.append(RequestOutput(error_kind="harness", error=repr(task.exception())[:300]))
        else:
            outputs.append(RequestOutput(error_kind="cancelled", error="stopped at the run's time bound"))
    return outputs, duration, not_sent, model


def run(cfg: BenchConfig, requests: list[SampleRequest], hosts: HostPids | None = None) -> dict:
    """Run the benchmark; returns config, metrics, memory and per-request records as JSON-ready dicts."""
    if not requests:
        raise HarnessError("empty_dataset", "no requests to send", usage=True)
    if cfg.concurrency is not None and cfg.concurrency < 1:
        raise HarnessError("bad_concurrency", "--max-concurrency must be >= 1", usage=True)
    if cfg.max_duration_s <= 0 or cfg.request_timeout_s <= 0:
        raise HarnessError("bad_bounds", "--max-duration and --request-timeout must be positive", usage=True)
    sampler = PeakRssSampler(hosts, cfg.rss_interval_s) if hosts else None
    if sampler:
        sampler.__enter__()
    try:
        outputs, duration, not_sent, model = asyncio.run(_run(cfg, requests))
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
    result = {"config": {**cfg.public(), "model": model, "num_requests": len(requests)},
              "metrics": compute_metrics(outputs, duration, cfg.percentiles) if outputs else None,
              "not_sent": not_sent,
              "memory": sampler.result() if sampler else None,
              "per_request": [o.to_json() for o in outputs]}
    if outputs and result["metrics"]["completed"] == 0:
        first = next((o.error for o in outputs if o.error), "")
        result["all_failed"] = first
    return result
