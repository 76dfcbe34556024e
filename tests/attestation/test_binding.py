"""REPORT_DATA binding: a fixed test vector, determinism, and that every input changes the output."""
from __future__ import annotations

import hashlib
import struct

import pytest

from conclave.runtime.attestation import binding, core, sim
from conclave.runtime.attestation.core import Reason

from attest_helpers import NOW

BASE = dict(purpose=binding.PURPOSE_NODE, manifest_digest=b"\x11" * 32, wg_public_key=b"\x22" * 32,
            hpke_public_key=b"\x33" * 32, nonce=b"\x44" * 32, extra={})


def _item(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def test_encoding_matches_the_documented_layout():
    expected = b"".join([
        _item(b"conclave/report-data/v1"), _item(b"conclave/node/v1"),
        _item(b"manifest_digest"), _item(b"\x11" * 32), _item(b"wg_public_key"), _item(b"\x22" * 32),
        _item(b"hpke_public_key"), _item(b"\x33" * 32), _item(b"nonce"), _item(b"\x44" * 32),
        struct.pack(">I", 1), _item(b"extra:tls_spki_sha256"), _item(b"\x55" * 32),
    ])
    got = binding.encode(**{**BASE, "extra": {"tls_spki_sha256": b"\x55" * 32}})
    assert got == expected
    assert binding.report_data_for(**{**BASE, "extra": {"tls_spki_sha256": b"\x55" * 32}}) == \
        hashlib.sha512(expected).digest()


def test_known_answer_vector():
    # Pinned so that any change of the encoding is a deliberate, visible protocol break.
    assert binding.report_data_for(**BASE).hex() == KNOWN_ANSWER


KNOWN_ANSWER = hashlib.sha512(b"".join([
    _item(b"conclave/report-data/v1"), _item(b"conclave/node/v1"),
    _item(b"manifest_digest"), _item(b"\x11" * 32), _item(b"wg_public_key"), _item(b"\x22" * 32),
    _item(b"hpke_public_key"), _item(b"\x33" * 32), _item(b"nonce"), _item(b"\x44" * 32),
    struct.pack(">I", 0)])).hexdigest()


def test_deterministic_and_64_bytes():
    a = binding.report_data_for(**BASE)
    assert a == binding.report_data_for(**dict(BASE))
    assert len(a) == 64


@pytest.mark.parametrize("field,value", [
    ("purpose", "conclave/head/v1"), ("manifest_digest", b"\x12" + b"\x11" * 31),
    ("wg_public_key", b"\x23" + b"\x22" * 31), ("hpke_public_key", b"\x34" + b"\x33" * 31),
    ("nonce", b"\x45" + b"\x44" * 31), ("extra", {"tls": b"\x00"}), ("manifest_digest", b"\x11" * 48),
])
def test_every_field_changes_the_output(field, value):
    assert binding.report_data_for(**{**BASE, field: value}) != binding.report_data_for(**BASE)


def test_extra_sorted_and_unambiguous():
    one = binding.report_data_for(**{**BASE, "extra": {"a": b"1", "b": b"2"}})
    assert one == binding.report_data_for(**{**BASE, "extra": {"b": b"2", "a": b"1"}})
    # moving bytes between key and value must change the result (length prefixes)
    assert binding.report_data_for(**{**BASE, "extra": {"ab": b"c"}}) != \
        binding.report_data_for(**{**BASE, "extra": {"a": b"bc"}})
    assert binding.report_data_for(**{**BASE, "extra": {"a": b"1", "b": b"2"}}) != \
        binding.report_data_for(**{**BASE, "extra": {"a": b"12"}})


def test_fields_cannot_be_shifted_into_each_other():
    # Same concatenated bytes, different split between hpke key and nonce.
    a = binding.report_data_for(**{**BASE, "hpke_public_key": b"\x33" * 32, "nonce": b"\x44" * 32})
    b = binding.report_data_for(**{**BASE, "hpke_public_key": b"\x33" * 32 + b"\x44",
                                   "nonce": b"\x44" * 31})
    assert a != b


@pytest.mark.parametrize("field,value,exc", [
    ("wg_public_key", b"\x22" * 31, ValueError), ("nonce", b"\x44" * 15, ValueError),
    ("manifest_digest", b"\x11" * 16, ValueError), ("hpke_public_key", b"", ValueError),
    ("nonce", "44" * 32, TypeError), ("purpose", "", ValueError), ("extra", {"": b"x"}, ValueError),
])
def test_invalid_inputs_refused(field, value, exc):
    with pytest.raises(exc):
        binding.report_data_for(**{**BASE, field: value})


def test_gpu_nonce():
    rd = binding.report_data_for(**BASE)
    nonce = binding.gpu_nonce_for(rd)
    assert len(nonce) == 32
    assert nonce == hashlib.sha256(_item(b"conclave/gpu-nonce/v1") + _item(rd)).digest()
    assert nonce != binding.gpu_nonce_for(bytes(64)) and nonce != rd[:32]
    with pytest.raises(ValueError):
        binding.gpu_nonce_for(rd[:32])


def test_check_binding_with_sim_evidence(sim_root, sim_attester):
    rd = binding.report_data_for(**BASE)
    verified = sim.verify(sim.parse(sim_attester.evidence(rd, now=NOW)), at=NOW,
                          trusted_roots=[sim_root.certificate])
    assert binding.check_binding(verified, rd) is None
    other = binding.report_data_for(**{**BASE, "nonce": b"\x00" * 32})
    with pytest.raises(core.VerificationFailed) as info:
        binding.check_binding(verified, other)
    assert info.value.reason == Reason.REPORT_DATA_MISMATCH
    with pytest.raises(core.VerificationFailed):
        binding.check_binding(verified, rd[:32])


def test_check_binding_accepts_only_verified_evidence(sim_attester):
    parsed = sim.parse(sim_attester.evidence(bytes(64), now=NOW))
    with pytest.raises(TypeError):
        binding.check_binding(parsed, bytes(64))


def test_check_binding_is_constant_time(monkeypatch, sim_root, sim_attester):
    """The comparison goes through hmac.compare_digest (not ==)."""
    calls = []
    real = binding.hmac.compare_digest
    monkeypatch.setattr(binding.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    verified = sim.verify(sim.parse(sim_attester.evidence(bytes(64), now=NOW)), at=NOW,
                          trusted_roots=[sim_root.certificate])
    binding.check_binding(verified, bytes(64))
    assert calls == [1]
