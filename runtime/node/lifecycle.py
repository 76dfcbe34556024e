"""The node's serving lifecycle states and the pure decision of what the head may do next.

Every node walks booting -> attested -> meshed -> shard_verified -> ray_joined -> serving by
itself; `degraded` is any state in which something the node needs is missing, with the reasons.
The head's decision to launch (or stop) the engine is a pure function of what it knows: its own
shard and Ray node, and each manifest stage's verified statement. Nothing here does I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Mapping, Sequence


class NodeState(StrEnum):
    BOOTING = "booting"
    ATTESTED = "attested"
    MESHED = "meshed"
    SHARD_VERIFIED = "shard_verified"
    RAY_JOINED = "ray_joined"
    SERVING = "serving"
    DEGRADED = "degraded"


class LifecycleReason(StrEnum):
    """Why a node (or the head for the whole pipeline) is not serving."""
    MODEL_SHARD_MISMATCH = "model_shard_mismatch"   # the shard does not match the model manifest
    SHARD_UNAVAILABLE = "shard_unavailable"         # the shard (or its key) could not be obtained
    STAGE_NOT_MESHED = "stage_not_meshed"           # a manifest stage is not admitted and meshed
    STAGE_SHARD_UNVERIFIED = "stage_shard_unverified"   # no signed statement that its shard verified
    STAGE_RAY_NOT_JOINED = "stage_ray_not_joined"   # its Ray node is not (yet) in this head's Ray cluster
    RAY_NODE_LOST = "ray_node_lost"                 # our own Ray node exited
    ENGINE_EXITED = "engine_exited"                 # the vLLM server exited
    ENGINE_STARTING = "engine_starting"
    HEAD_NOT_MESHED = "head_not_meshed"             # worker: the manifest's head is not meshed with us
    SECRET_MISSING = "secret_missing"               # worker: the Ray token was not released yet


@dataclass(frozen=True)
class StageView:
    """What the head knows about one worker stage: meshed, and its latest verified statement."""
    name: str
    meshed: bool
    statement: Mapping | None


def stage_problems(views: Sequence[StageView], *, ray_epoch: str | None) -> list[tuple[str, str]]:
    """(reason, detail) for every worker stage that keeps the pipeline from serving: each must be
    meshed, have signed that its shard verified, and have joined THIS head's Ray cluster (epoch)."""
    out: list[tuple[str, str]] = []
    for v in views:
        if not v.meshed:
            out.append((LifecycleReason.STAGE_NOT_MESHED, f"{v.name} is not admitted and meshed"))
            continue
        st = v.statement or {}
        shard = st.get("shard") or {}
        if not shard.get("verified"):
            out.append((LifecycleReason.STAGE_SHARD_UNVERIFIED, f"{v.name} has not signed a verified shard"))
            continue
        ray = st.get("ray") or {}
        if not ray.get("running") or ray_epoch is None or ray.get("epoch") != ray_epoch:
            out.append((LifecycleReason.STAGE_RAY_NOT_JOINED, f"{v.name} has not joined this head's Ray cluster"))
    return out
