"""Bounded fuzzing of the admission gRPC handlers (the CI slice of admission_fuzzer.py, beside it),
plus malformed, oversized and flooding messages over a real gRPC channel on 127.0.0.1.

Every input must end in a designed outcome (a Status reply with a known reason, a documented
abort code, AdmissionRejected, or a protobuf DecodeError that gRPC answers INTERNAL), and the
servers must keep serving a valid challenge and keep their mesh afterwards.
"""
from __future__ import annotations

import random
from datetime import timedelta

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conclave.overlay import rpc
from conclave.overlay.proto import conclave_pb2 as pb

from .admission_fuzzer import TARGETS, WIRE_METHODS, Crash, mutated_bytes, still_serving, wire_call

pytestmark = pytest.mark.timeout(180)

FUZZ = settings(max_examples=2500, deadline=timedelta(seconds=5), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(target=st.sampled_from(TARGETS), rng_seed=st.integers(min_value=0, max_value=2**64 - 1))
def test_mutated_requests_end_in_designed_outcomes(fuzz_mesh, target, rng_seed):
    # one drawn seed, not st.randoms(): how many values a case draws depends on the live mesh (a PSK
    # release may or may not succeed), which Hypothesis reports as FlakyStrategyDefinition
    fuzz_mesh.rng = random.Random(rng_seed)
    outcome = fuzz_mesh.run_case(target)
    assert outcome


@FUZZ
@given(target=st.sampled_from(TARGETS), data=st.binary(max_size=4096))
def test_arbitrary_bytes_end_in_designed_outcomes(fuzz_mesh, target, data):
    fuzz_mesh.rng = random.Random(len(data))
    assert fuzz_mesh.run_case(target, data)


def test_unmutated_requests_succeed(fuzz_mesh):
    """The oracle is not vacuous: valid requests reach the deep paths and succeed."""
    fuzz_mesh.rng = random.Random(7)
    assert fuzz_mesh.run_case("admit", mutated=False) == "admitted"
    assert fuzz_mesh.run_case("attest", mutated=False) == "ok"
    assert fuzz_mesh.run_case("release_key", mutated=False) == "ok"
    assert fuzz_mesh.run_case("announce", mutated=False) == "ok"
    secret = pb.SecretRequest(requester_wg_public_key=fuzz_mesh.mesh.worker.identity.wg_public.raw, name="ray_token")
    assert fuzz_mesh.run_case("get_secret", secret.SerializeToString()) == "ok"
    assert fuzz_mesh.run_case("ping", mutated=False) == "ok:meshed"   # the worker is the head's meshed peer
    stranger = pb.PingRequest(verifier_wg_public_key=b"\x07" * 32, token=b"\x01" * 16)
    assert fuzz_mesh.run_case("ping", stranger.SerializeToString()) == "ok"
    short_token = pb.PingRequest(verifier_wg_public_key=b"\x07" * 32, token=b"\x01" * 15)
    assert fuzz_mesh.run_case("ping", short_token.SerializeToString()) == "abort:INVALID_ARGUMENT"


def test_a_handler_that_raises_is_reported_as_a_crash(fuzz_mesh, monkeypatch):
    """The judge must catch an unexpected exception (this is what the fuzz hunts)."""
    def broken(*args, **kwargs):
        raise KeyError("boom")
    monkeypatch.setattr(fuzz_mesh.mesh.head, "handle_get_secret", broken)
    valid = pb.SecretRequest(requester_wg_public_key=fuzz_mesh.mesh.worker.identity.wg_public.raw, name="ray_token")
    with pytest.raises(KeyError):
        fuzz_mesh.run_case("get_secret", valid.SerializeToString())


def test_a_secret_released_to_a_stranger_breaks_the_oracle(fuzz_mesh, monkeypatch):
    monkeypatch.setattr(fuzz_mesh.mesh.head, "handle_get_secret", lambda requester, name: (pb.OK, b"sealed", ""))
    stranger = pb.SecretRequest(requester_wg_public_key=b"\x07" * 32, name="ray_token")
    with pytest.raises(Crash):
        fuzz_mesh.run_case("get_secret", stranger.SerializeToString())


@pytest.mark.parametrize("forgery", ["other_key", "other_token", "meshed_to_stranger"])
def test_a_ping_reply_that_lies_breaks_the_oracle(fuzz_mesh, monkeypatch, forgery):
    """A reply must carry the responder's own key, echo the token, and say meshed only to its peer."""
    head = fuzz_mesh.mesh.head.identity.wg_public.raw
    forged = {"other_key": lambda req, ctx: pb.PingReply(wg_public_key=b"\x09" * 32, token=req.token),
              "other_token": lambda req, ctx: pb.PingReply(wg_public_key=head, token=b"\x00" * 16),
              "meshed_to_stranger": lambda req, ctx: pb.PingReply(wg_public_key=head, token=req.token, meshed=True)}
    monkeypatch.setattr(fuzz_mesh.head_svc, "Ping", forged[forgery])
    stranger = pb.PingRequest(verifier_wg_public_key=b"\x07" * 32, token=b"\x01" * 16)
    with pytest.raises(Crash):
        fuzz_mesh.run_case("ping", stranger.SerializeToString())


def test_a_ping_that_refuses_a_well_formed_probe_breaks_the_oracle(fuzz_mesh, monkeypatch):
    def refuse(req, ctx):
        ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "no")
    monkeypatch.setattr(fuzz_mesh.head_svc, "Ping", refuse)
    valid = pb.PingRequest(verifier_wg_public_key=b"\x07" * 32, token=b"\x01" * 16)
    with pytest.raises(Crash):
        fuzz_mesh.run_case("ping", valid.SerializeToString())


