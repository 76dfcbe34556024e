"""THE SEAM between the cluster code and the network its nodes talk over.

The cluster code (ray_cluster, engine, supervisor) never picks addresses or interfaces itself:
it asks a NetworkLayer for each host's ClusterAddress (the IP Ray binds to, passed as
--node-ip-address and VLLM_HOST_IP, and the interface gloo uses, GLOO_SOCKET_IFNAME), and for
the Ray cluster token each host may receive. Today PlainVethNetwork uses the hosts' underlay
veth directly and generates the token; the attested WireGuard overlay (conclave.overlay) slots
in as another NetworkLayer: bring_up() admits peers and returns overlay addresses on the wg
interface, and release_ray_token() hands the token only to attested hosts via its broker.
"""
from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

from conclave.runtime.node.address import ClusterAddress


@dataclass(frozen=True)
class Host:
    """One machine of the cluster as the network layer sees it (local mode: a network namespace)."""
    name: str            # "n0", "n1", ...
    netns: str | None    # namespace to run its processes in (None: this machine's root namespace)
    underlay_ip: str     # the host's own address on the untrusted network
    underlay_ifname: str


@dataclass
class ClusterContext:
    """What a network layer may need to know about the cluster it connects. The one secret, the API
    key the head's front checks, is kept out of repr and goes to the head only over its stdin bundle."""
    cluster_id: str
    run_dir: Path
    state_dir: Path
    layer_ranges: list[tuple[int, int]]
    model_digest: str
    public_port: int                      # the head's public API port on its underlay address
    record: Callable[[object], None] = lambda started: None   # register a started process group
    extra: dict = field(default_factory=dict)
    head_api_key: str | None = field(default=None, repr=False)


@runtime_checkable
class NetworkLayer(Protocol):
    """What the cluster needs from the network. Implementations own their interfaces and secrets."""

    kind: str

    def bring_up(self, hosts: Sequence[Host], context: ClusterContext | None = None) -> dict[str, ClusterAddress]:
        """Make the cluster network usable between `hosts`; return each host's address by host name."""
        ...

    def launch(self, host: Host, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        """Start a long-running cluster process on `host` with the Ray token added to `env`
        (-> process.Started). The token never travels through argv."""
        ...

    def run_probe(self, host: Host, argv: list[str], env: dict[str, str], log_path: Path,
                  timeout: float) -> tuple[int | None, str]:
        """Run a short Ray driver on `host` (token added to env); (exit code or None on timeout, output)."""
        ...

    def release_ray_token(self, host: Host) -> str:
        """The Ray cluster token for `host` (raises if the host may not have it). Never logged."""
        ...

    def tear_down(self) -> None:
        """Remove everything bring_up created (idempotent)."""
        ...

    def describe(self) -> dict:
        """Public facts for `conclave status` (no secrets)."""
        ...


class PlainVethNetwork:
    """Hosts talk over their plain underlay veth (no encryption, no attestation): local development.

    The Ray token is generated per cluster with `secrets` and held only in memory.
    """

    kind = "plain-veth"

    def __init__(self) -> None:
        self._token = secrets.token_hex(32)
        self._hosts: dict[str, ClusterAddress] = {}

    def bring_up(self, hosts: Sequence[Host], context: ClusterContext | None = None) -> dict[str, ClusterAddress]:
        self._hosts = {h.name: ClusterAddress(h.underlay_ip, h.underlay_ifname) for h in hosts}
        return dict(self._hosts)

    def launch(self, host: Host, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        from conclave.runtime.node import process
        return process.spawn(name, argv, env={**env, "RAY_AUTH_TOKEN": self.release_ray_token(host)},
                             log_path=log_path, netns_name=host.netns)

    def run_probe(self, host: Host, argv: list[str], env: dict[str, str], log_path: Path,
                  timeout: float) -> tuple[int | None, str]:
        full = (["ip", "netns", "exec", host.netns] if host.netns else []) + argv
        try:
            res = subprocess.run(full, env={**env, "RAY_AUTH_TOKEN": self.release_ray_token(host)},
                                 capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, ""
        return res.returncode, res.stdout + res.stderr

    def release_ray_token(self, host: Host) -> str:
        if host.name not in self._hosts:
            raise KeyError(f"host {host.name} is not part of this network")
        return self._token

    def tear_down(self) -> None:
        self._hosts = {}

    def describe(self) -> dict:
        return {"kind": self.kind, "encrypted": False, "attested": False}

    def __repr__(self) -> str:
        return f"PlainVethNetwork(hosts={sorted(self._hosts)}, token=<redacted>)"


def _attested() -> type:
    from conclave.runtime.local.attested import AttestedOverlayNetwork
    return AttestedOverlayNetwork


# Network layers `conclave up --network` can name (state file field "network_kind").
# "plain" (alias "plain-veth"): no attestation, no encryption, for comparison benchmarks.
# "attested": the confidential path (simulated TEEs, signed manifest, attested WireGuard overlay).
NETWORK_LAYERS: dict[str, Callable[[], type]] = {
    "attested": _attested,
    "plain": lambda: PlainVethNetwork,
    PlainVethNetwork.kind: lambda: PlainVethNetwork,
}
DEFAULT_NETWORK = "attested"


def create(kind: str) -> NetworkLayer:
    try:
        factory = NETWORK_LAYERS[kind]
    except KeyError:
        raise ValueError(f"unknown network layer {kind!r}; known: {', '.join(sorted(NETWORK_LAYERS))}") from None
    return factory()()
