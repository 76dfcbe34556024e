"""When each lifecycle step of one node boot happened: for operators, and for the lifecycle benchmark.

A step is marked each time the node reaches it (the first shard verification, every Ray start,
every engine launch...). Each mark logs one line

    step engine_ready +74.2s since node start (41.8s after engine_launched)

(JSON logs carry `step` and `took_s`), and the node's status (`conclave status --json`, per node
`lifecycle.timeline`) lists the marks as [step, seconds since the node started]: the newest
MAX_EVENTS, so a long-running node's restarts stay visible without growing without bound.
Timestamps only; nothing secret is ever recorded here.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("conclave.node")
MAX_EVENTS = 64


class Timeline:
    def __init__(self, started: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.started = clock() if started is None else started
        self._events: deque[tuple[str, float]] = deque(maxlen=MAX_EVENTS)
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def mark(self, step: str, after: str | None = None) -> float:
        """Record `step` now; log how long since the node started and, with `after`, since that
        step's latest mark. Returns the seconds since the node started."""
        now = self._clock()
        with self._lock:
            since_start = now - self.started
            took = now - self._last[after] if after in self._last else None
            self._events.append((step, round(since_start, 3)))
            self._last[step] = now
        if took is None:
            log.info("step %s +%.1fs since node start", step, since_start, extra={"step": step})
        else:
            log.info("step %s +%.1fs since node start (%.1fs after %s)", step, since_start, took, after,
                     extra={"step": step, "took_s": round(took, 3)})
        return since_start

    def seen(self, step: str) -> bool:
        with self._lock:
            return step in self._last

    def to_json(self) -> dict:
        with self._lock:
            return {"started": round(self.started, 3), "steps": [[s, t] for s, t in self._events]}
