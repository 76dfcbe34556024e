"""nftables rules that keep the underlay closed except WireGuard, admission and rendezvous.

Defense in depth only: every other service already binds to the overlay address, so nothing
depends on these rules. `ruleset` is pure (tested); `Firewall` applies it with `nft -f -` as
its own table and deletes exactly that table on close.
"""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
from typing import Sequence

from conclave.runtime.errors import ConclaveError


def table_name(interface: str) -> str:
    return f"conclave_{interface}"


def ruleset(*, interface: str, wireguard_port: int, tcp_ports: Sequence[int],
            overlay: ipaddress.IPv4Network) -> str:
    """Input policy: overlay traffic only via the WireGuard interface; on the underlay only
    WireGuard's UDP port and the admission/rendezvous TCP ports (plus replies, ICMP, DHCP)."""
    ports = ", ".join(str(p) for p in sorted(set(tcp_ports)))
    table = table_name(interface)
    return "\n".join([
        f"table inet {table} {{",
        "  chain input {",
        "    type filter hook input priority 0; policy accept;",
        '    iifname "lo" accept',
        f'    iifname "{interface}" ip saddr {overlay} accept',
        f'    iifname "{interface}" drop',
        f"    ip daddr {overlay} drop",
        "    ct state established,related accept",
        "    meta l4proto { icmp, ipv6-icmp } accept",
        "    udp dport 68 accept",
        f"    udp dport {wireguard_port} accept",
        f"    tcp dport {{ {ports} }} accept" if ports else "",
        "    drop",
        "  }",
        "}",
        "",
    ])


class Firewall:
    def __init__(self, interface: str):
        self.interface = interface
        self.applied = False

    @staticmethod
    def available() -> bool:
        if shutil.which("nft") is None:
            return False
        return subprocess.run(["nft", "list", "tables"], capture_output=True).returncode == 0

    def apply(self, rules: str) -> None:
        self.remove()
        res = subprocess.run(["nft", "-f", "-"], input=rules, capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            raise ConclaveError("nft_failed", f"nft rejected the ruleset: {res.stderr.strip()[:300]}")
        self.applied = True

    def remove(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", table_name(self.interface)], capture_output=True)
        self.applied = False
