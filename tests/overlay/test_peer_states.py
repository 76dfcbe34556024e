"""The agent's peer states move only along the transition table (runtime/agent/peers.py)."""
from __future__ import annotations

import itertools

import pytest

from conclave.runtime.agent.peers import PEER_TRANSITIONS, InvalidPeerTransition, PeerState, check_peer_transition


def test_every_state_has_a_row_and_only_admitted_peers_mesh_or_get_evicted():
    assert set(PEER_TRANSITIONS) == set(PeerState)
    for old, allowed in PEER_TRANSITIONS.items():
        if PeerState.MESHED in allowed:
            assert old in (PeerState.ADMITTED, PeerState.MESHED)
        if PeerState.EVICTED in allowed:
            assert old in (PeerState.ADMITTED, PeerState.MESHED, PeerState.EVICTED)
        assert PeerState.DISCOVERED not in allowed      # nothing goes back to merely discovered


@pytest.mark.parametrize("old, new", [(o, n) for o, n in itertools.product(PeerState, PeerState)
                                      if n not in PEER_TRANSITIONS[o]])
def test_a_transition_outside_the_table_is_refused(old, new):
    with pytest.raises(InvalidPeerTransition):
        check_peer_transition(old, new)
