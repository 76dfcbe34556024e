"""vLLM general plugin: pipeline rank k runs on the node that holds stage k's shard.

vLLM's Ray executor orders its placement-group bundles driver first, then by Ray node ID (random),
and gives pipeline ranks in that order. With the model sealed per stage, each node holds only its
own stage's weights, so the rank a node gets must be its stage. The head launches vLLM with
CONCLAVE_PP_NODE_IPS = the stages' overlay addresses in pipeline order; this plugin (loaded by vLLM
in every process through the `vllm.general_plugins` entry point) re-orders the bundles by it and
refuses to start when a bundle's node is not one of the stages or a stage has no bundle.
Without the variable it changes nothing.
"""
from __future__ import annotations

import os

ENV = "CONCLAVE_PP_NODE_IPS"


class StageOrderError(RuntimeError):
    """The Ray placement group does not put exactly one bundle on each stage's node."""


def order_by_stage(bundles: list[tuple[int, str, str]], stage_ips: list[str]) -> list[tuple[int, str, str]]:
    """(bundle index, node id, node ip) sorted so that position k is on stage_ips[k]'s node."""
    by_ip: dict[str, tuple[int, str, str]] = {}
    for bundle in bundles:
        ip = bundle[2]
        if ip not in stage_ips:
            raise StageOrderError(f"a pipeline bundle landed on {ip}, which is no stage's node")
        if ip in by_ip:
            raise StageOrderError(f"two pipeline bundles landed on {ip}: one stage per node")
        by_ip[ip] = bundle
    missing = [ip for ip in stage_ips if ip not in by_ip]
    if missing:
        raise StageOrderError(f"no pipeline bundle on the stage node(s) {', '.join(missing)}")
    return [by_ip[ip] for ip in stage_ips]


def register() -> None:
    stage_ips = [ip for ip in (os.environ.get(ENV) or "").split(",") if ip]
    if not stage_ips:
        return
    from vllm.v1.executor import ray_utils
    original = getattr(ray_utils.get_bundles_sorted_by_node, "__wrapped__", ray_utils.get_bundles_sorted_by_node)

    def sorted_by_stage(placement_group):
        return order_by_stage(original(placement_group), stage_ips)

    sorted_by_stage.__wrapped__ = original
    ray_utils.get_bundles_sorted_by_node = sorted_by_stage
    try:
        from vllm.v1.executor import ray_executor_v2
    except ImportError:
        return
    ray_executor_v2.get_bundles_sorted_by_node = sorted_by_stage
