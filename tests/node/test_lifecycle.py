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
