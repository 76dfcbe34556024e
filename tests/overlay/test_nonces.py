"""Verifier nonce cache: single use, expiry, replay, bound to the peer it was issued for."""
from __future__ import annotations

import pytest

from conclave.overlay.nonces import NONCE_LEN, NonceCache, NonceError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def reason(fn) -> str:
    with pytest.raises(NonceError) as err:
        fn()
    return str(err.value.reason)


def test_fresh_nonces_are_32_random_bytes():
    cache = NonceCache()
    a, b = cache.issue("p"), cache.issue("p")
    assert len(a) == len(b) == NONCE_LEN and a != b


def test_single_use_then_replayed():
    cache = NonceCache()
    n = cache.issue("p")
    cache.consume(n, "p")
    assert reason(lambda: cache.consume(n, "p")) == "nonce_replayed"


def test_expired():
    clock = Clock()
    cache = NonceCache(ttl=10, clock=clock)
    n = cache.issue("p")
    clock.t += 11
    assert reason(lambda: cache.consume(n, "p")) in ("nonce_expired", "nonce_replayed")
    n2 = cache.issue("p")
    clock.t += 10.5
    assert reason(lambda: cache.consume(n2, "p")) == "nonce_expired"
    assert reason(lambda: cache.consume(n2, "p")) == "nonce_replayed"


def test_unknown_and_wrong_peer():
    cache = NonceCache()
    assert reason(lambda: cache.consume(b"\x00" * 32, "p")) == "nonce_unknown"
    assert reason(lambda: cache.consume(b"short", "p")) == "nonce_unknown"
    n = cache.issue("alice")
    assert reason(lambda: cache.consume(n, "mallory")) == "nonce_unknown"
    assert reason(lambda: cache.consume(n, "alice")) == "nonce_replayed"  # burnt by the failed try


def test_retired_nonce_is_a_replay():
    cache = NonceCache()
    n = cache.issue("p")
    cache.retire(n)  # the exchange it was sent in ended without an answer
    assert reason(lambda: cache.consume(n, "p")) == "nonce_replayed"


def test_memory_is_bounded():
    clock = Clock()
    cache = NonceCache(ttl=5, max_outstanding=8, clock=clock)
    first = cache.issue("p")
    for _ in range(20):
        cache.issue("p")
    assert len(cache._issued) <= 8
    assert reason(lambda: cache.consume(first, "p")) == "nonce_replayed"
    clock.t += 100
    cache.issue("p")
    assert len(cache._used) == 0
