"""`conclave down` leaves no namespace, interface, process or temp dir behind."""
from __future__ import annotations

import pytest

from . import harness

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(2400)]


@pytest.mark.parametrize("stages", [1, 2])
def test_down_removes_everything_it_created(golden_small, stages):
    fp = golden_small[stages]["footprint"]
    # The footprint was observed while the cluster ran: it must be substantial, or the check is empty.
    assert len(fp.netns) == stages
    assert len(fp.links) == stages + 1  # bridge + one veth per host
    assert len(fp.pids) >= 2 * stages   # at least ray + its daemons per host, plus the engine
    assert golden_small[stages]["left"] == []
    assert harness.leftovers(fp) == []
