"""The head's pure decision: launch the engine only when every stage is meshed, signed a verified
shard and joined this head's Ray epoch; and the node state a scrape sees."""
from __future__ import annotations

from prometheus_client import generate_latest

from conclave.runtime.metrics import NODE_STATES, ConclaveMetrics
from conclave.runtime.node.lifecycle import LifecycleReason, NodeState, StageView, stage_problems

OK = {"shard": {"verified": True, "digest": "ab" * 32}, "ray": {"running": True, "epoch": "e1"}}


def test_every_stage_whole_means_no_problem():
    assert stage_problems([StageView("w1", True, OK), StageView("w2", True, OK)], ray_epoch="e1") == []


def test_each_missing_piece_is_named_for_its_stage():
    views = [StageView("w1", False, OK),                                              # not meshed
             StageView("w2", True, {**OK, "shard": {"verified": False}}),               # shard not verified
             StageView("w3", True, {**OK, "ray": {"running": True, "epoch": "old"}}),   # another Ray epoch
             StageView("w4", True, None)]                                              # no statement at all
    assert stage_problems(views, ray_epoch="e1") == [
        (LifecycleReason.STAGE_NOT_MESHED, "w1 is not admitted and meshed"),
        (LifecycleReason.STAGE_SHARD_UNVERIFIED, "w2 has not signed a verified shard"),
        (LifecycleReason.STAGE_RAY_NOT_JOINED, "w3 has not joined this head's Ray cluster"),
        (LifecycleReason.STAGE_SHARD_UNVERIFIED, "w4 has not signed a verified shard")]


def test_no_head_ray_means_no_stage_has_joined():
    assert [r for r, _ in stage_problems([StageView("w1", True, OK)], ray_epoch=None)] == \
        [LifecycleReason.STAGE_RAY_NOT_JOINED]


def test_node_state_is_exported_one_series_per_state():
    assert set(NODE_STATES) == {str(s) for s in NodeState}
    m = ConclaveMetrics()
    m.set_node_state("degraded", ["stage_not_meshed"])
    m.set_node_state("serving")
    text = generate_latest(m.registry).decode()
    assert 'conclave_node_state{state="serving"} 1.0' in text and 'conclave_node_state{state="degraded"} 0.0' in text
    assert "conclave_node_degraded_reasons{" not in text     # cleared once serving


def test_the_node_cli_builds_a_stage_runner_from_the_signed_manifest(tmp_path):
    """`conclave node` with a model: the runner knows its stage, the pipeline order and the layer split
    from the manifest (what the head gives vLLM), never from its own command line."""
    import argparse
    from types import SimpleNamespace
    from conclave.runtime.cli.node import _stage_runner
    from conclave.runtime.manifest.document import Stage
    manifest = SimpleNamespace(
        model_digest="ab" * 32, model_source=None,
        stages=(Stage("node-1", "o", "worker", 10, 30), Stage("node-0", "o", "head", 0, 10)),
        stage_for=lambda n: {"node-0": Stage("node-0", "o", "head", 0, 10),
                             "node-1": Stage("node-1", "o", "worker", 10, 30)}.get(n))
    model_manifest = tmp_path / "model.json"
    model_manifest.write_text('{"digest": "' + "ab" * 32 + '", "dtype": "float32"}')
    cfg = SimpleNamespace(manifest=manifest, node_name="node-0", role="head", overlay_address="100.64.0.1",
                          interface="cnc0")
    args = argparse.Namespace(model=tmp_path, model_manifest=model_manifest, dtype=None, served_name="m",
                              max_model_len=64, kv_cache_mb=16, run_dir=tmp_path / "run", omp_bind=None,
                              shard_mount=tmp_path / "shard", shard_mount_mode="mount")
    runner = _stage_runner(args, cfg, agent=None, api_key=None)
    spec = runner.spec
    assert (spec.index, spec.stages, spec.layers, spec.layer_counts) == (0, 2, (0, 10), (10, 20))
    assert spec.stage_order == ("node-0", "node-1") and runner.worker_names == ["node-1"]


def test_the_attestation_bundle_shows_each_stage_lifecycle():
    """/v1/attestation names every stage's state: the head's own and each worker's signed statement."""
    from types import SimpleNamespace
    from conclave.runtime.endpoint.bundle import BundleMalformed, parse_bundle
    from conclave.runtime.serving.front import stage_lifecycles
    import pytest
    agent = SimpleNamespace(cfg=SimpleNamespace(node_name="node-0"),
                            stage_extra={"state": "degraded", "reasons": [{"reason": "stage_not_meshed", "detail": "x"}]},
                            peer_statements=lambda: {"node-1": {"state": "ray_joined", "shard": {}}})
    assert stage_lifecycles(agent) == {"node-0": {"state": "degraded", "reasons": ["stage_not_meshed"]},
                                       "node-1": {"state": "ray_joined", "reasons": []}}
    with pytest.raises(BundleMalformed):   # a bundle with a malformed lifecycle is refused, not half-read
        parse_bundle({"version": 1, "nonce": "00", "manifest": {}, "model_digest": "", "stages": [], "nodes": [],
                      "head": {}, "lifecycle": {"node-0": "serving"}})
