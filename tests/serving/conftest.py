"""Session fixtures: each local cluster starts ONCE per test session, through the real CLI.

Order matters for memory on a 24 GB machine: the 1- and 2-stage clusters run one after the
other (and are gone) before the 3-stage cluster starts; `cluster3` depends on `golden_small`
to force that order whichever test asks first. Every cluster is torn down with `conclave
down` even when a test fails, and what it left behind is recorded for the teardown tests.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from . import harness


@pytest.fixture(scope="session")
def cluster_root(tmp_path_factory) -> Path:
    if os.geteuid() != 0:
        pytest.fail("the cluster tests need root (network namespaces); run the suite as root as CI does")
    return tmp_path_factory.mktemp("conclave-state")


@pytest.fixture(scope="session")
def golden_small(cluster_root) -> dict:
    """Greedy outputs, chat answers and teardown results of the 1- and 2-stage clusters."""
    results = {}
    key_file = cluster_root / "api-key"
    key_file.write_text("test-key-" + secrets.token_hex(8) + "\n")
    key_file.chmod(0o600)
    # The 1-stage cluster takes a supplied API key; the 2-stage one serves without a key.
    options = {1: ["--api-key-file", str(key_file)], 2: ["--no-api-key"]}
    for stages in (1, 2):
        with harness.running_cluster(stages, cluster_root / f"n{stages}", extra=options[stages]) as cluster:
            results[stages] = {"ids": harness.greedy_token_ids(cluster), "chat": harness.chat_answer(cluster),
                               "status": cluster.status, "models_without_key": cluster.get_models(key=None),
                               "models_with_wrong_key": cluster.get_models(key="wrong")}
        results[stages]["footprint"] = cluster.footprint
        results[stages]["left"] = cluster.left_after_down
    results["key_file"] = key_file.read_text().strip()
    return results


CLUSTER3_PARTITION = (8, 12, 10)


@pytest.fixture(scope="session")
def cluster3(golden_small, cluster_root):
    # An explicit, uneven layer split: exercises VLLM_PP_LAYER_PARTITION on the golden path.
    with harness.running_cluster(3, cluster_root / "n3", extra=["--partition", ",".join(map(str, CLUSTER3_PARTITION))]) as cluster:
        yield cluster
    assert not cluster.left_after_down, f"conclave down left: {cluster.left_after_down}"
