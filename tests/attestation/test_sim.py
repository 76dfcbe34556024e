"""Simulated TEE evidence: round trip, and one test per parse rule and verification step."""
from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from conclave.runtime.attestation import core, sim
from conclave.runtime.attestation.core import Reason

from attest_helpers import MEASUREMENT, NOW


def _envelope(evidence: bytes) -> dict:
    return json.loads(evidence)


def _payload(evidence: bytes) -> dict:
    return json.loads(base64.b64decode(_envelope(evidence)["payload"]))


def _resign(attester: sim.SimulatedAttester, payload: dict) -> bytes:
    """Evidence for an arbitrary payload, validly signed by the attester's key (single-defect vectors)."""
    raw = sim.canonical_json(payload)
    sig = attester._key.sign(sim.SIGNATURE_CONTEXT + raw)
    return sim.encode_envelope(raw, sig, [attester.certificate.public_bytes(serialization.Encoding.DER)])


def _verify(evidence: bytes, root, at=NOW):
    return sim.verify(sim.parse(evidence), at=at, trusted_roots=[root.certificate])


def _fails(evidence: bytes, roots, reason: Reason, step: str, at=NOW):
    with pytest.raises(core.VerificationFailed) as info:
        sim.verify(sim.parse(evidence), at=at, trusted_roots=roots)
    assert info.value.reason == reason
    assert info.value.steps[-1] == core.Step(step, False)
    assert all(s.ok for s in info.value.steps[:-1])


def test_round_trip_verifies_and_is_marked_simulated(sim_root, sim_evidence):
    verified = _verify(sim_evidence, sim_root)
    assert verified.simulated is True
    assert verified.tee == core.TeeType.SIM
    assert verified.report_data == b"\x5a" * 64
    assert verified.claims["measurement"] == MEASUREMENT
    assert verified.claims["svn"] == 3 and verified.claims["debug"] is False
    assert verified.claims["node"] == "node-a" and verified.claims["simulated"] is True
    assert [s.step for s in verified.steps] == [
        "sim.01.chain", "sim.02.validity", "sim.03.signature", "sim.04.attester_claims",
        "sim.05.simulated_marker"]
    assert verified.revocation_checked is False
    assert _payload(sim_evidence)["simulated"] is True


def test_looks_like(sim_evidence):
    assert sim.looks_like(sim_evidence)
    assert not sim.looks_like(b"\x04\x00\x02\x00" + bytes(100))
    assert not sim.looks_like(b'{"format":"other"}')


# --- parse: structure only, MalformedEvidence for every defect -------------------------------

def _mutate_env(evidence: bytes, **changes) -> bytes:
    env = _envelope(evidence)
    env.update(changes)
    return sim.canonical_json(env)


@pytest.mark.parametrize("mutate", [
    lambda e: b"not json",
    lambda e: b"\xff" + e,
    lambda e: e.replace(b'{"chain"', b'{ "chain"'),                      # not canonical
    lambda e: _mutate_env(e, format="conclave-sim-evidence-v0"),
    lambda e: _mutate_env(e, extra="x"),
    lambda e: _mutate_env(e, payload="***"),
    lambda e: _mutate_env(e, signature=base64.b64encode(b"short").decode()),
    lambda e: _mutate_env(e, chain=[]),
    lambda e: _mutate_env(e, chain=[base64.b64encode(b"not a certificate").decode()]),
    lambda e: _mutate_env(e, chain="abc"),
    lambda e: b" " * (sim.MAX_EVIDENCE_LEN + 1),
    lambda e: json.dumps([1, 2]).encode(),
], ids=["not-json", "not-ascii", "not-canonical", "format", "extra-field", "payload-b64",
        "signature-length", "empty-chain", "chain-der", "chain-type", "too-large", "not-object"])
def test_parse_rejects_malformed_envelope(sim_evidence, mutate):
    with pytest.raises(core.MalformedEvidence) as info:
        sim.parse(mutate(sim_evidence))
    assert info.value.reason == Reason.MALFORMED


@pytest.mark.parametrize("field,value", [
    ("measurement", "00" * 47), ("measurement", "AB" * 48), ("measurement", "zz" * 48),
    ("report_data", "00" * 63), ("svn", -1), ("svn", True), ("svn", "1"), ("debug", 0),
    ("version", 2), ("node", ""), ("issued_at", "2026-01-15 12:00:00"),
    ("issued_at", "2026-13-15T12:00:00Z"), ("simulated", "yes"), ("unexpected", 1),
])
def test_parse_rejects_malformed_payload(sim_attester, sim_evidence, field, value):
    payload = _payload(sim_evidence)
    payload[field] = value
    with pytest.raises(core.MalformedEvidence):
        sim.parse(_resign(sim_attester, payload))


