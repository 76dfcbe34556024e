"""CLI contract of `conclave model ...` and the argument checks of `conclave up|down|status`.

Runs the real CLI funnel in-process against a temporary cache and state directory; every bad
input must fail before anything is created, with a stable reason and exit code 1.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conclave.runtime import cli, netns

from .test_manifest import _write_model


@pytest.fixture()
def dirs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CONCLAVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CONCLAVE_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def run_json(capsys, *argv) -> tuple[int, dict | list]:
    code = cli.main([*argv, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_import_folder_list_show_and_idempotence(dirs, capsys):
    _write_model(dirs / "tiny")
    code, first = run_json(capsys, "model", "import", str(dirs / "tiny"))
    assert code == 0 and first["name"] == "tiny" and len(first["digest"]) == 64
    manifest_path = Path(first["manifest"])
    assert manifest_path.is_file()
    code, again = run_json(capsys, "model", "import", str(dirs / "tiny"))
    assert code == 0 and again["unchanged"] is True and again["digest"] == first["digest"]
    code, listed = run_json(capsys, "model", "list")
    assert [m["name"] for m in listed] == ["tiny"] and listed[0]["num_layers"] == 4
    code, shown = run_json(capsys, "model", "show", "tiny")
    assert shown["manifest"]["digest"] == first["digest"]
    assert set(shown["manifest"]["groups"]) >= {"layer.0", "layer.3", "embeddings"}


def test_import_errors(dirs, capsys):
    code, err = run_json(capsys, "model", "import", str(dirs / "missing"))
    assert code == 1 and err["reason"] == "bad_model_source"
    (dirs / "empty").mkdir()
    code, err = run_json(capsys, "model", "import", str(dirs / "empty"))
    assert code == 1 and err["reason"] == "bad_model_folder"
    _write_model(dirs / "tiny")
    code, err = run_json(capsys, "model", "import", str(dirs / "tiny"), "--name", "Bad Name")
    assert code == 1 and err["reason"] == "bad_model_name"
    code, err = run_json(capsys, "model", "show", "nope")
    assert code == 1 and err["reason"] == "model_not_found"


@pytest.mark.parametrize("argv,reason", [
    (["up", "--nodes", "2"], "not_local"),
    (["up", "--local", "--nodes", "0"], "bad_nodes"),
    (["up", "--local", "--nodes", "2", "--model", "nope"], "model_not_found"),
    (["up", "--local", "--nodes", "2", "--model", "tiny", "--partition", "1,2"], "bad_partition"),
    (["up", "--local", "--nodes", "2", "--model", "tiny", "--partition", "x,y"], "bad_partition"),
    (["up", "--local", "--nodes", "5", "--model", "tiny"], "bad_nodes"),
    (["up", "--local", "--model", "tiny", "--underlay-cidr", "10.0.0.1/8"], "bad_underlay_cidr"),
    (["up", "--local", "--model", "tiny", "--no-api-key", "--api-key-file", "/dev/null"], "bad_api_key"),
    (["up", "--local", "--model", "tiny", "--api-key-file", "/nonexistent/key"], "bad_api_key"),
    (["up", "--local", "--model", "tiny", "--reattest-interval", "1"], "bad_reattest_interval"),
])
def test_bad_up_arguments_fail_before_creating_anything(dirs, capsys, argv, reason):
    _write_model(dirs / "tiny")
    assert cli.main(["model", "import", str(dirs / "tiny")]) == 0
    capsys.readouterr()
    before = set(netns.list_netns())
    code, err = run_json(capsys, *argv)
    assert (code, err["reason"]) == (1, reason)
    assert set(netns.list_netns()) == before
    assert not (dirs / "state" / "cluster.json").exists()


def test_down_and_status_without_cluster(dirs, capsys):
    code, out = run_json(capsys, "status")
    assert code == 0 and out == {"running": False}
    code, out = run_json(capsys, "down")
    assert code == 0 and out["removed"] is False


def test_usage_errors_exit_1(dirs):
    with pytest.raises(SystemExit) as info:
        cli.main(["up", "--nodes", "two"])
    assert info.value.code == 1


@pytest.mark.netns
@pytest.mark.cluster  # runs `conclave up --local` (hosts, overlay, admission) until the shard check stops it
@pytest.mark.timeout(600)
def test_tampered_shard_stops_the_start_and_leaves_nothing(dirs, capsys, require_root):
    """A model whose layers do not match its manifest stops `conclave up` (exit 2,
    model_shard_mismatch): the model owner's per-stage sealing checks every stage's layers before
    it seals anything, so no node ever gets a shard of it, Ray and the engine never start, and the
    failed start is torn down completely. (A tampered *sealed* shard stops that node on its own:
    tests/confidential/test_faults.py.)"""
    from .harness import cli as run_cli, free_port
    from .test_manifest import _flip_byte_in
    import os
    import subprocess
    _write_model(dirs / "tiny")
    assert cli.main(["model", "import", str(dirs / "tiny")]) == 0
    _flip_byte_in(dirs / "tiny", "model.layers.3.self_attn.q_proj.weight")

    def ours() -> tuple[set, set, set]:
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        return ({n for n in netns.list_netns() if n.startswith("cv")},
                {line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if ": cv" in line},
                {p.name for p in Path("/tmp").glob("cv*")})

    before = ours()
    res = run_cli(["up", "--local", "--nodes", "2", "--model", "tiny", "--port", str(free_port()), "--detach",
                   "--json"], dict(os.environ), timeout=500, check=False)
    assert res.returncode == 2, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["reason"] == "model_shard_mismatch"
    assert "layer.3" in json.loads(res.stdout.strip().splitlines()[-1])["error"]   # the tampered stage's layer
    assert "ray: starting" not in res.stderr and "engine: launching" not in res.stderr
    assert ours() == before
    assert not (dirs / "state" / "cluster.json").exists()
