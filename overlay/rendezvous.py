"""Rendezvous: an untrusted relay of node announcements, and the client that merges several.

It believes nothing and vouches for nothing: admission checks every key against evidence. What
it does guard is its own list, so that nobody can displace a node's entry: every announcement is
signed by the node's per-boot statement key (the Ed25519 key its evidence binds, carried in the
announcement) over the announcement's fields and a strictly increasing sequence. Entries are kept
per statement key for a TTL; an update replaces an entry only when that entry's key signed it
with a higher sequence (a replay is `announcement_stale`). A forgery reusing someone's name or
keys must bring its own statement key, so it gets an entry of its own (and then fails admission,
whose evidence binds the real key) while the real entry stays listed. Unsigned announcements
(`announcement_unsigned`) and bad signatures (`announcement_signature_invalid`) are refused.
Any node may host it; agents take a list of rendezvous endpoints and merge what they return.

Signed bytes: DOMAIN || canonical_json(announcement fields, keys in base64, and the sequence).
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Callable, Iterable

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.overlay import rpc, wire
from conclave.overlay.identity import Announcement, MalformedAnnouncement
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from conclave.overlay.reasons import OverlayReason
from conclave.runtime.canonical import canonical_json

log = logging.getLogger("conclave.overlay.rendezvous")
DEFAULT_TTL = 60
MAX_ENTRIES = 1024
DOMAIN = b"conclave/announcement/v1\x00"
SIGNATURE_LEN = 64
MAX_SEQUENCE = 2 ** 63 - 1


class AnnouncementRefused(ValueError):
    """A signed announcement failed its check; `reason` is an OverlayReason value."""

    def __init__(self, reason: OverlayReason, message: str):
        super().__init__(message)
        self.reason = reason


def announcement_key(ann: Announcement) -> tuple[str, bytes, bytes, bytes]:
    """What distinguishes two announcements: node id, WireGuard, HPKE and statement keys. Two
    announcements differing in any of them are different claims (at most one passes admission)."""
    return (ann.node_id, ann.wg_public_key.raw, ann.hpke_public_key.raw, ann.statement_key)


def announcement_signed_bytes(ann: Announcement, sequence: int) -> bytes:
    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")
    return DOMAIN + canonical_json({
        "node_id": ann.node_id, "owner": ann.owner, "role": str(ann.role), "underlay_host": ann.underlay_host,
        "admission_port": ann.admission_port, "wireguard_port": ann.wireguard_port,
        "wg_public_key": b64(ann.wg_public_key.raw), "hpke_public_key": b64(ann.hpke_public_key.raw),
        "overlay_address": str(ann.overlay_address), "statement_key": b64(ann.statement_key),
        "sequence": sequence})


def signed_announcement(ann: Announcement, sequence: int, signer: ed25519.Ed25519PrivateKey) -> pb.AnnounceRequest:
    """The AnnounceRequest for `ann`, signed by `signer` (the key whose public half ann carries)."""
    if not 0 < sequence <= MAX_SEQUENCE:
        raise ValueError("sequence out of range")
    return pb.AnnounceRequest(announcement=wire.announcement_to_proto(ann), sequence=sequence,
                              signature=signer.sign(announcement_signed_bytes(ann, sequence)))


def check_signature(ann: Announcement, sequence: int, signature: bytes) -> None:
    """Return only if `signature` is ann.statement_key's over (ann, sequence); else AnnouncementRefused."""
    if not ann.statement_key or not signature:
        raise AnnouncementRefused(OverlayReason.ANNOUNCEMENT_UNSIGNED,
                                  "an announcement must carry a statement key and its signature")
    if len(signature) != SIGNATURE_LEN or not 0 < sequence <= MAX_SEQUENCE:
        raise AnnouncementRefused(OverlayReason.ANNOUNCEMENT_SIGNATURE_INVALID, "signature or sequence malformed")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(ann.statement_key).verify(
            bytes(signature), announcement_signed_bytes(ann, sequence))
    except (InvalidSignature, ValueError):
        raise AnnouncementRefused(OverlayReason.ANNOUNCEMENT_SIGNATURE_INVALID,
                                  "not signed by the announcement's statement key") from None