def _channel_for(mesh, target: str) -> grpc.Channel:
    if target == "announce":
        return rpc.channel(f"127.0.0.1:{mesh.rdv_port}")
    agent = mesh.leader if target in ("release_key", "confirm_key") else mesh.head
    return rpc.channel(f"127.0.0.1:{agent.cfg.admission_port}")


@pytest.mark.parametrize("target", sorted(WIRE_METHODS))
def test_oversized_message_is_resource_exhausted_and_server_keeps_serving(fuzz_mesh, target):
    """Over the configured max receive size (rpc.MAX_REQUEST_BYTES): refused by gRPC before our code."""
    method, _ = WIRE_METHODS[target]
    valid = fuzz_mesh.valid(target).SerializeToString()
    # a valid message padded with an unknown length-delimited field (number 15) past the limit
    pad = rpc.MAX_REQUEST_BYTES + 1
    oversized = valid + b"\x7a" + _varint(pad) + b"\x00" * pad
    ch = _channel_for(fuzz_mesh.mesh, target)
    try:
        code, _ = wire_call(ch, method, oversized)
        assert code == "RESOURCE_EXHAUSTED"
        code, raw = wire_call(ch, method, valid)  # the same channel still works
        assert code in ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")
    finally:
        ch.close()
    assert still_serving(fuzz_mesh.mesh)


@pytest.mark.parametrize("target", sorted(WIRE_METHODS))
def test_malformed_messages_over_the_wire_never_crash_a_handler(fuzz_mesh, target):
    """Undecodable bytes are INTERNAL (gRPC's deserialization failure); a handler exception would be UNKNOWN."""
    method, reply_type = WIRE_METHODS[target]
    rng = random.Random(target)
    ch = _channel_for(fuzz_mesh.mesh, target)
    codes = set()
    try:
        for data in [b"\xff\xff\xff\xff\x0f", b"\x0a\xff\xff\xff\xff\x0f", b"\x0a", b"\x12\x05ab"] + \
                [mutated_bytes(rng, fuzz_mesh.valid(target), keys=fuzz_mesh.keys) for _ in range(100)]:
            code, raw = wire_call(ch, method, data)
            assert code in ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INTERNAL"), (code, data.hex())
            if code == "OK":
                reply_type.FromString(raw)
            codes.add(code)
    finally:
        ch.close()
    assert "INTERNAL" in codes  # the undecodable ones
    assert still_serving(fuzz_mesh.mesh)


def test_challenge_flood_is_rationed_then_recovers(fuzz_mesh):
    """More challenges than the token bucket holds: RESOURCE_EXHAUSTED, never a crash; then served again."""
    mesh = fuzz_mesh.mesh
    ch = rpc.channel(f"127.0.0.1:{mesh.worker.cfg.admission_port}")
    try:
        codes = [wire_call(ch, "/conclave.v1.Node/Attest", pb.AttestRequest(nonce=random.randbytes(32))
                           .SerializeToString())[0] for _ in range(300)]
    finally:
        ch.close()
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert codes.count("RESOURCE_EXHAUSTED") > 0 and codes.count("OK") >= 50
    assert still_serving(mesh)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)
