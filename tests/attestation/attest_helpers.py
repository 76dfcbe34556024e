"""Constants shared by the attestation tests (a fixed clock, a sample measurement)."""
from __future__ import annotations

from datetime import datetime, timezone

NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=timezone.utc)
MEASUREMENT = bytes(range(48))
