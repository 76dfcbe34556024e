"""Emulated NVIDIA RIM service: `GET /v1/rim/{rim_id}` answering as NVIDIA's does.

Why: tests and local mode fetch RIMs through the same client (rim_service.RimService) as a
production verifier, from RIMs signed by a test RIM root (nvgpu_rim_issue.TestRimAuthority).
Answer: 200 {"id", "rim": base64 swidtag, "sha256", "rim_format": "SWID", "rim_format_version",
"last_updated"}; 404 for an unknown id. RIMs are public data.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import Mapping

from conclave.runtime.attestation.emulated.vendor_server import VendorServer


class EmulatedRimService(VendorServer):
    name = "nvidia-rim-service"

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self._rims: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def add(self, rim_id: str, swidtag: bytes) -> None:
        with self._lock:
            self._rims[rim_id] = bytes(swidtag)

    def respond(self, path: str, query: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[:2] != ["v1", "rim"]:
            return 404, b"", {}
        with self._lock:
            xml = self._rims.get(parts[2])
        if xml is None:
            return 404, json.dumps({"error": "RIM not found"}).encode(), {"Content-Type": "application/json"}
        body = json.dumps({"id": parts[2], "rim": base64.b64encode(xml).decode("ascii"),
                           "sha256": hashlib.sha256(xml).hexdigest(), "rim_format": "SWID",
                           "rim_format_version": "1.0", "last_updated": "2026-01-01T00:00:00Z"}).encode()
        return 200, body, {"Content-Type": "application/json"}


__all__ = ["EmulatedRimService"]
