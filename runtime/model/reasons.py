"""Stable reasons for model and model-shard refusals (tests, logs, `--json`, node state); defined
in the one reason registry, runtime/reasons.py."""
from __future__ import annotations

from conclave.runtime.reasons import ModelReason  # noqa: F401 (re-export; the one registry)


