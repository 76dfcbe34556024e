"""A node's per-boot identity and the announcement it makes about itself.

Keys are generated in memory at every boot; nothing here is ever written to disk. The
Announcement is the parsed, size-checked form of the wire NodeAnnouncement: it is still only
a claim until admission finds the same keys bound in verified evidence.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conclave.overlay.keys import WgPrivateKey, WgPublicKey
from conclave.runtime.keys.hpke import HpkePrivateKey, HpkePublicKey

if TYPE_CHECKING:   # a type only: overlay/wire.py builds messages, from_proto reads one field by field
    from conclave.overlay.proto.conclave_pb2 import NodeAnnouncement

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_OWNER_LEN = 128
MAX_HOST_LEN = 253
STATEMENT_KEY_LEN = 32


class Role(StrEnum):
    HEAD = "head"
    WORKER = "worker"


class MalformedAnnouncement(ValueError):
    """A wire announcement failed structural checks (reason malformed_message)."""


class NodeIdentity:
    """This boot's key pairs: WireGuard (X25519), HPKE (ML-KEM-768 + X25519) and the Ed25519
    statement key that signs this node's stage statements (shard verified, Ray joined)."""

    __slots__ = ("wg_private", "wg_public", "hpke_private", "hpke_public", "statement_private", "statement_public")

    def __init__(self, wg_private: WgPrivateKey, hpke_private: HpkePrivateKey,
                 statement_private: ed25519.Ed25519PrivateKey | None = None):
        self.wg_private = wg_private
        self.wg_public = wg_private.public_key()
        self.hpke_private = hpke_private
        self.hpke_public = hpke_private.public_key()
        self.statement_private = statement_private or ed25519.Ed25519PrivateKey.generate()
        self.statement_public = self.statement_private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> "NodeIdentity":
        return cls(WgPrivateKey.generate(), HpkePrivateKey.generate(), ed25519.Ed25519PrivateKey.generate())

    def __reduce__(self):
        raise TypeError("NodeIdentity holds private keys and cannot be pickled")

    def __repr__(self) -> str:
        return f"NodeIdentity(wg={self.wg_public.to_base64()}, hpke={self.hpke_public!r})"


@dataclass(frozen=True)
class Announcement:
    node_id: str
    owner: str
    role: Role
    underlay_host: str
    admission_port: int
    wireguard_port: int
    wg_public_key: WgPublicKey
    hpke_public_key: HpkePublicKey
    overlay_address: ipaddress.IPv4Address
    statement_key: bytes = b""   # Ed25519 public key of signed stage statements (empty: none)

    @property
    def admission_target(self) -> str:
        host = self.underlay_host
        return f"[{host}]:{self.admission_port}" if ":" in host else f"{host}:{self.admission_port}"

    @property
    def wireguard_endpoint(self) -> str:
        host = self.underlay_host
        return f"[{host}]:{self.wireguard_port}" if ":" in host else f"{host}:{self.wireguard_port}"

    def binding_extra(self) -> dict[str, bytes]:
        """Fields besides the keys that the evidence also binds (role, name, overlay address, and
        the statement key where the node has one)."""
        extra = {"node_id": self.node_id.encode(), "role": str(self.role).encode(),
                 "overlay_address": str(self.overlay_address).encode()}
        if self.statement_key:
            extra["statement_key"] = self.statement_key
        return extra

    @classmethod
    def from_proto(cls, msg: "NodeAnnouncement") -> "Announcement":
        """Structural checks only; raises MalformedAnnouncement."""
        if not NODE_ID_RE.match(msg.node_id):
            raise MalformedAnnouncement("node_id invalid")
        if len(msg.owner) > MAX_OWNER_LEN:
            raise MalformedAnnouncement("owner label too long")
        try:
            role = Role(msg.role)
        except ValueError:
            raise MalformedAnnouncement("role must be head or worker") from None
        if not msg.underlay_host or len(msg.underlay_host) > MAX_HOST_LEN or any(c.isspace() for c in msg.underlay_host):
            raise MalformedAnnouncement("underlay_host invalid")
        for port in (msg.admission_port, msg.wireguard_port):
            if not 1 <= port <= 65535:
                raise MalformedAnnouncement("port out of range")
        try:
            wg = WgPublicKey(msg.wg_public_key)
            hp = HpkePublicKey(msg.hpke_public_key)
            addr = ipaddress.IPv4Address(msg.overlay_address)
        except (ValueError, TypeError) as exc:
            raise MalformedAnnouncement(f"key or address invalid: {exc}") from None
        if len(msg.statement_key) not in (0, STATEMENT_KEY_LEN):
            raise MalformedAnnouncement("statement_key must be 32 bytes or absent")
        return cls(node_id=msg.node_id, owner=msg.owner, role=role, underlay_host=msg.underlay_host,
                   admission_port=msg.admission_port, wireguard_port=msg.wireguard_port,
                   wg_public_key=wg, hpke_public_key=hp, overlay_address=addr,
                   statement_key=bytes(msg.statement_key))

    def same_identity(self, other: "Announcement") -> bool:
        """Same node, same keys, same bound fields (endpoints may differ: they are not bound)."""
        return (self.node_id == other.node_id and self.wg_public_key == other.wg_public_key
                and self.hpke_public_key == other.hpke_public_key and self.role == other.role
                and self.overlay_address == other.overlay_address and self.statement_key == other.statement_key)
