"""Reaching into a node's inner network namespace (runtime/node/inner_netns.py) from a test.

Ray, vLLM and the WireGuard interface (with the overlay address) live there, not in the host's
namespace. Its name is mounted only in the node's own mount namespace, so tests enter it through
the path the node's agent reports (`inner_netns.enter`: an fd the agent holds open).
"""
from __future__ import annotations

import subprocess
from pathlib import Path


def inner_info(node: dict) -> dict:
    from conclave.runtime.agent import status
    info = status.query(Path(node["agent_socket"])).get("inner_netns")
    assert info and info.get("enter"), f"{node['name']}: no inner network namespace: {info}"
    return info


def inner_prefix(node: dict) -> list[str]:
    return ["nsenter", f"--net={inner_info(node)['enter']}"]


def in_inner(node: dict, argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*inner_prefix(node), *argv], capture_output=True, text=True, **kw)