def test_parse_rejects_non_canonical_payload(sim_attester, sim_evidence):
    raw = json.dumps(_payload(sim_evidence), indent=1).encode()
    sig = sim_attester._key.sign(sim.SIGNATURE_CONTEXT + raw)
    env = sim.encode_envelope(raw, sig, [sim_attester.certificate.public_bytes(serialization.Encoding.DER)])
    with pytest.raises(core.MalformedEvidence):
        sim.parse(env)


# --- verify: one test per step ---------------------------------------------------------------

def test_01_trusted_roots_required(sim_evidence):
    for roots in (None, []):
        _fails(sim_evidence, roots, Reason.CHAIN_UNTRUSTED, "sim.01.chain")


def test_01_other_root_is_untrusted(sim_evidence):
    other = sim.SimulatedRoot.generate("another-sim", now=NOW)
    _fails(sim_evidence, [other.certificate], Reason.CHAIN_UNTRUSTED, "sim.01.chain")


def test_01_same_name_different_key_is_untrusted(sim_evidence):
    impostor = sim.SimulatedRoot.generate("conclave-test-sim", now=NOW)
    _fails(sim_evidence, [impostor.certificate], Reason.CHAIN_UNTRUSTED, "sim.01.chain")


def test_01_leaf_certificate_is_not_a_root(sim_attester, sim_evidence):
    _fails(sim_evidence, [sim_attester.certificate], Reason.CHAIN_UNTRUSTED, "sim.01.chain")


def test_01_trusted_root_among_others(sim_root, sim_evidence):
    other = sim.SimulatedRoot.generate("another-sim", now=NOW)
    verified = sim.verify(sim.parse(sim_evidence), at=NOW,
                          trusted_roots=[other.certificate, sim_root.certificate])
    assert verified.simulated


@pytest.mark.parametrize("offset", [timedelta(days=-1), timedelta(days=2)])
def test_02_attester_certificate_validity(sim_root, sim_evidence, offset):
    _fails(sim_evidence, [sim_root.certificate], Reason.CERT_EXPIRED, "sim.02.validity", at=NOW + offset)


def test_02_expired_root(sim_evidence):
    short = sim.SimulatedRoot.generate("short-root", now=NOW - timedelta(days=10),
                                       validity=timedelta(days=1))
    att = short.issue_attester("n", measurement=MEASUREMENT, now=NOW - timedelta(days=10),
                               validity=timedelta(days=30))
    _fails(att.evidence(b"\0" * 64, now=NOW), [short.certificate], Reason.CERT_EXPIRED, "sim.02.validity")


def test_02_evidence_issued_outside_certificate_validity(sim_root, sim_attester):
    evidence = sim_attester.evidence(b"\0" * 64, now=NOW + timedelta(days=5))
    _fails(evidence, [sim_root.certificate], Reason.CERT_EXPIRED, "sim.02.validity")


def test_02_naive_time_refused(sim_root, sim_evidence):
    with pytest.raises(ValueError):
        sim.verify(sim.parse(sim_evidence), at=NOW.replace(tzinfo=None), trusted_roots=[sim_root.certificate])


def test_03_tampered_payload(sim_root, sim_evidence):
    env = _envelope(sim_evidence)
    payload = _payload(sim_evidence)
    payload["report_data"] = "00" * 64
    env["payload"] = base64.b64encode(sim.canonical_json(payload)).decode()
    _fails(sim.canonical_json(env), [sim_root.certificate], Reason.SIGNATURE_INVALID, "sim.03.signature")


def test_03_tampered_signature(sim_root, sim_evidence):
    env = _envelope(sim_evidence)
    sig = bytearray(base64.b64decode(env["signature"]))
    sig[5] ^= 1
    env["signature"] = base64.b64encode(bytes(sig)).decode()
    _fails(sim.canonical_json(env), [sim_root.certificate], Reason.SIGNATURE_INVALID, "sim.03.signature")


def test_03_signature_without_domain_separation(sim_root, sim_attester, sim_evidence):
    raw = base64.b64decode(_envelope(sim_evidence)["payload"])
    evidence = sim.encode_envelope(raw, sim_attester._key.sign(raw),
                                   [sim_attester.certificate.public_bytes(serialization.Encoding.DER)])
    _fails(evidence, [sim_root.certificate], Reason.SIGNATURE_INVALID, "sim.03.signature")


