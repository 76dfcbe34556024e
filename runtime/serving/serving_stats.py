"""The head front's own serving figures: requests, completion tokens, tokens/s, TTFT, latency.

Why the front counts for itself: vLLM's /metrics needs the API key when the front holds one, and
the public status page (/status, /v1/status.json) may show only aggregate figures. The front sees
every completion it relays, so it measures them where the client does: time to first token is
from the request's arrival at the front to the first content event of a stream; latency is to the
end of the response. Nothing per request (prompts, bodies, keys, client addresses) is kept, only
counts and a short window of timings.

Tokens: a response's `usage.completion_tokens` when it carries one (non-streamed responses, and
streams asked with stream_options.include_usage); otherwise one per streamed content event, which
is how vLLM streams (one delta per generated token).

Thread safety: the front's event loop writes, any thread may call snapshot().
"""
from __future__ import annotations

import json
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field

COUNTED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
RATE_WINDOW_S = 10.0           # tokens/s is the mean over this trailing window
TIMING_SAMPLES = 200           # TTFT and latency percentiles over the newest this many requests


def counted(method: str, path: str) -> bool:
    """The exchanges whose figures the status page shows: completions."""
    return method == "POST" and path in COUNTED_PATHS


@dataclass(eq=False)
class Exchange:
    """One completion in flight: token counting and first-token time (loop thread only)."""

    stats: "ServingStats"
    started: float
    first_token: float | None = None
    streamed_tokens: int = 0
    usage_tokens: int | None = None
    counted_tokens: int = 0
    _pending: bytes = field(default=b"", repr=False)

    def feed_stream(self, chunk: bytes) -> None:
        """Bytes of an SSE response as they arrive from the engine."""
        events = (self._pending + chunk).split(b"\n\n")
        self._pending = events.pop()[-65536:]
        for event in events:
            for line in event.splitlines():
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())

    def feed_whole(self, body: bytes) -> None:
        """A complete non-streamed JSON response."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return
        self._usage(doc)

    def _data(self, payload: bytes) -> None:
        if not payload or payload == b"[DONE]":
            return
        tokens = _compact_tokens(payload)
        if tokens is None:
            try:
                doc = json.loads(payload)
            except (ValueError, UnicodeDecodeError):
                return
            if not isinstance(doc, dict):
                return
            self._usage(doc)
            tokens = sum(1 for c in doc.get("choices") or () if isinstance(c, dict) and _has_content(c))
        if tokens:
            now = time.monotonic()
            if self.first_token is None:
                self.first_token = now
                self.stats._first_token(now - self.started)
            self.streamed_tokens += tokens
            if self.usage_tokens is None:
                self._add_tokens(tokens, now)

    def _usage(self, doc) -> None:
        usage = doc.get("usage") if isinstance(doc, dict) else None
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
            self.usage_tokens = tokens
            if tokens > self.counted_tokens:
                self._add_tokens(tokens - self.counted_tokens, time.monotonic())

    def _add_tokens(self, n: int, at: float) -> None:
        self.counted_tokens += n
        self.stats._tokens(n, at)

    def finish(self, status: int | None) -> None:
        """The response ended (status None: it was cut or aborted)."""
        self.stats._finished(self, status)


_CONTENT_KEYS = (b'"text":"', b'"content":"', b'"reasoning_content":"')
_EMPTY_VALUES = (b'"text":""', b'"content":""', b'"reasoning_content":""')
_CONTENT_NAMES = (b'"text"', b'"content"', b'"reasoning_content"')


def _compact_tokens(payload: bytes) -> int | None:
    """Tokens (0 or 1) of a one-choice chunk as vLLM streams it (compact JSON), read from the bytes:
    json.loads of every event was the front's largest per-chunk cost. A key pattern like "text":"
    cannot occur inside a JSON string (quotes there are escaped). None when the bytes alone do not
    tell: a usage object, several choices, spaced or other JSON; the caller parses those."""
    if not (payload.startswith(b"{") and payload.endswith(b"}")) or b'"usage":{' in payload \
            or payload.count(b'"index":') != 1:
        return None
    keys = sum(payload.count(k) for k in _CONTENT_KEYS)
    if not keys:
        return None if any(name in payload for name in _CONTENT_NAMES) else 0
    return 1 if keys > sum(payload.count(e) for e in _EMPTY_VALUES) else 0


def _has_content(choice: dict) -> bool:
    delta = choice.get("delta")
    if isinstance(delta, dict) and (delta.get("content") or delta.get("reasoning_content")):
        return True
    return bool(choice.get("text"))


class ServingStats:
    """Aggregate completion figures for the public status page."""

    def __init__(self, *, clock=time.monotonic, wall=time.time):
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self.started_at = wall()
        self._requests = 0
        self._in_flight = 0
        self._failed = 0
        self._tokens_total = 0
        self._token_times: deque[tuple[float, int]] = deque()
        self._ttft: deque[float] = deque(maxlen=TIMING_SAMPLES)
        self._latency: deque[float] = deque(maxlen=TIMING_SAMPLES)

    def begin(self) -> Exchange:
        with self._lock:
            self._requests += 1
            self._in_flight += 1
        return Exchange(self, self._clock())

    # ------------------------------------------------------------------ from Exchange
    def _first_token(self, seconds: float) -> None:
        with self._lock:
            self._ttft.append(seconds)

    def _tokens(self, n: int, at: float) -> None:
        with self._lock:
            self._tokens_total += n
            self._token_times.append((at, n))
            self._trim(at)

    def _finished(self, ex: Exchange, status: int | None) -> None:
        with self._lock:
            self._in_flight -= 1
            if status is None or status >= 400:
                self._failed += 1
            else:
                self._latency.append(self._clock() - ex.started)

    def _trim(self, now: float) -> None:
        while self._token_times and self._token_times[0][0] < now - RATE_WINDOW_S:
            self._token_times.popleft()

    # ------------------------------------------------------------------ readers
    def snapshot(self) -> dict:
        """Public figures (JSON-ready)."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            recent = sum(n for _, n in self._token_times)
            ttft, latency = list(self._ttft), list(self._latency)
            out = {"requests_total": self._requests, "requests_in_flight": self._in_flight,
                   "requests_failed": self._failed, "completion_tokens_total": self._tokens_total}
        out["tokens_per_s"] = round(recent / RATE_WINDOW_S, 2)
        out["rate_window_s"] = RATE_WINDOW_S
        out["ttft_ms"] = _summary(ttft)
        out["latency_ms"] = _summary(latency)
        out["since"] = _rfc3339(self.started_at)
        return out


def _summary(samples: list[float]) -> dict:
    if not samples:
        return {"last": None, "p50": None, "p95": None, "samples": 0}
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"last": round(samples[-1] * 1000, 1), "p50": round(statistics.median(ordered) * 1000, 1),
            "p95": round(p95 * 1000, 1), "samples": len(samples)}


def _rfc3339(epoch: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
