"""Emulated H100s in the running confidential cluster (issue 15): no stage serves without its GPUs.

The package cluster (`conclave up --local --nodes 3`, mixed TDX/SNP) gives every host one emulated
H100 (the default `--gpus 1`); the manifest's stages each ask for one H100 in CC mode and the policy
requires RIM validation. Checked here on the live cluster:
- `conclave status --json` lists each node's GPU and names the GPU test roots; every stage's GPU
  evidence is in /v1/attestation and `conclave verify --local --json` validates it against RIMs it
  fetched itself (steps nvgpu.06.rim, nvgpu.07.revocation, 06.gpus for every stage);
- one worker host's switch flipped at run time (no GPU, CC mode off, a measurement outside its RIM)
  gets that host evicted by the head at its next re-attestation with gpu_missing / gpu_cc_off /
  rim_mismatch, and re-admitted once the switch is restored. The head is asked to re-attest at once
  (status socket `reattest`); each wait is bounded by the head's own re-attestation period (its status
  `reattest_interval_s`: the latest a scheduled re-attestation would have come) plus margin.
Replay of one host's GPU evidence by another is refused at admission: test_gpu_units.py (two
provisioned hosts, the same verifier every node runs).

These tests break and heal the shared cluster (evictions): conftest runs this file after the others.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conclave.runtime.attestation.emulated import nvgpu_device as emu
from reliability.api_support import cluster_status, wait_until
from serving import harness

from .conftest import agent_status

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(1800)]

MARGIN_S = 30.0                  # the RPC and one verification (RIMs, OCSP) under load
SERVING_AGAIN_WITHIN = 600.0     # the head relaunches vLLM once the stage is back


def _reattest_period(cluster) -> float:
    return float(agent_status(cluster.status["nodes"][0]["agent_socket"])["reattest_interval_s"])


def _head_peers(cluster, node_id: str) -> list[dict]:
    st = agent_status(cluster.status["nodes"][0]["agent_socket"])
    return [p for p in st["peers"] if p["node_id"] == node_id]


def _reattest_now(cluster) -> None:
    from conclave.runtime.agent import status as agent
    assert agent.request(Path(cluster.status["nodes"][0]["agent_socket"]), {"cmd": "reattest"})["ok"]


def test_status_lists_every_nodes_gpu_and_the_gpu_test_roots(ccluster):
    st = cluster_status(ccluster)
    assert st["network"]["gpus_per_host"] == 1
    roots = Path(st["network"]["gpu_test_roots_pem"])
    assert roots.is_file() and roots.read_bytes().count(b"BEGIN CERTIFICATE") == 2   # device root, RIM root
    assert "nvidia" in st["network"]["emulators"]
    serials = set()
    for node in st["nodes"]:
        gpus = node["gpus"]
        assert [(g["gpu"], g["model"], g["emulated"], g["present"], g["cc_mode"], g["tamper_index"])
                for g in gpus] == [("gpu0", "H100", True, True, True, None)], node
        serials.add(gpus[0]["serial"])
    assert len(serials) == len(st["nodes"])
    manifest = json.loads(Path(st["manifest"]).read_text())["manifest"]
    assert all(s["gpus"] == {"count": 1, "models": ["H100"], "cc_mode": True, "ppcie": False}
               for s in manifest["stages"])
    assert manifest["policy"]["nvgpu"] == {"require_rim": True}
    assert set(manifest["policy"]["unsafe_test_roots"]) >= {"nvgpu", "nvgpu_rim"}


def test_every_stages_gpu_is_in_the_attestation_and_conclave_verify_local_checks_it(ccluster):
    import httpx
    from conclave.runtime.endpoint.bundle import parse_bundle
    root = ccluster.base_url.rsplit("/v1", 1)[0]
    bundle = parse_bundle(httpx.get(root + "/v1/attestation", params={"nonce": os.urandom(32).hex()},
                                    timeout=60, verify=ccluster.verify).json())
    names = sorted(n["node_id"] for n in ccluster.status["nodes"])
    assert sorted(n.name for n in bundle.nodes) == names
    assert all(len(n.evidence.gpus) == 1 for n in bundle.nodes), [(n.name, len(n.evidence.gpus)) for n in bundle.nodes]
    res = harness.cli(["verify", "--local", "--json"], ccluster.env, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["ok"] is True and sorted(n["name"] for n in out["nodes"]) == names
    for node in out["nodes"]:
        passed = {s["step"] for s in node["steps"] if s["ok"]}
        assert {f"{node['name']}.gpu0.nvgpu.06.rim", f"{node['name']}.gpu0.nvgpu.07.revocation",
                f"{node['name']}.06.gpus"} <= passed, node["steps"]


@pytest.mark.parametrize("switch, reason", [
    ({"present": False}, "gpu_missing"),
    ({"cc_mode": False}, "gpu_cc_off"),
    ({"tamper_index": 6}, "rim_mismatch"),
], ids=["no_gpu", "cc_off", "outside_rim"])
def test_a_worker_gpu_turning_bad_is_evicted_then_readmitted(ccluster, switch, reason):
    worker = ccluster.status["nodes"][2]
    gpu = Path(worker["gpu_device_dir"]) / "gpu0"
    node_id = worker["node_id"]
    assert any(p["state"] == "meshed" for p in _head_peers(ccluster, node_id))
    period = _reattest_period(ccluster)
    started = time.monotonic()
    try:
        emu.set_switches(gpu, **switch)
        shown = cluster_status(ccluster)["nodes"][2]["gpus"][0]   # status reads the switches live
        assert all(shown[k] == v for k, v in switch.items()), shown
        _reattest_now(ccluster)
        evicted = wait_until(lambda: [p for p in _head_peers(ccluster, node_id)
                                      if p["state"] == "evicted" and p["reason"] == reason],
                             period + MARGIN_S, f"the head evicts {node_id} ({reason})", interval=1.0)
        print(f"\n{reason}: evicted {time.monotonic() - started:.1f}s after the switch ({evicted[0]['reasons']})")
        assert not any(p["state"] == "meshed" for p in _head_peers(ccluster, node_id))
    finally:
        emu.set_switches(gpu, **emu.DEFAULT_SWITCHES)
    restored = time.monotonic()
    wait_until(lambda: any(p["state"] == "meshed" for p in _head_peers(ccluster, node_id)),
               period + MARGIN_S, f"the head re-admits {node_id} once its GPU is restored", interval=1.0)
    print(f"{reason}: re-admitted {time.monotonic() - restored:.1f}s after the restore")


def test_serving_resumes_after_the_gpu_evictions(ccluster):
    """Last of this file: the cluster serves again (the head relaunches vLLM with every stage back),
    so the tests after this file start from a whole cluster."""
    def serving():
        st = cluster_status(ccluster)
        return st if (st.get("health") or {}).get("status") == "ok" and st["phase"] == "ready" else None
    wait_until(serving, SERVING_AGAIN_WITHIN, "the cluster serves again after the GPU evictions", interval=3.0)
    assert "Paris" in harness.chat_answer(ccluster)
    res = harness.cli(["verify", "--local", "--json"], ccluster.env, check=False)
    assert res.returncode == 0 and json.loads(res.stdout)["ok"] is True, res.stdout[-2000:]
