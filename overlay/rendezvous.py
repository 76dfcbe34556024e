"""Rendezvous: an untrusted relay of node announcements, and the client that merges several.

It believes nothing and vouches for nothing: admission checks every key against evidence. It
only keeps the latest announcement per (node_id, WireGuard key) for a TTL and lists them. Any
node may host it; agents take a list of rendezvous endpoints and merge what they return.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

import grpc

from conclave.overlay import rpc
from conclave.overlay.identity import Announcement, MalformedAnnouncement
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc

log = logging.getLogger("conclave.overlay.rendezvous")
DEFAULT_TTL = 60
MAX_ENTRIES = 1024


class RendezvousService(pb_grpc.RendezvousServicer):
    def __init__(self, *, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[tuple[str, bytes, bytes], tuple[pb.NodeAnnouncement, float]] = {}
        self._lock = threading.Lock()

    def Announce(self, request: pb.AnnounceRequest, context) -> pb.AnnounceReply:
        try:
            ann = Announcement.from_proto(request.announcement)
        except MalformedAnnouncement as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed announcement: {exc}")
        # keyed by the full identity: a forged announcement reusing someone's name or WireGuard
        # key gets its own entry (and fails admission) instead of overwriting theirs
        key = (ann.node_id, ann.wg_public_key.raw, ann.hpke_public_key.raw)
        with self._lock:
            self._expire()
            if key not in self._entries and len(self._entries) >= MAX_ENTRIES:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rendezvous is full")
            self._entries[key] = (ann.to_proto(), self.clock() + self.ttl)
        return pb.AnnounceReply(ttl_seconds=int(self.ttl))

    def List(self, request: pb.ListRequest, context) -> pb.ListReply:
        with self._lock:
            self._expire()
            return pb.ListReply(announcements=[a for a, _ in self._entries.values()])

    def _expire(self) -> None:
        now = self.clock()
        for k in [k for k, (_, exp) in self._entries.items() if exp < now]:
            del self._entries[k]


class RendezvousClient:
    """Announces to every rendezvous and merges their lists; unreachable ones are skipped."""

    def __init__(self, targets: Iterable[str]):
        self.targets = list(targets)
        self._channels = {t: rpc.channel(t) for t in self.targets}
        self.errors: dict[str, str] = {}

    def announce(self, me: Announcement) -> int:
        ok = 0
        for t, ch in self._channels.items():
            try:
                pb_grpc.RendezvousStub(ch).Announce(pb.AnnounceRequest(announcement=me.to_proto()),
                                                    timeout=rpc.RPC_TIMEOUT)
                ok += 1
                self.errors.pop(t, None)
            except grpc.RpcError as exc:
                self.errors[t] = exc.code().name if hasattr(exc, "code") else "error"
        return ok

    def list(self) -> list[Announcement]:
        """Merged announcements (malformed ones dropped); duplicates by (node, keys) collapsed."""
        merged: dict[tuple[str, bytes, bytes], Announcement] = {}
        for t, ch in self._channels.items():
            try:
                reply = pb_grpc.RendezvousStub(ch).List(pb.ListRequest(), timeout=rpc.RPC_TIMEOUT)
            except grpc.RpcError as exc:
                self.errors[t] = exc.code().name if hasattr(exc, "code") else "error"
                continue
            for msg in reply.announcements:
                try:
                    ann = Announcement.from_proto(msg)
                except MalformedAnnouncement:
                    continue
                merged.setdefault((ann.node_id, ann.wg_public_key.raw, ann.hpke_public_key.raw), ann)
        return list(merged.values())

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
