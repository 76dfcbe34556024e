"""Fixtures for overlay tests that build real hosts (network namespaces + wireguard-go)."""
from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def overlay_tools(require_root) -> None:
    """The netns tests need these programs; a missing one fails the test (never a silent skip)."""
    missing = [tool for tool in ("ip", "wg", "wireguard-go", "nft", "tcpdump") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"overlay tests need {', '.join(missing)} (apt: iproute2 wireguard-tools wireguard-go "
                    "nftables tcpdump)")
