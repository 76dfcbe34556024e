"""One streamed `/v1/completions` request, timed the way `vllm bench serve` times it.

Mirrors vllm/benchmarks/lib/endpoint_request_func.py (async_request_openai_completions):
timestamps are taken when a server-sent-events message carrying `choices` is parsed; the
usage-only final chunk sets the output token count; latency ends at the last choice chunk.
"""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from benchmarks.harness.datasets import SampleRequest
from benchmarks.harness.metrics import RequestOutput


class SSEBuffer:
    """Splits a byte stream into SSE `data:` payloads; chunks may cut messages anywhere."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        messages = []
        while True:
            cut = self._buf.find(b"\n\n")
            if cut < 0:
                break
            raw, self._buf = self._buf[:cut], self._buf[cut + 2:]
            for line in raw.decode("utf-8", errors="replace").splitlines():
                line = line.strip()
                if line.startswith("data:"):
                    messages.append(line[5:].strip())
        return messages


def build_payload(model: str, req: SampleRequest, *, ignore_eos: bool, temperature: float) -> dict:
    payload = {
        "model": model,
        "prompt": req.prompt,
        "max_tokens": req.output_len,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        payload["ignore_eos"] = True  # vLLM extension: every request yields exactly max_tokens
    return payload


async def send(session: aiohttp.ClientSession, url: str, payload: dict, headers: dict,
               prompt_len: int, timeout_s: float) -> RequestOutput:
    out = RequestOutput(prompt_len=max(prompt_len, 0))
    start = time.perf_counter()
    out.start_time = start
    last = start
    text: list[str] = []
    try:
        async with session.post(url, json=payload, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            out.status = resp.status
            if resp.status != 200:
                out.error_kind = "http_4xx" if 400 <= resp.status < 500 else "http_5xx" if resp.status >= 500 \
                    else "http_other"
                out.error = f"HTTP {resp.status} {resp.reason or ''}".strip()
                await resp.read()
                return out
            sse = SSEBuffer()
            async for data in resp.content.iter_any():
                for message in sse.feed(data):
                    if message == "[DONE]" or not message:
                        continue
                    chunk = json.loads(message)
                    if chunk.get("choices"):
                        now = time.perf_counter()
                        if out.chunks == 0:
                            out.ttft = now - start
                        else:
                            out.itl.append(now - last)
                        last = now
                        out.chunks += 1
                        text.append(chunk["choices"][0].get("text") or "")
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                        out.output_tokens = usage.get("completion_tokens")
                        if usage.get("prompt_tokens") is not None:
                            out.prompt_len = int(usage["prompt_tokens"])
            if out.chunks == 0:
                out.error_kind, out.error = "no_tokens", "the stream ended without a choice chunk"
                return out
            out.latency = last - start
            out.generated_text = "".join(text)
            out.success = True
    except asyncio.TimeoutError:
        out.error_kind, out.error = "timeout", f"no complete response within {timeout_s:g} s"
    except asyncio.CancelledError:
        out.error_kind, out.error = "cancelled", "stopped at the run's time bound"
        raise
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        out.error_kind, out.error = "transport", f"{type(exc).__name__}: {exc}"[:300]
    return out
