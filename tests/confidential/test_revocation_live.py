"""Revocation, TCB recovery and vendor outages on the running emulated-hardware cluster (issue 14).

The package cluster (conftest.ccluster: TDX head, SNP worker, TDX worker) runs the real verifier
path: every node verifies its peers' quotes / reports with collateral its own cache fetched from
the cluster's emulated Intel PCS and AMD KDS (re-fetched after LOCAL_COLLATERAL_REFRESH_S), and
re-attests every admitted peer each conftest.REATTEST_INTERVAL_S. The emulated vendors' admin
sockets (runtime/attestation/emulated/service.py) revoke a host's certificate, publish a TCB
recovery or stop answering while the cluster runs; each test restores what it changed in a
`finally` and waits until the cluster serves again, so the next one starts from a whole cluster.

What must hold:
- `conclave verify --local --json` accepts the cluster; every node's result names its CPU TEE, a
  TCB judged from collateral (TDX: tcb_status UpToDate from TCB info; SNP: the VCEK for the
  REPORTED_TCB), `revocation_checked: true` and the collateral's age.
- A revoked PCK (TDX worker) and VCEK (SNP worker): every peer evicts that host within one
  re-attestation period (plus the collateral refresh) with `cert_revoked`; the head stops
  serving with a clear error (503 stage_not_attested naming the stages); unrevoked, both are
  admitted again and the cluster serves.
- A TCB recovery (every emulated TDX host OutOfDate): the SNP worker evicts both TDX hosts and the
  head evicts the TDX worker, `tcb_not_allowed` (this cluster's policy gives no grace; the grace
  path: tests/confidential/test_tcb_grace.py); withdrawn, the cluster serves again.
- PCS and KDS down: the cluster keeps serving and every node keeps re-attesting every peer on the
  collateral it holds (re-attestation counters move, nobody is evicted).

These tests break and heal the shared cluster: conftest runs them after every other test of this
folder and before test_faults.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from reliability.api_support import cluster_status, public_health, wait_serving, wait_until
from serving import harness

from .conftest import REATTEST_INTERVAL_S, agent_status

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(1800)]

COLLATERAL_REFRESH_S = 5.0       # runtime/local/attested.LOCAL_COLLATERAL_REFRESH_S
VERIFY_SLACK_S = 15.0            # a re-attestation round itself (RPC, verification) on two busy cores
LIVENESS_TIMEOUT_S = 10.0        # the node default (--liveness-timeout): a peer that evicted us first drops out by it


def eviction_bound() -> float:
    """A peer whose certificate or TCB went bad is evicted at its next scheduled re-attestation:
    one period, plus the age of the verifier's cached collateral, plus the round itself (plus the
    liveness timeout where the victim evicted the observer first and so broke their tunnel)."""
    return REATTEST_INTERVAL_S + COLLATERAL_REFRESH_S + LIVENESS_TIMEOUT_S + VERIFY_SLACK_S


def emulator(cluster, kind: str, cmd: str, **fields) -> dict:
    from conclave.runtime.attestation.emulated import service
    sock = cluster.status["network"]["emulators"][kind]["admin_socket"]
    return service.request(sock, cmd, **fields)


def views_of(cluster, victim: str) -> dict[str, list[dict]]:
    """Every other node's peer records of `victim` (observer node_id -> records)."""
    out = {}
    for node in cluster.status["nodes"]:
        if node["node_id"] != victim:
            out[node["node_id"]] = [p for p in agent_status(node["agent_socket"])["peers"] if p["node_id"] == victim]
    return out


def evicted_by(records: list[dict], reason: str, *, by_reattestation: bool = True) -> bool:
    """Out (no record admitted or meshed), and the admitted record was evicted by a re-attestation
    that failed with `reason`. by_reattestation=False also takes an eviction by liveness (the victim
    evicted the observer first, so the observer's pings over the tunnel failed) as long as the
    observer's admission retries now refuse the victim for `reason`."""
    if not records or any(p["state"] in ("admitted", "meshed") for p in records):
        return False
    if any(e["event"] == "reattestation_failed" and e["reason"] == reason for p in records for e in p["events"]):
        return True
    return not by_reattestation and any(p["reason"] == reason for p in records)


