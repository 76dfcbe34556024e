"""Client of NVIDIA's RIM service (`GET {base}/v1/rim/{rim_id}`), with a cache folder.

Why: a verifier must be able to validate a GPU's measurements against NVIDIA's RIMs without
being handed them. The RIM id comes from the evidence (nvgpu_rim.driver_rim_id /
vbios_rim_id); the service answers JSON {"id", "rim": base64 of the swidtag, "sha256", ...}.
RIMs are NVIDIA-signed and immutable per id, so a cached copy is reused forever and the
transport needs no trust: nvgpu.verify checks every RIM's signature and chain (rim_invalid).
A RIM that cannot be had is simply absent (verification then says rim_missing, naming the id).
The base URL is a parameter (the emulator in tests, a mirror in deployments).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import threading
from pathlib import Path

from conclave.runtime.attestation import nvgpu_rim
from conclave.runtime.attestation.collateral_fetch import _write_atomic, http_get
from conclave.runtime.attestation.core import AttestationError, MalformedEvidence

log = logging.getLogger("conclave.attestation.rim_service")

NVIDIA_RIM_SERVICE = "https://rim.attestation.nvidia.com"
DEFAULT_TIMEOUT = 5.0
_RIM_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class RimService:
    """Fetches RIMs by id (thread-safe); `last_errors` names what could not be had last time."""

    def __init__(self, base_url: str = NVIDIA_RIM_SERVICE, *, cache_dir: Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir) / "rims" if cache_dir is not None else None
        self.timeout = timeout
        self._memory: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.last_errors: list[str] = []

    def __repr__(self) -> str:
        return f"RimService({self.base_url}, cache={self.cache_dir})"

    def fetch(self, rim_id: str) -> bytes | None:
        """The RIM swidtag for `rim_id` (cache first), or None with the reason in last_errors."""
        if not _RIM_ID.match(rim_id or ""):
            self.last_errors.append(f"{rim_id!r}: not a RIM id")
            return None
        if rim_id in self._memory:
            return self._memory[rim_id]
        if self.cache_dir is not None:
            try:
                xml = (self.cache_dir / f"{rim_id}.swidtag").read_bytes()
                self._memory[rim_id] = xml
                return xml
            except OSError:
                pass
        try:
            xml = self._download(rim_id)
        except AttestationError as exc:
            self.last_errors.append(f"{rim_id}: {exc.message}")
            log.warning("RIM %s not fetched: %s", rim_id, exc.message)
            return None
        self._memory[rim_id] = xml
        if self.cache_dir is not None:
            _write_atomic(self.cache_dir / f"{rim_id}.swidtag", xml)
        return xml

    def _download(self, rim_id: str) -> bytes:
        url = f"{self.base_url}/v1/rim/{rim_id}"
        body = http_get(url, timeout=self.timeout).body
        try:
            doc = json.loads(body)
            xml = base64.b64decode(doc["rim"], validate=True)
        except (ValueError, TypeError, KeyError, binascii.Error):
            raise MalformedEvidence(f"{url}: not a RIM service answer ({{\"rim\": base64}})") from None
        digest = doc.get("sha256") if isinstance(doc, dict) else None
        if digest is not None and str(digest).lower() != hashlib.sha256(xml).hexdigest():
            raise MalformedEvidence(f"{url}: the RIM does not match the sha256 the service gave")
        if len(xml) > nvgpu_rim.MAX_RIM_LEN:
            raise MalformedEvidence(f"{url}: RIM larger than {nvgpu_rim.MAX_RIM_LEN} bytes")
        return xml

    def rims_for(self, ids: list[str]) -> nvgpu_rim.RimSet | None:
        """Parsed RIMs for these ids (each fetched at most once); None when none could be had."""
        with self._lock:
            self.last_errors = []
            rims = []
            for rim_id in dict.fromkeys(i for i in ids if i):
                xml = self.fetch(rim_id)
                if xml is None:
                    continue
                try:
                    rims.append(nvgpu_rim.parse_rim(xml, rim_id))
                except MalformedEvidence as exc:
                    self.last_errors.append(f"{rim_id}: {exc.message}")
            return nvgpu_rim.RimSet(tuple(rims)) if rims else None


__all__ = ["RimService", "NVIDIA_RIM_SERVICE"]
