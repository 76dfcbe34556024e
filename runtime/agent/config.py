"""NodeConfig: everything one node agent needs, as plain values (the manifest is wired elsewhere)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from cryptography import x509

from conclave.overlay.addressing import DEFAULT_OVERLAY_CIDR, derive_address, interface_name, parse_cidr
from conclave.overlay.evidence import EvidenceSource
from conclave.overlay.identity import NODE_ID_RE, Role
from conclave.runtime import config as env_config
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.errors import UsageError
from conclave.runtime.keys.broker import DEFAULT_ALLOWED_ROLES
from conclave.runtime.keys.secret import SecretValue

DEFAULT_WIREGUARD_PORT = 51820
DEFAULT_ADMISSION_PORT = 51821
DEFAULT_RENDEZVOUS_PORT = 51822
DEFAULT_METRICS_PORT = 9469


@dataclass
class Timing:
    tick: float = 0.25                  # main loop period (admission, key release)
    reconcile_interval: float = 2.0     # device reconcile period
    reattest_interval: float = 600.0    # scheduled re-attestation of every admitted peer
    max_evidence_age: float | None = None   # default: 2 x reattest_interval + 30 s
    retry_interval: float = 5.0         # after a rejection or unreachable peer
    nonce_ttl: float = 30.0
    announce_interval: float = 5.0
    liveness_interval: float = 2.0      # Ping every admitted peer this often (0 disables liveness)
    liveness_timeout: float = 10.0      # no good Ping reply for this long: evict (peer_unreachable)
    ping_timeout: float = 2.0           # one Ping RPC's deadline (at most half the liveness timeout)

    def __post_init__(self) -> None:
        if self.liveness_interval < 0 or (self.liveness_interval and self.liveness_timeout <= self.liveness_interval):
            raise UsageError("liveness timeout must exceed the liveness interval (interval 0 disables liveness)",
                             reason="liveness_invalid")

    @property
    def liveness_enabled(self) -> bool:
        return self.liveness_interval > 0

    def ping_deadline(self) -> float:
        return min(self.ping_timeout, self.liveness_timeout / 2)

    def evidence_age_limit(self) -> float:
        return self.max_evidence_age if self.max_evidence_age is not None else 2 * self.reattest_interval + 30


@dataclass
class NodeConfig:
    node_name: str
    role: Role
    owner: str
    policy: Policy
    manifest_digest: bytes
    evidence_source: EvidenceSource
    underlay_host: str
    overlay_cidr: ipaddress.IPv4Network = field(default_factory=lambda: parse_cidr(DEFAULT_OVERLAY_CIDR))
    overlay_address: ipaddress.IPv4Address | None = None
    listen_host: str | None = None      # admission bind address; default underlay_host if an IP
    wireguard_port: int = DEFAULT_WIREGUARD_PORT
    admission_port: int = DEFAULT_ADMISSION_PORT
    rendezvous: Sequence[str] = ()
    serve_rendezvous_port: int | None = None
    trusted_sim_roots: Sequence[x509.Certificate] = ()
    secrets: Mapping[str, SecretValue] = field(default_factory=dict)
    allowed_roles: Mapping[str, frozenset[str]] = field(default_factory=lambda: dict(DEFAULT_ALLOWED_ROLES))
    want_secrets: Sequence[str] = ()
    interface: str | None = None
    firewall: str = "auto"              # auto | nft | none
    metrics_port: int | None = DEFAULT_METRICS_PORT
    metrics_host: str | None = None       # /metrics bind address; default: the overlay address
    metrics_upstream: str | None = None   # head: vLLM's /metrics URL, appended to every scrape
    status_socket: Path | None = None
    timing: Timing = field(default_factory=Timing)
    device_factory: Callable | None = None   # tests: lambda cfg, identity, address -> Device
    public_tcp_ports: Sequence[int] = ()     # extra underlay TCP ports the firewall lets in (the head's API)
    allow_launch: bool = False               # local mode: the supervisor may ask us to start Ray/vLLM
    manifest: object | None = None           # the VerifiedManifest the node booted with (--manifest)
    vendor_services: object | None = None    # agent.verifier.VendorServices: collateral URLs (None: Intel/AMD)
    collateral_dir: Path | None = None       # the verifier's collateral cache (None: STATE_DIR/collateral/NAME)
    inner_netns: bool = False                # a serving node: WireGuard, Ray and vLLM in a private inner
                                             # namespace (lo + the device only; runtime/node/inner_netns.py)

    def __post_init__(self) -> None:
        if not NODE_ID_RE.match(self.node_name):
            raise UsageError("node name must be 1-63 characters of [A-Za-z0-9._-]", reason="node_name_invalid")
        self.role = Role(self.role)
        if len(self.manifest_digest) < 32:
            raise UsageError("manifest digest must be at least 32 bytes", reason="manifest_digest_invalid")
        if self.overlay_address is None:
            self.overlay_address = derive_address(self.node_name, self.overlay_cidr)
        elif self.overlay_address not in self.overlay_cidr:
            raise UsageError(f"{self.overlay_address} is outside {self.overlay_cidr}",
                             reason="overlay_address_out_of_range")
        if self.interface is None:
            self.interface = interface_name(self.node_name)
        if len(self.interface) > 15:
            raise UsageError("interface names are at most 15 characters", reason="interface_invalid")
        if self.firewall not in ("auto", "nft", "none"):
            raise UsageError("firewall must be auto, nft or none")
        if self.status_socket is None:
            self.status_socket = default_status_socket(self.node_name)
        if self.listen_host is None:
            try:
                ipaddress.ip_address(self.underlay_host)
                self.listen_host = self.underlay_host
            except ValueError:
                self.listen_host = "0.0.0.0"


def nodes_dir() -> Path:
    return env_config.state_dir() / "nodes"


def default_status_socket(node_name: str) -> Path:
    return nodes_dir() / f"{node_name}.sock"
