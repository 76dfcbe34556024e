"""Session-wide fixtures shared by every test area."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conclave.runtime import config


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """../shared/vectors (real public evidence). Skips, saying why, when the folder is absent."""
    path = config.vectors_dir()
    if not path.is_dir():
        pytest.skip(f"shared attestation vectors not found at {path} (set CONCLAVE_VECTORS)")
    return path


@pytest.fixture(scope="session")
def require_root() -> None:
    """Tests that build hosts need root; CI runs as root, so this fails loudly instead of skipping."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces); run the suite as root as CI does")