class RendezvousService(pb_grpc.RendezvousServicer):
    def __init__(self, *, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        # statement key -> (announcement, its sequence, expiry)
        self._entries: dict[bytes, tuple[pb.NodeAnnouncement, int, float]] = {}
        self._lock = threading.Lock()

    def Announce(self, request: pb.AnnounceRequest, context) -> pb.AnnounceReply:
        try:
            ann = Announcement.from_proto(request.announcement)
        except MalformedAnnouncement as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{OverlayReason.MALFORMED_MESSAGE}: {exc}")
        sequence = int(request.sequence)
        try:
            check_signature(ann, sequence, bytes(request.signature))
        except AnnouncementRefused as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.reason}: {exc}")
        # one entry per statement key: only the holder of that key can replace it
        key = ann.statement_key
        with self._lock:
            self._expire()
            entry = self._entries.get(key)
            if entry is None and len(self._entries) >= MAX_ENTRIES:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rendezvous is full")
            if entry is not None and sequence <= entry[1]:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{OverlayReason.ANNOUNCEMENT_STALE}: sequence {sequence} is not above {entry[1]}")
            self._entries[key] = (wire.announcement_to_proto(ann), sequence, self.clock() + self.ttl)
        return pb.AnnounceReply(ttl_seconds=int(self.ttl))

    def List(self, request: pb.ListRequest, context) -> pb.ListReply:
        with self._lock:
            self._expire()
            return pb.ListReply(announcements=[a for a, _, _ in self._entries.values()])

    def _expire(self) -> None:
        now = self.clock()
        for k in [k for k, (_, _, exp) in self._entries.items() if exp < now]:
            del self._entries[k]


class RendezvousClient:
    """Announces to every rendezvous and merges their lists; unreachable ones are skipped."""

    def __init__(self, targets: Iterable[str]):
        self.targets = list(targets)
        self._channels = {t: rpc.channel(t) for t in self.targets}
        self.errors: dict[str, str] = {}
        self._sequence = 0

    def next_sequence(self) -> int:
        """Signing time in ms, strictly above the last one used (clock steps cannot repeat one)."""
        self._sequence = max(self._sequence + 1, time.time_ns() // 1_000_000)
        return self._sequence

    def announce(self, me: Announcement, signer: ed25519.Ed25519PrivateKey) -> int:
        """Announce `me`, signed by `signer` (the statement key `me` carries), to every rendezvous;
        returns how many accepted it."""
        request = signed_announcement(me, self.next_sequence(), signer)
        ok = 0
        for t, ch in self._channels.items():
            try:
                pb_grpc.RendezvousStub(ch).Announce(request, timeout=rpc.RPC_TIMEOUT)
                ok += 1
                self.errors.pop(t, None)
            except grpc.RpcError as exc:
                self.errors[t] = _error_label(exc)
        return ok

    def list(self) -> list[Announcement]:
        """Merged announcements (malformed ones dropped); duplicates by (node, keys) collapsed, while
        announcements differing in any key (a forgery beside the real one) are all kept."""
        merged: dict[tuple[str, bytes, bytes, bytes], Announcement] = {}
        for t, ch in self._channels.items():
            try:
                reply = pb_grpc.RendezvousStub(ch).List(pb.ListRequest(), timeout=rpc.RPC_TIMEOUT)
            except grpc.RpcError as exc:
                self.errors[t] = _error_label(exc)
                continue
            for msg in reply.announcements:
                try:
                    ann = Announcement.from_proto(msg)
                except MalformedAnnouncement:
                    continue
                merged.setdefault(announcement_key(ann), ann)
        return list(merged.values())

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()


def _error_label(exc: grpc.RpcError) -> str:
    """The rendezvous' reason for a refused announcement (`announcement_stale`, ...), else the gRPC code."""
    if not hasattr(exc, "code"):
        return "error"
    details = exc.details() if hasattr(exc, "details") else ""
    reason = (details or "").split(":", 1)[0]
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in {str(r) for r in OverlayReason}:
        return reason
    return exc.code().name
