"""Package-level dispatch: detect_tee / parse / verify_evidence route to the right format module."""
from __future__ import annotations

import pytest

from conclave.runtime import attestation
from conclave.runtime.attestation import core
from conclave.runtime.attestation.core import Reason, TeeType

from attest_helpers import NOW


def test_detect_and_verify_sim(sim_root, sim_evidence):
    assert attestation.detect_tee(sim_evidence) == TeeType.SIM
    tee, parsed = attestation.parse(sim_evidence)
    assert tee == TeeType.SIM and attestation.claims(tee, parsed)["simulated"] is True
    verified = attestation.verify_evidence(sim_evidence, at=NOW, trusted_roots=[sim_root.certificate])
    assert verified.simulated and verified.tee == TeeType.SIM


def test_sim_without_roots_fails_closed(sim_evidence):
    with pytest.raises(core.VerificationFailed) as info:
        attestation.verify_evidence(sim_evidence, tee="sim", at=NOW)
    assert info.value.reason == Reason.CHAIN_UNTRUSTED


def test_undetectable_input_is_malformed():
    with pytest.raises(core.MalformedEvidence):
        attestation.detect_tee(b"\x00garbage")


def test_unknown_tee_name():
    with pytest.raises(core.AttestationError) as info:
        attestation.format_module("sgx")
    assert info.value.reason == Reason.UNSUPPORTED


def test_explicit_tee_overrides_detection(sim_evidence):
    with pytest.raises(core.MalformedEvidence):
        attestation.parse(b"{}", tee=TeeType.SIM)
