"""Pipeline rank k must run on stage k's node (the shard there is stage k's alone)."""
from __future__ import annotations

import pytest

from conclave.runtime.node.vllm_stage_order import StageOrderError, order_by_stage

BUNDLES = [(0, "node-c", "100.64.0.3"), (1, "node-a", "100.64.0.1"), (2, "node-b", "100.64.0.2")]


def test_bundles_follow_the_stage_order_not_ray_node_ids():
    assert order_by_stage(BUNDLES, ["100.64.0.1", "100.64.0.3", "100.64.0.2"]) == \
        [(1, "node-a", "100.64.0.1"), (0, "node-c", "100.64.0.3"), (2, "node-b", "100.64.0.2")]


@pytest.mark.parametrize("bundles, ips", [
    (BUNDLES, ["100.64.0.1", "100.64.0.2"]),                                   # a bundle on no stage's node
    (BUNDLES[:2], ["100.64.0.1", "100.64.0.2", "100.64.0.3"]),                  # a stage without a bundle
    (BUNDLES + [(3, "node-a", "100.64.0.1")], ["100.64.0.1", "100.64.0.2", "100.64.0.3"]),   # two on one node
])
def test_anything_but_one_bundle_per_stage_node_refuses_to_start(bundles, ips):
    with pytest.raises(StageOrderError):
        order_by_stage(bundles, ips)


def test_the_plugin_is_registered_for_vllm():
    from importlib.metadata import entry_points
    names = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert names.get("conclave_stage_order") == "conclave.runtime.node.vllm_stage_order:register"
