"""Verifier nonces: fresh, single-use, short-lived, bound to the peer they were issued for.

A nonce is consumed on first use whatever the outcome, so a captured (nonce, evidence) pair can
never be replayed; consumed nonces are remembered until they would have expired anyway.
"""
from __future__ import annotations

import hmac
import secrets
import threading
import time
from typing import Callable

from conclave.overlay.reasons import OverlayReason

NONCE_LEN = 32


class NonceError(Exception):
    def __init__(self, reason: OverlayReason):
        super().__init__(str(reason))
        self.reason = reason


class NonceCache:
    def __init__(self, *, ttl: float = 30.0, max_outstanding: int = 4096,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_outstanding = max_outstanding
        self._clock = clock
        self._issued: dict[bytes, tuple[str, float]] = {}   # nonce -> (peer, expires)
        self._used: dict[bytes, float] = {}                  # nonce -> forget-after
        self._lock = threading.Lock()

    def issue(self, peer: str) -> bytes:
        with self._lock:
            self._expire()
            if len(self._issued) >= self.max_outstanding:
                # drop the oldest outstanding nonce rather than grow without bound
                oldest = min(self._issued, key=lambda n: self._issued[n][1])
                self._used[oldest] = self._issued.pop(oldest)[1]
            nonce = secrets.token_bytes(NONCE_LEN)
            self._issued[nonce] = (peer, self._clock() + self.ttl)
            return nonce

    def consume(self, nonce: bytes, peer: str) -> None:
        """Accept `nonce` once for `peer`; raises NonceError(nonce_replayed|nonce_expired|nonce_unknown)."""
        if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_LEN:
            raise NonceError(OverlayReason.NONCE_UNKNOWN)
        nonce = bytes(nonce)
        with self._lock:
            now = self._clock()
            if nonce in self._used:
                raise NonceError(OverlayReason.NONCE_REPLAYED)
            entry = self._issued.pop(nonce, None)
            if entry is None:
                self._expire()
                raise NonceError(OverlayReason.NONCE_UNKNOWN)
            issued_for, expires = entry
            self._used[nonce] = expires
            if now > expires:
                raise NonceError(OverlayReason.NONCE_EXPIRED)
            if not hmac.compare_digest(issued_for.encode(), peer.encode()):
                raise NonceError(OverlayReason.NONCE_UNKNOWN)
            self._expire()

    def retire(self, nonce: bytes) -> None:
        """Mark an outstanding nonce used (its exchange ended, whatever the outcome)."""
        with self._lock:
            entry = self._issued.pop(bytes(nonce), None)
            if entry is not None:
                self._used[bytes(nonce)] = entry[1]

    def _expire(self) -> None:
        now = self._clock()
        for n in [n for n, (_, exp) in self._issued.items() if exp < now]:
            self._used[n] = self._issued.pop(n)[1]
        # a used nonce may be forgotten once it would have expired: it can no longer verify anyway
        for n in [n for n, exp in self._used.items() if exp + self.ttl < now]:
            del self._used[n]
