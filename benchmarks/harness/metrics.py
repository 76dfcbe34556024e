"""Per-request records and the metric computation, with `vllm bench serve`'s definitions.

Pure functions, no I/O, so tests check them against known timings. Definitions follow
vllm/benchmarks/serve.py (calculate_metrics) and lib/endpoint_request_func.py:
- TTFT: time from sending the request to the first streamed chunk that carries a choice.
- latency (E2EL): time from sending to the LAST chunk that carries a choice (the trailing
  usage-only chunk and `[DONE]` do not count).
- ITL: every gap between consecutive choice chunks, pooled over all requests.
- TPOT: (latency - TTFT) / (output_tokens - 1), only for requests with more than one token.
- output tokens: `usage.completion_tokens` from the final chunk (stream_options.include_usage).
  vLLM falls back to a tokenizer; without one it counts 1. This harness falls back to the
  number of choice chunks (one token per chunk for vLLM's streaming), which is closer.
- duration: wall time of the measured phase (first request issued to last response done).
- percentiles: numpy.percentile with linear interpolation, as vLLM.
A request fails on a non-200 status, a transport error or timeout, or a stream that never
yields a choice chunk; failures count per kind and are excluded from latency statistics.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


@dataclass
class RequestOutput:
    """What one request produced, in seconds (perf_counter based)."""

    success: bool = False
    start_time: float = 0.0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    chunks: int = 0
    output_tokens: int | None = None
    prompt_len: int = 0
    status: int | None = None
    error_kind: str | None = None  # http_4xx | http_5xx | transport | timeout | no_tokens | cancelled
    error: str = ""
    generated_text: str = ""

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("generated_text")
        return out


def output_token_count(out: RequestOutput) -> int:
    """usage.completion_tokens when the server sent it, else the number of choice chunks."""
    if out.output_tokens:
        return int(out.output_tokens)
    return max(out.chunks, 1)


def _stats(values_s: list[float], percentiles) -> dict:
    """mean/median/std/p* in milliseconds; zeros for an empty list (vLLM's `or 0`)."""
    data = np.asarray(values_s if values_s else [0.0], dtype=float) * 1000.0
    out = {"mean": float(np.mean(data)), "median": float(np.median(data)), "std": float(np.std(data))}
    for p in percentiles:
        out[f"p{p:g}"] = float(np.percentile(data, p))
    out["count"] = len(values_s)
    return out


def error_counts(outputs: list[RequestOutput]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for out in outputs:
        if not out.success:
            kind = out.error_kind or "unknown"
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def compute_metrics(outputs: list[RequestOutput], duration_s: float,
                    percentiles=DEFAULT_PERCENTILES) -> dict:
    """Aggregate per-request records into the benchmark's metrics (see module docstring)."""
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    ok = [o for o in outputs if o.success]
    out_lens = [output_token_count(o) for o in ok]
    tpots = [(o.latency - o.ttft) / (n - 1) for o, n in zip(ok, out_lens) if n > 1]
    itls = [gap for o in ok for gap in o.itl]
    total_output = sum(out_lens)
    total_input = sum(o.prompt_len for o in ok)
    return {
        "requests": len(outputs),
        "completed": len(ok),
        "failed": len(outputs) - len(ok),
        "errors": error_counts(outputs),
        "duration_s": duration_s,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(ok) / duration_s,
        "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
        "ttft_ms": _stats([o.ttft for o in ok], percentiles),
        "tpot_ms": _stats(tpots, percentiles),
        "itl_ms": _stats(itls, percentiles),
        "e2el_ms": _stats([o.latency for o in ok], percentiles),
    }
