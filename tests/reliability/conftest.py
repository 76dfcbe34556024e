"""Fixtures for the reliability tests: the admission fuzz mesh (in process) and ONE real
plain-veth 3-host vLLM cluster for this folder, started and torn down through the CLI.

`--reliability-cluster STATE_DIR` reuses a cluster someone already started with
`CONCLAVE_STATE_DIR=STATE_DIR conclave up --local --nodes 3 --network plain-veth --detach`
(for iterating on these tests without paying the start each time); it is left running.
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

from conclave.runtime import config

if str(config.REPO_ROOT) not in sys.path:  # benchmarks/ and tests.attestation are not installed
    sys.path.insert(0, str(config.REPO_ROOT))

from serving import harness  # noqa: E402  (tests/serving/harness.py: the CLI driver)


def pytest_addoption(parser):
    parser.addoption("--reliability-cluster", default=None, metavar="STATE_DIR",
                     help="reuse the running cluster whose state is in STATE_DIR instead of starting one")


@pytest.fixture(scope="module")
def fuzz_mesh():
    from .admission_fuzzer import AdmissionFuzzer, start_mesh
    mesh = start_mesh()
    try:
        yield AdmissionFuzzer(mesh, random.Random(0))
    finally:
        mesh.stop()


@pytest.fixture(scope="package")
def rcluster(request, tmp_path_factory):
    """A running 3-host plain-veth cluster (harness.Cluster); `conclave down` afterwards, even on failure.

    Package scope: it is gone before tests/serving starts its own clusters in a full-suite run
    (two 3-stage clusters at once would not fit this machine's memory and cores)."""
    reuse = request.config.getoption("--reliability-cluster", default=None)  # absent when collected late
    if reuse:
        state_dir = Path(reuse)
        state_file = state_dir / "cluster.json"
        status = json.loads(state_file.read_text())
        if status.get("phase") != "ready":
            pytest.fail(f"the cluster in {state_dir} is not ready (phase {status.get('phase')})")
        cluster = harness.Cluster(status["stages"], harness.cluster_env(state_dir), status, state_file)
        cluster.footprint = harness.footprint(state_file)
        yield cluster
        return
    if os.geteuid() != 0:
        pytest.fail("the reliability cluster tests need root (network namespaces); run as root as CI does")
    state_dir = tmp_path_factory.mktemp("reliability-state")
    with harness.running_cluster(3, state_dir, extra=["--network", "plain-veth"]) as cluster:
        yield cluster
    assert not cluster.left_after_down, f"conclave down left: {cluster.left_after_down}"
