"""Logging set-up: human text by default, one JSON object per line with CONCLAVE_LOG_FORMAT=json."""
from __future__ import annotations

import json
import logging
import sys
import time

from conclave.runtime import config


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("reason", "peer", "node", "step", "took_s"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(level: str | None = None) -> None:
    root = logging.getLogger()
    if getattr(root, "_conclave_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format() == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level or config.log_level())
    root._conclave_configured = True  # type: ignore[attr-defined]


def progress(message: str) -> None:
    """One line of progress for long steps (model import, sealing, cluster start), on stderr."""
    print(f"conclave: {message}", file=sys.stderr, flush=True)