@pytest.mark.parametrize("field,value", [("measurement", "ff" * 48), ("debug", True), ("svn", 99),
                                         ("node", "node-b")])
def test_04_claims_must_match_attester_certificate(sim_root, sim_attester, sim_evidence, field, value):
    payload = _payload(sim_evidence)
    payload[field] = value
    _fails(_resign(sim_attester, payload), [sim_root.certificate], Reason.SIGNATURE_INVALID,
           "sim.04.attester_claims")


@pytest.mark.parametrize("marker", ["absent", False])
def test_05_simulated_marker_required(sim_root, sim_attester, sim_evidence, marker):
    payload = _payload(sim_evidence)
    if marker == "absent":
        del payload["simulated"]
    else:
        payload["simulated"] = marker
    _fails(_resign(sim_attester, payload), [sim_root.certificate], Reason.SIMULATED_MARKER_MISSING,
           "sim.05.simulated_marker")


def test_debug_attester_verifies_with_debug_claim(sim_root):
    att = sim_root.issue_attester("dbg", measurement=MEASUREMENT, debug=True, now=NOW)
    assert _verify(att.evidence(b"\1" * 64, now=NOW), sim_root).claims["debug"] is True


# --- secrets ---------------------------------------------------------------------------------

def test_attester_secret_round_trip_and_redacted_repr(sim_root, sim_attester):
    blob = sim_attester.to_secret_bytes()
    clone = sim.SimulatedAttester.from_secret_bytes(blob)
    raw_key = sim_attester._key.private_bytes(serialization.Encoding.Raw,
                                              serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption())
    assert raw_key.hex() not in repr(sim_attester) and "redacted" in repr(sim_attester)
    assert "redacted" in repr(sim_root)
    assert (clone.node, clone.measurement, clone.svn) == ("node-a", MEASUREMENT, 3)
    assert _verify(clone.evidence(b"\7" * 64, now=NOW), sim_root).report_data == b"\7" * 64


def test_root_secret_round_trip(sim_root):
    clone = sim.SimulatedRoot.from_secret_bytes(sim_root.to_secret_bytes())
    att = clone.issue_attester("x", measurement=MEASUREMENT, now=NOW)
    assert _verify(att.evidence(b"\0" * 64, now=NOW), sim_root).claims["node"] == "x"


def test_secret_with_mismatched_key_refused(sim_attester, sim_root):
    other = sim_root.issue_attester("other", measurement=MEASUREMENT, now=NOW)
    obj = json.loads(sim_attester.to_secret_bytes())
    obj["cert"] = json.loads(other.to_secret_bytes())["cert"]
    with pytest.raises(ValueError) as info:
        sim.SimulatedAttester.from_secret_bytes(sim.canonical_json(obj))
    assert obj["key"] not in str(info.value)
    with pytest.raises(ValueError):
        sim.SimulatedAttester.from_secret_bytes(sim_root.to_secret_bytes())  # wrong blob type


@pytest.mark.parametrize("kwargs", [dict(measurement=b"\0" * 47), dict(measurement=MEASUREMENT, svn=-1),
                                    dict(measurement=MEASUREMENT, debug=1)])
def test_issue_attester_validates_arguments(sim_root, kwargs):
    with pytest.raises(ValueError):
        sim_root.issue_attester("n", **kwargs)


def test_evidence_requires_64_byte_report_data(sim_attester):
    with pytest.raises(ValueError):
        sim_attester.evidence(b"\0" * 32)


def test_verified_evidence_cannot_be_forged():
    with pytest.raises(TypeError):
        core.VerifiedEvidence(tee=core.TeeType.SIM, report_data=b"", claims={}, verified_at=NOW,
                              simulated=False, steps=())


def test_lazily_decoded_certificate_defect_is_malformed(sim_root, sim_attester, sim_evidence):
    """Found by benchmarks/fuzz_evidence.py: a certificate whose issuer Name is corrupt still loads
    (cryptography decodes names lazily); parse must reject it, not crash inside verify."""
    der = sim_attester.certificate.public_bytes(serialization.Encoding.DER)
    name = sim_root.certificate.subject.public_bytes()
    bad = bytearray(der)
    bad[der.index(name) + 11] = 0x00
    env = _envelope(sim_evidence)
    env["chain"] = [base64.b64encode(bytes(bad)).decode()]
    with pytest.raises(core.MalformedEvidence):
        sim.parse(sim.canonical_json(env))
