"""Where a node's Ray node, gloo and vLLM listen and connect."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterAddress:
    """The cluster network endpoint of one node: its overlay address and the WireGuard interface
    (plain-veth baseline: the underlay address and veth)."""
    ip: str
    ifname: str
