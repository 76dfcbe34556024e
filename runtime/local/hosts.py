"""Local hosts: N network namespaces on one Linux machine, each with a veth on a shared bridge.

The bridge carries the underlay (198.18.0.0/15 by default, one free /24 picked per cluster so
several clusters or test rigs can coexist); the root namespace gets the bridge address so the
supervisor can reach the head. Every created object is recorded in `created` as soon as it
exists, so teardown removes exactly what was made, even after a half-finished start.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from conclave.runtime import netns
from conclave.runtime.errors import ConclaveError, UsageError
from conclave.runtime.local.network import Host

DEFAULT_UNDERLAY_POOL = "198.18.0.0/15"
INNER_IFNAME = "eth0"


def parse_underlay(cidr: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as exc:
        raise UsageError(f"--underlay-cidr {cidr!r}: {exc}", reason="bad_underlay_cidr") from None
    if net.prefixlen > 28:
        raise UsageError(f"--underlay-cidr {cidr}: too small (need at most /28)", reason="bad_underlay_cidr")
    return net


def routes_in_root() -> list[ipaddress.IPv4Network]:
    out = []
    for line in netns.run(["ip", "-o", "-4", "route", "show"], check=False).stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if first == "default":
            continue
        try:
            out.append(ipaddress.IPv4Network(first, strict=False))
        except ValueError:
            continue
    return out


def pick_subnet(pool: ipaddress.IPv4Network, used: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """First /24 of `pool` (or the pool itself when it is /24 or smaller) overlapping no used route.

    Starts from the top of the pool: test rigs elsewhere tend to take the low addresses.
    """
    candidates = [pool] if pool.prefixlen >= 24 else list(pool.subnets(new_prefix=24))
    for subnet in reversed(candidates):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise ConclaveError("underlay_exhausted", f"no free /24 left in {pool}")


@dataclass
class LocalHosts:
    cluster_id: str
    subnet: ipaddress.IPv4Network
    hosts: list[Host] = field(default_factory=list)
    bridge: str = ""
    created: dict = field(default_factory=lambda: {"netns": [], "links": []})

    @property
    def bridge_ip(self) -> str:
        return str(list(self.subnet.hosts())[-1])

    def create(self, count: int) -> list[Host]:
        addrs = list(self.subnet.hosts())
        if count < 1 or count > len(addrs) - 1:
            raise UsageError(f"--nodes must be 1..{len(addrs) - 1}", reason="bad_nodes")
        self.bridge = f"cv{self.cluster_id}br"
        netns.add_bridge(self.bridge)
        self.created["links"].append(self.bridge)
        netns.run(["ip", "addr", "replace", f"{self.bridge_ip}/{self.subnet.prefixlen}", "dev", self.bridge])
        for i in range(count):
            name = f"cv{self.cluster_id}n{i}"
            netns.add_netns(name)
            self.created["netns"].append(name)
            veth = f"cv{self.cluster_id}v{i}"
            self.created["links"].append(veth)
            ip = str(addrs[i])
            netns.attach_host(name, self.bridge, veth, f"{ip}/{self.subnet.prefixlen}", INNER_IFNAME)
            self.hosts.append(Host(name=f"n{i}", netns=name, underlay_ip=ip, underlay_ifname=INNER_IFNAME))
        return list(self.hosts)


def destroy(created: dict) -> list[str]:
    """Remove recorded namespaces and links; returns what could not be removed (empty on success)."""
    left = []
    for name in created.get("netns", []):
        netns.del_netns(name)
        if netns.netns_exists(name):
            left.append(f"netns:{name}")
    for link in reversed(created.get("links", [])):
        netns.del_link(link)  # deleting a veth end removes its peer inside the namespace too
        if netns.link_exists(link):
            left.append(f"link:{link}")
    return left
