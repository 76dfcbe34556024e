"""A bounded load generator for any OpenAI-compatible endpoint.

Drives `/v1/completions` with streamed requests from a seeded dataset (random token ids or
fixed prompts), at a seeded Poisson request rate (or all at once) under a concurrency cap,
and reports the same metrics as `vllm bench serve` (request throughput, output tokens/s,
TTFT, TPOT, ITL, end-to-end latency) plus error counts and peak resident memory per host.

Run it as `python -m benchmarks.harness` or `conclave bench` from a checkout. It lives
outside the installed `conclave` package on purpose: it is a measuring tool, not runtime.
"""
from benchmarks.harness.errors import HarnessError

__all__ = ["HarnessError"]
