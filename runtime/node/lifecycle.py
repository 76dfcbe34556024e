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
from conclave.runtime.reasons import LifecycleReason  # noqa: F401 (re-export; the one registry)


class NodeState(StrEnum):
    BOOTING = "booting"
    ATTESTED = "attested"
    MESHED = "meshed"
    SHARD_VERIFIED = "shard_verified"
    RAY_JOINED = "ray_joined"
    SERVING = "serving"
    DEGRADED = "degraded"


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
