"""The lane guard (tests/lane_guard.py): which commands need which marker, and that the session's
guard really refuses an unmarked test's namespace before anything is created."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lane_guard import UnmarkedLaneError, guard_popen, needed_markers


@pytest.mark.parametrize("argv, markers", [
    (["ip", "netns", "add", "x"], {"netns"}),
    (["ip", "netns", "exec", "x", "ping", "-c1", "10.0.0.1"], {"netns"}),
    (["ip", "-n", "x", "link", "set", "lo", "up"], {"netns"}),
    (["ip", "link", "add", "br0", "type", "bridge"], {"netns"}),
    (["sudo", "ip", "netns", "del", "x"], {"netns"}),
    (["wireguard-go", "wg0"], {"netns"}),
    (["wg", "set", "wg0", "private-key", "/dev/stdin"], {"netns"}),
    (["/repo/.venv/bin/conclave", "up", "--local", "--nodes", "3"], {"cluster"}),
    ([sys.executable, "-m", "conclave.runtime.cli", "up", "--local"], {"cluster"}),
    (["ip", "netns", "exec", "n0", "ray", "start", "--head"], {"netns", "cluster"}),
    (["mkosi", "build"], {"image"}),
    (["bash", "images/cvm/build-local.sh"], {"image"}),
    ("mkosi --force build", {"image"}),
    # read-only or unrelated commands need nothing
    (["ip", "-o", "netns", "list"], set()),
    (["ip", "link", "show", "eth0"], set()),
    (["ip", "route", "get", "1.1.1.1"], set()),
    (["wg", "genkey"], set()),
    (["mkosi", "summary"], set()),
    (["/repo/.venv/bin/conclave", "up", "--help"], set()),
    ([sys.executable, "-m", "conclave.runtime.cli", "status"], set()),
    ([sys.executable, "/tmp/fake_conclave.py", "up"], set()),
    (["git", "status"], set()),
])
def test_needed_markers(argv, markers):
    assert needed_markers(argv) == markers


def test_guard_refuses_a_missing_marker_and_allows_a_present_one():
    markers: set[str] | None = {"netns"}
    undo = guard_popen(lambda: markers)
    try:
        with pytest.raises(UnmarkedLaneError, match="not marked cluster"):
            subprocess.Popen(["conclave", "up", "--local"])
        markers = None  # outside any test nothing is refused
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    finally:
        undo()


def test_session_guard_stops_an_unmarked_test_before_the_namespace_exists():
    name = "conclave-lane-guard-probe"
    try:
        with pytest.raises(UnmarkedLaneError, match="not marked netns"):
            subprocess.run(["ip", "netns", "add", name], capture_output=True)
    finally:
        listed = subprocess.run(["ip", "-o", "netns", "list"], capture_output=True, text=True).stdout
        if name in listed:  # the guard failed open: clean up, then the assertion below fails the test
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    assert name not in listed


def test_a_stand_in_tool_first_on_path_needs_no_marker(tmp_path):
    """A test may put a logging fake `wg` first on PATH: that runs no namespace and needs no marker."""
    fake = tmp_path / "wg"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o700)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    assert needed_markers(["wg", "set", "wg0"], env) == set()
    assert needed_markers([str(fake), "set", "wg0"], env) == set()
    assert needed_markers(["wg", "set", "wg0"], {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}) == {"netns"}
