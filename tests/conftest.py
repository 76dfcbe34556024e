"""Session-wide fixtures shared by every test area, and the lane-marker checks.

Markers (pyproject.toml): `cluster` starts a vLLM cluster, `netns` needs root and network
namespaces (wireguard-go included), `image` builds the CVM image with mkosi. The fast lane is
`-m "not cluster and not netns and not image"`. Two checks keep it honest: collection fails when
a test uses `require_root` without `netns` or `image`, and every process a test starts is checked
against its markers (tests/lane_guard.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conclave.runtime import config

from lane_guard import LANE_MARKERS, guard_popen

_running: list[pytest.Item] = []  # the test whose setup or call is running now
_undo_guard: list = []


def _running_markers() -> set[str] | None:
    if not _running:
        return None
    return {m for m in LANE_MARKERS if _running[-1].get_closest_marker(m) is not None}


def pytest_configure(config):  # noqa: ARG001 - pytest's hook signature
    _undo_guard.append(guard_popen(_running_markers))


def pytest_unconfigure(config):  # noqa: ARG001
    while _undo_guard:
        _undo_guard.pop()()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """Checked while a test sets up (its fixtures, wider-scoped ones included) and runs. Teardown
    is not checked: it only removes what a checked setup made, and refusing it would leak hosts
    when a package's last test is not the one that started them."""
    _running.append(item)
    try:
        yield
    finally:
        _running.pop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _running.append(item)
    try:
        yield
    finally:
        _running.pop()


def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    """A test that asks for root (network namespaces, or loop devices for the image) is marked netns or image."""
    unmarked = [item.nodeid for item in items
                if "require_root" in getattr(item, "fixturenames", ())
                and not any(item.get_closest_marker(m) for m in ("netns", "image"))]
    if unmarked:
        raise pytest.UsageError("tests use require_root without the netns or image marker: " + ", ".join(unmarked[:20]))


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
