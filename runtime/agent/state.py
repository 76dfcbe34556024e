"""The node agent's lifecycle states and the transitions allowed between them."""
from __future__ import annotations

from enum import StrEnum


class AgentState(StrEnum):
    BOOT = "boot"            # keys generated, nothing announced
    ATTESTED = "attested"    # own evidence collected and verified against our own policy
    MESHED = "meshed"        # device up, announced, admitting peers
    SERVING = "serving"      # the serving layer (Ray/vLLM) reported ready
    DRAINING = "draining"    # shutting down or own attestation failed: no new admissions
    STOPPED = "stopped"


ALLOWED = {
    AgentState.BOOT: {AgentState.ATTESTED, AgentState.DRAINING},
    AgentState.ATTESTED: {AgentState.MESHED, AgentState.DRAINING},
    AgentState.MESHED: {AgentState.SERVING, AgentState.DRAINING},
    AgentState.SERVING: {AgentState.MESHED, AgentState.DRAINING},
    AgentState.DRAINING: {AgentState.STOPPED},
    AgentState.STOPPED: set(),
}


class InvalidTransition(RuntimeError):
    pass


def check_transition(old: AgentState, new: AgentState) -> None:
    if new not in ALLOWED[old]:
        raise InvalidTransition(f"{old} -> {new} is not a valid agent transition")
