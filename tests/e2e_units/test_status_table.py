"""`conclave status` as a table, rendered from synthetic status dicts (no cluster): every node a row
with role, owner, TEE, GPUs, layers, evidence age, TCB status and health; "-" for what is unknown."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conclave.runtime.cli.status_table import COLUMNS, age, render

NOW = 1_800_000_000.0


def _view(tmp_path: Path) -> dict:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"manifest": {"stages": [
        {"node": "n0", "owner": "alice", "role": "head", "layer_start": 0, "layer_end": 12},
        {"node": "n1", "owner": "bob", "role": "worker", "layer_start": 12, "layer_end": 24}]}}))
    return {"cluster_id": "c0ffee", "phase": "ready", "running": True, "endpoint": "https://127.0.0.1:8000/v1",
            "api_key": "sk-do-not-print", "model": {"name": "smollm2"}, "stages": 2, "network_kind": "attested",
            "manifest": str(manifest), "ca_cert": "/run/conclave/head-tls.pem",
            "health": {"status": "degraded", "problems": [{"reason": "stage_lost", "detail": "n1 evicted"}],
                       "recoveries": 2},
            "nodes": [
                {"name": "n0", "role": "head", "layers": [0, 12], "tee": "sim", "gpus": ["H200"],
                 "evidence_at": NOW - 125, "tcb_status": "UpToDate", "lifecycle": {"state": "serving"}},
                {"name": "n1", "role": "worker", "layers": [12, 24], "ray_alive": False,
                 "evidence_age_s": 7200},
            ]}


def _rows(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
    return {line.split()[0]: line.split() for line in lines[header + 1:] if line and not line.startswith(("degraded", "recovered", "error"))}


def test_every_node_is_a_row_with_its_facts(tmp_path):
    text = render(_view(tmp_path), now=NOW)
    assert text.splitlines()[0] == "cluster c0ffee: ready (running)"
    header = next(line for line in text.splitlines() if line.startswith("NODE"))
    assert header.split() == list(COLUMNS)
    rows = _rows(text)
    assert rows["n0"] == ["n0", "head", "alice", "sim", "1", "0-12", "2m", "UpToDate", "serving"]
    assert rows["n1"] == ["n1", "worker", "bob", "-", "-", "12-24", "2h", "-", "down"]
    assert "degraded [stage_lost]: n1 evicted" in text and "recovered without an operator 2 time(s)" in text
    assert "sk-do-not-print" not in text and "api key: set" in text


def test_unknown_fields_are_dashes_not_crashes():
    text = render({"nodes": [{"name": "x"}, "garbage"], "model": None, "health": None, "error": "odd"}, now=NOW)
    assert _rows(text)["x"] == ["x"] + ["-"] * (len(COLUMNS) - 1)
    assert render({}, now=NOW).endswith("no nodes yet")
    err = render({"error": {"reason": "engine_failed", "message": "boom"}}, now=NOW)
    assert err.splitlines()[-1] == "error [engine_failed]: boom"


def test_ages_read_at_a_glance():
    assert [age(s) for s in (None, -1, 5, 61, 3601, 2 * 86400)] == ["-", "-", "5s", "1m", "1h", "2d"]


def test_the_cli_prints_the_table(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    view = _view(tmp_path)
    view.update(supervisor_pid=os.getpid(), network_kind="plain-veth")   # plain: no live refresh
    (state / "cluster.json").write_text(json.dumps(view))
    conclave = Path(sys.executable).with_name("conclave")
    proc = subprocess.run([str(conclave), "status"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CONCLAVE_STATE_DIR": str(state)})
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    assert rows["n0"][:6] == ["n0", "head", "alice", "sim", "1", "0-12"]
    assert rows["n1"][-1] == "down"           # its Ray pid is not alive
