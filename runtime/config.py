"""The one place that reads environment variables.

Every other module asks this one; nothing else calls os.environ for configuration.
(Child processes get explicit environments built by the code that spawns them.)
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def state_dir() -> Path:
    """Runtime state of local clusters (pids, status files). CONCLAVE_STATE_DIR overrides."""
    return Path(_env("CONCLAVE_STATE_DIR") or "/run/conclave")


def cache_dir() -> Path:
    """Imported models and cached collateral. CONCLAVE_CACHE_DIR overrides."""
    default = Path(_env("XDG_CACHE_HOME") or Path.home() / ".cache") / "conclave"
    return Path(_env("CONCLAVE_CACHE_DIR") or default)


def vectors_dir() -> Path:
    """Public attestation vectors (../shared/vectors beside the checkout). CONCLAVE_VECTORS overrides."""
    return Path(_env("CONCLAVE_VECTORS") or REPO_ROOT.parent / "shared" / "vectors")


def log_format() -> str:
    """'text' (default) or 'json'. CONCLAVE_LOG_FORMAT overrides."""
    return (_env("CONCLAVE_LOG_FORMAT") or "text").lower()


def log_level() -> str:
    return (_env("CONCLAVE_LOG_LEVEL") or "INFO").upper()


def owner_fingerprint() -> str | None:
    """Pinned deployment-owner key fingerprint (SHA-256 hex) for nodes. CONCLAVE_OWNER_FINGERPRINT."""
    return _env("CONCLAVE_OWNER_FINGERPRINT")


def raw(name: str) -> str | None:
    """Escape hatch for a variable owned by another program (documented at the call site)."""
    return _env(name)