class EvictionWatch:
    """Until every (observer, victim) pair was seen evicted by a failed re-attestation with `reason`.

    Seen pairs are remembered: a peer record keeps only its newest events (peers.MAX_EVENTS), and an
    evicted peer's admission retries (every --retry-interval) push the eviction event out after a
    while, so the pairs evicted first may no longer show it when the last one is evicted."""

    def __init__(self, cluster, pairs: list[tuple[dict, str]], reason: str, *, strict: set[str] = frozenset()):
        """strict: observers that must have evicted by their own re-attestation (no race with the
        victim evicting them first, because the victim does not evict them)."""
        self.cluster, self.reason, self.strict = cluster, reason, strict
        self.waiting = {(observer["node_id"], victim): observer for observer, victim in pairs}
        self.seen: dict[tuple[str, str], float] = {}
        self.started = time.monotonic()

    def __call__(self) -> bool:
        for key, observer in list(self.waiting.items()):
            records = [p for p in agent_status(observer["agent_socket"])["peers"] if p["node_id"] == key[1]]
            if evicted_by(records, self.reason, by_reattestation=key[0] in self.strict):
                self.seen[key] = time.monotonic() - self.started
                del self.waiting[key]
        return not self.waiting


def meshed_everywhere(cluster) -> bool:
    nodes = cluster.status["nodes"]
    for node in nodes:
        peers = agent_status(node["agent_socket"])["peers"]
        for other in nodes:
            if other is not node and not any(p["node_id"] == other["node_id"] and p["state"] == "meshed"
                                             for p in peers):
                return False
    return True


def chat_refused(cluster) -> dict:
    resp = cluster.post("/chat/completions", {"model": cluster.status["model"]["name"], "max_tokens": 4,
                                              "messages": [{"role": "user", "content": "Hello"}]})
    assert resp.status_code == 503, (resp.status_code, resp.text[:500])
    return resp.json()["error"]


def test_reattestation_period_is_the_conftest_one(ccluster):
    for node in ccluster.status["nodes"]:
        assert agent_status(node["agent_socket"])["reattest_interval_s"] == REATTEST_INTERVAL_S


