"""Fixtures for the attestation tests: a fixed clock and a simulated root/attester."""
from __future__ import annotations

import pytest

from conclave.runtime.attestation import sim

from attest_helpers import MEASUREMENT, NOW


@pytest.fixture(scope="session")
def sim_root() -> sim.SimulatedRoot:
    return sim.SimulatedRoot.generate("conclave-test-sim", now=NOW)


@pytest.fixture(scope="session")
def sim_attester(sim_root) -> sim.SimulatedAttester:
    return sim_root.issue_attester("node-a", measurement=MEASUREMENT, svn=3, now=NOW)


@pytest.fixture()
def sim_evidence(sim_attester) -> bytes:
    return sim_attester.evidence(b"\x5a" * 64, now=NOW)
