"""Property tests: random and mutated evidence never crashes parse/verify of any format.

parse() of every format may only raise MalformedEvidence; verify() of whatever parses may only
raise AttestationError subclasses. A mutated seed that verify() ACCEPTS fails the test unless the
mutation touched only the regions each format leaves unsigned or ignored by design (listed in
fuzz_support.only_unsigned_parts_changed): a verifier that let tampered bytes through would.
Seeds are the real vectors plus signed simulated evidence. Bounded example counts keep the whole
file well under 60 s.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conclave.runtime import attestation
from conclave.runtime.attestation import core
from conclave.runtime.attestation.core import TeeType

from fuzz_support import Seed, mutate, only_unsigned_parts_changed, seeds

FORMATS = [TeeType.TDX, TeeType.SNP, TeeType.NVGPU, TeeType.SIM]
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def all_seeds(vectors_dir) -> list[Seed]:
    return seeds(vectors_dir)


def _exercise(tee: TeeType, data: bytes, seed: Seed | None) -> None:
    module = attestation.format_module(tee)
    try:
        parsed = module.parse(data)
    except core.MalformedEvidence:
        return
    module.claims(parsed)
    if seed is None:
        return
    try:
        module.verify(parsed, at=seed.at, certs=seed.certs, collateral=seed.collateral, nonce=seed.nonce,
                      trusted_roots=seed.trusted_roots)
    except core.AttestationError:
        return
    assert only_unsigned_parts_changed(seed, data), (
        f"verify accepted {seed.name} with authenticated bytes changed (mutated input: {data[:2048].hex()})")


@pytest.mark.parametrize("tee", FORMATS, ids=[t.value for t in FORMATS])
@SETTINGS
@given(data=st.binary(max_size=6000))
def test_random_bytes_only_malformed(tee, data):
    _exercise(tee, data, None)


@pytest.mark.parametrize("tee", FORMATS, ids=[t.value for t in FORMATS])
@SETTINGS
@given(choice=st.integers(min_value=0, max_value=10**6), rng_seed=st.integers(min_value=0, max_value=2**32))
def test_mutated_seeds(all_seeds, tee, choice, rng_seed):
    pool = [s for s in all_seeds if s.tee == tee]
    assert pool, f"no seeds for {tee}"
    seed = pool[choice % len(pool)]
    _exercise(tee, mutate(seed.data, random.Random(rng_seed)), seed)


@pytest.mark.parametrize("tee", FORMATS, ids=[t.value for t in FORMATS])
@SETTINGS
@given(choice=st.integers(min_value=0, max_value=10**6), rng_seed=st.integers(min_value=0, max_value=2**32))
def test_other_formats_seeds_are_malformed_or_rejected(all_seeds, tee, choice, rng_seed):
    """Evidence of another TEE (mutated) fed to this format: only attestation errors."""
    pool = [s for s in all_seeds if s.tee != tee]
    seed = pool[choice % len(pool)]
    _exercise(tee, mutate(seed.data, random.Random(rng_seed), max_ops=1), None)


def test_detect_tee_never_crashes(all_seeds):
    rng = random.Random(7)
    for _ in range(300):
        seed = rng.choice(all_seeds)
        data = mutate(seed.data, rng)
        try:
            attestation.detect_tee(data)
        except core.MalformedEvidence:
            pass


def test_unmutated_seeds_verify(all_seeds):
    """The fuzz seeds themselves are valid evidence (otherwise the mutations test little)."""
    for seed in all_seeds:
        module = attestation.format_module(seed.tee)
        try:
            module.verify(module.parse(seed.data), at=seed.at, certs=seed.certs, collateral=seed.collateral,
                          nonce=seed.nonce, trusted_roots=seed.trusted_roots)
        except core.VerificationFailed as exc:
            pytest.fail(f"seed {seed.name} does not verify: {exc.reason}")


def test_the_tamper_oracle_is_not_vacuous(all_seeds):
    """Bytes appended past the structure are tolerated; a flipped byte in what is signed is not."""
    for seed in all_seeds:
        assert only_unsigned_parts_changed(seed, seed.data)
        signed_byte = len(seed.data) // 8  # inside the header/body/payload of every seed format
        flipped = bytearray(seed.data)
        flipped[signed_byte] ^= 0x01
        assert not only_unsigned_parts_changed(seed, bytes(flipped)), seed.name
        if seed.tee in (TeeType.TDX, TeeType.SNP) or seed.name == "nvgpu-h100":
            assert only_unsigned_parts_changed(seed, seed.data + b"\x00" * 16), seed.name