# -- conclave verify --local: TCB from collateral, revocation checked, collateral age -------------------------
def test_verify_local_shows_tcb_revocation_and_collateral_age_per_node(ccluster):
    res = harness.cli(["verify", "--local", "--json"], ccluster.env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["ok"] is True
    policy = json.loads(Path(ccluster.status["manifest"]).read_text())["manifest"]["policy"]
    max_age = policy.get("max_collateral_age")
    tees = {n["node_id"]: n["tee"] for n in ccluster.status["nodes"]}
    assert sorted(tees.values()) == ["snp", "tdx", "tdx"]
    results = {n["name"]: n for n in out["nodes"]}
    assert set(results) == set(tees)
    for name, n in results.items():
        assert n["ok"] is True and n["tee"] == tees[name] and n["simulated"] is False, n
        assert n["revocation_checked"] is True, n
        age = n["collateral_age_s"]
        assert isinstance(age, (int, float)) and 0 <= age, n
        if max_age is not None:
            assert age <= max_age, (age, max_age)
        steps = {s["step"].split(".", 1)[1]: s["ok"] for s in n["steps"]}
        if n["tee"] == "tdx":
            # TCB level matched in the TCB info the client fetched, PCK checked against the PCK CRL
            assert n["claims"]["tcb_status"] == "UpToDate", n["claims"]
            assert steps.get("tdx.04.pck_revocation") is True and steps.get("tdx.13.tcb_level") is True, steps
        else:
            # AMD publishes no TCB status: the VCEK the client fetched for REPORTED_TCB, against the CRL
            assert n["claims"]["reported_tcb"], n["claims"]
            assert steps.get("snp.04.crl") is True and steps.get("snp.06.tcb") is True, steps


def test_peers_view_tcb_and_revocation_of_each_other(ccluster):
    """Each node's status names, per admitted peer, the TCB status its own verifier found."""
    tees = {n["node_id"]: n["tee"] for n in ccluster.status["nodes"]}
    for node in ccluster.status["nodes"]:
        for p in agent_status(node["agent_socket"])["peers"]:
            if p["state"] != "meshed":
                continue
            assert p["tee"] == tees[p["node_id"]]
            assert p["revocation_checked"] is True, p
            assert p["tcb_status"] == ("UpToDate" if p["tee"] == "tdx" else None), p
            assert p["tcb_grace_until"] is None, p


# -- vendors down: keep serving and re-attesting on the collateral held ----------------------------------------
def test_vendor_services_down_the_cluster_keeps_serving_and_reattesting(ccluster):
    nodes = ccluster.status["nodes"]
    wait_until(lambda: meshed_everywhere(ccluster), 3 * REATTEST_INTERVAL_S, "the cluster is whole", interval=2.0)
    before = {(n["node_id"], p["wg_public_key"]): p["reattestations"]
              for n in nodes for p in agent_status(n["agent_socket"])["peers"] if p["state"] == "meshed"}
    assert len(before) == len(nodes) * (len(nodes) - 1), before
    try:
        for kind in ("pcs", "kds"):
            assert emulator(ccluster, kind, "down") == {"ok": True}
            assert emulator(ccluster, kind, "status")["down"] is True
        down_at = time.monotonic()

        def all_moved():
            now = {(n["node_id"], p["wg_public_key"]): p for n in nodes
                   for p in agent_status(n["agent_socket"])["peers"]}
            assert all(now[k]["state"] == "meshed" for k in before), \
                [(k, now[k]["state"], now[k]["reason"]) for k in before if now[k]["state"] != "meshed"]
            return all(now[k]["reattestations"] > before[k] for k in before)
        # two periods: a round that started just before the outage does not count, the next one must
        wait_until(all_moved, 2 * REATTEST_INTERVAL_S + VERIFY_SLACK_S,
                   "every node re-attests every peer with the vendors down", interval=2.0)
        print(f"\nvendors down: every node re-attested every peer {time.monotonic() - down_at:.1f}s after the outage")
        assert "Paris" in harness.chat_answer(ccluster)
        assert public_health(ccluster) == 200
        assert cluster_status(ccluster)["health"]["status"] == "ok"
    finally:
        for kind in ("pcs", "kds"):
            emulator(ccluster, kind, "up")
    assert not emulator(ccluster, "pcs", "status")["down"] and not emulator(ccluster, "kds", "status")["down"]


# -- revoked PCK (TDX worker) and VCEK (SNP worker) ------------------------------------------------------------
def test_revoked_worker_certificates_are_evicted_within_a_period_then_readmitted(ccluster):
    st = cluster_status(ccluster)
    nodes = st["nodes"]
    by_tee = {n["tee"]: n for n in nodes[1:]}
    victims = {by_tee["tdx"]["node_id"]: "pcs", by_tee["snp"]["node_id"]: "kds"}   # PCK at Intel, VCEK at AMD
    recoveries = st["health"]["recoveries"]
    wait_until(lambda: meshed_everywhere(ccluster), 3 * REATTEST_INTERVAL_S, "the cluster is whole", interval=2.0)
    try:
        for victim, kind in victims.items():
            assert emulator(ccluster, kind, "revoke", host=victim) == {"ok": True}
            assert emulator(ccluster, kind, "status")["revoked"] == [victim]
        revoked_at = time.monotonic()

        # the head is revoked by nobody: it evicts both workers by its own re-attestations; the workers
        # evict each other (whoever re-attests first; the other may lose the tunnel first)
        watch = EvictionWatch(ccluster, [(o, v) for v in victims for o in nodes if o["node_id"] != v], "cert_revoked",
                              strict={nodes[0]["node_id"]})
        wait_until(watch, eviction_bound(), "every peer evicts the revoked hosts (cert_revoked)", interval=1.0)
        took = time.monotonic() - revoked_at
        print(f"\nrevoked PCK + VCEK: evicted by every peer {took:.1f}s after the revocation "
              f"(re-attestation period {REATTEST_INTERVAL_S}s; per observer/victim: "
              f"{ {f'{o}/{v}': round(t, 1) for (o, v), t in sorted(watch.seen.items())} })")
        # the head stops serving with a clear error, naming the stages it lacks
        health = wait_until(lambda: (h := cluster_status(ccluster)["health"])["status"] == "degraded" and h,
                            VERIFY_SLACK_S, "status reports degraded", interval=1.0)
        assert health["problems"], health
        error = chat_refused(ccluster)
        assert error["code"] == "stage_not_attested" and set(victims) <= set(error["missing"]), error
        assert public_health(ccluster) == 503
        # they stay out: a new admission attempt is refused for the same reason
        time.sleep(5)
        for victim in victims:
            for observer, records in views_of(ccluster, victim).items():
                assert records and all(p["state"] in ("evicted", "rejected") for p in records), (observer, records)
                assert any(p["reason"] == "cert_revoked" for p in records), (observer, records)
    finally:
        for victim, kind in victims.items():
            emulator(ccluster, kind, "unrevoke", host=victim)
    assert emulator(ccluster, "pcs", "status")["revoked"] == [] and emulator(ccluster, "kds", "status")["revoked"] == []
    healed_at = time.monotonic()
    wait_until(lambda: meshed_everywhere(ccluster), 3 * REATTEST_INTERVAL_S, "the unrevoked hosts are admitted again",
               interval=2.0)
    wait_serving(ccluster, recoveries + 1)
    print(f"unrevoked -> admitted and serving again in {time.monotonic() - healed_at:.1f}s")
    assert public_health(ccluster) == 200


# -- TCB recovery: every emulated TDX host OutOfDate -------------------------------------------------------------
def test_tcb_recovery_evicts_the_out_of_date_hosts_then_serving_resumes(ccluster):
    st = cluster_status(ccluster)
    nodes = st["nodes"]
    tdx_hosts = [n["node_id"] for n in nodes if n["tee"] == "tdx"]
    snp_host = next(n for n in nodes if n["tee"] == "snp")
    head, tdx_worker = nodes[0], next(n for n in nodes[1:] if n["tee"] == "tdx")
    assert head["tee"] == "tdx"
    recoveries = st["health"]["recoveries"]
    wait_until(lambda: meshed_everywhere(ccluster), 3 * REATTEST_INTERVAL_S, "the cluster is whole", interval=2.0)
    try:
        assert emulator(ccluster, "pcs", "tcb_recovery") == {"ok": True}
        recovered_at = time.monotonic()

        # the SNP worker (UpToDate) evicts both TDX hosts by its own re-attestations; the two TDX hosts
        # evict each other (whoever re-attests first; the other may lose the tunnel first)
        pairs = [(snp_host, h) for h in tdx_hosts] + [(head, tdx_worker["node_id"]), (tdx_worker, head["node_id"])]
        watch = EvictionWatch(ccluster, pairs, "tcb_not_allowed", strict={snp_host["node_id"]})
        wait_until(watch, eviction_bound(), "the OutOfDate TDX hosts are evicted (tcb_not_allowed)", interval=1.0)
        print(f"\nTCB recovery: OutOfDate TDX hosts evicted {time.monotonic() - recovered_at:.1f}s after it was "
              f"published (re-attestation period {REATTEST_INTERVAL_S}s; per observer/victim: "
              f"{ {f'{o}/{v}': round(t, 1) for (o, v), t in sorted(watch.seen.items())} })")
        error = chat_refused(ccluster)
        assert error["code"] == "stage_not_attested" and tdx_worker["node_id"] in error["missing"], error
        assert public_health(ccluster) == 503
        # the hosts see it themselves too: their own evidence no longer passes the policy
        wait_until(lambda: all(agent_status(n["agent_socket"])["own_evidence_error"] for n in nodes
                               if n["tee"] == "tdx"), REATTEST_INTERVAL_S + VERIFY_SLACK_S,
                   "the TDX hosts report their own evidence as no longer admissible", interval=2.0)
    finally:
        emulator(ccluster, "pcs", "tcb_restore")
    assert emulator(ccluster, "pcs", "status")["recoveries"] == 0
    healed_at = time.monotonic()
    wait_until(lambda: meshed_everywhere(ccluster), 3 * REATTEST_INTERVAL_S, "the TDX hosts are admitted again",
               interval=2.0)
    wait_serving(ccluster, recoveries + 1)
    print(f"TCB recovery withdrawn -> serving again in {time.monotonic() - healed_at:.1f}s")
