"""Shared by the in-process agent tests (test_agent_inprocess.py, test_liveness.py): the simulated
measurement and policy every test agent uses, a free loopback port, and a bounded wait."""
from __future__ import annotations

import socket
import time

GOOD = bytes.fromhex("ab" * 48)
POLICY = {"production": False, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
          "sim": {"measurement": [GOOD.hex()]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=15.0, what="condition"):
    """Poll pred until it returns something truthy (returned); AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
