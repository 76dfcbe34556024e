"""Overlay addressing: each node owns exactly one /32 inside the deployment's overlay CIDR."""
from __future__ import annotations

import hashlib
import ipaddress

DEFAULT_OVERLAY_CIDR = "100.64.0.0/16"


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    net = ipaddress.IPv4Network(text, strict=True)
    if net.prefixlen > 30:
        raise ValueError("overlay CIDR must be /30 or larger")
    return net


def check_member(address: str, cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The address as an IPv4Address when it is a usable host address of `cidr`, else ValueError."""
    addr = ipaddress.IPv4Address(address)
    if addr not in cidr or addr in (cidr.network_address, cidr.broadcast_address):
        raise ValueError(f"{address} is not a host address of {cidr}")
    return addr


def derive_address(node_name: str, cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """A stable default address for `node_name` (hash into the CIDR's host range).

    Stable across boots so Ray and vLLM see the same node IP; collisions are detected at
    admission (overlay_address_conflict) and resolved by configuring addresses explicitly.
    """
    hosts = cidr.num_addresses - 2
    index = int.from_bytes(hashlib.sha256(b"conclave/overlay-addr/v1" + node_name.encode()).digest()[:8], "big")
    return cidr.network_address + 1 + (index % hosts)


def interface_name(node_name: str) -> str:
    """A WireGuard interface name unique per node (<= 15 chars).

    wireguard-go keeps its control socket in /var/run/wireguard/<ifname>.sock, which every
    network namespace shares, so local nodes on one machine need distinct names.
    """
    return "cnc" + hashlib.sha256(node_name.encode()).hexdigest()[:10]
