"""The full confidential path of `conclave up --local --nodes 3` (issue 5), end to end.

One session cluster (conftest.ccluster). Every check here observes the real processes,
namespaces, nftables rules and agents that the CLI started.
"""
from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving import harness

from .conftest import agent_status, in_netns, listening_tcp_ports, state_of
from .inner import in_inner
from .outsider import Outsider

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.timeout(1800)]

GOLDEN = json.loads((Path(__file__).parent / "golden_plain_n3.json").read_text())
ADMISSION, RENDEZVOUS = 51821, 51822


# -- serving over the attested overlay ----------------------------------------------------------------
def test_answers_paris_over_the_attested_overlay(ccluster):
    assert "Paris" in harness.chat_answer(ccluster)


def test_greedy_tokens_identical_to_the_plain_cluster(ccluster):
    assert GOLDEN["prompts"] == list(harness.GOLDEN_PROMPTS) and GOLDEN["max_tokens"] == harness.GOLDEN_MAX_TOKENS
    assert harness.greedy_token_ids(ccluster) == GOLDEN["ids"]


def test_status_describes_the_confidential_cluster(ccluster):
    status = json.loads(harness.cli(["status", "--json"], ccluster.env).stdout)
    assert status["running"] and status["phase"] == "ready" and status["network_kind"] == "attested"
    manifest = Path(status["manifest"])
    assert manifest.is_file()
    verified = harness.cli(["manifest", "verify", str(manifest), "--owner-fingerprint",
                            status["network"]["owner_fingerprint"], "--json"], ccluster.env)
    assert json.loads(verified.stdout)["ok"] is True
    content = json.loads(manifest.read_text())["manifest"]
    # emulated hardware (the default): TDX, SNP, TDX, one emulated H100 each (RIMs required); test roots
    # only through unsafe_test_roots, otherwise as strict as production (revocation, collateral age, code identity)
    policy = content["policy"]
    assert policy["production"] is False and policy["allowed_tee"] == ["snp", "tdx", "nvgpu"]
    assert set(policy["unsafe_test_roots"]) == {"snp", "tdx", "nvgpu", "nvgpu_rim"}
    assert policy["require_revocation_check"] is True and policy["nvgpu"] == {"require_rim": True}
    assert policy["tdx"]["mr_td"] == [status["network"]["measurement"]]
    assert policy["snp"]["measurement"] == [status["network"]["measurement"]]
    assert [n["tee"] for n in status["nodes"]] == ["tdx", "snp", "tdx"]
    assert [s["role"] for s in content["stages"]] == ["head", "worker", "worker"]
    assert content["model_digest"] == status["model"]["digest"]
    for node in status["nodes"]:
        assert {"name", "role", "netns", "underlay_ip", "overlay_ip", "admission_port"} <= set(node)
        assert node["overlay_ip"].startswith("100.64.") and node["admission_port"] == ADMISSION
        assert node["cluster_ip"] == node["overlay_ip"]      # Ray, gloo and vLLM run on the overlay
        assert node["shard_verified"] is True
        shard = node["shard"]   # sealed per stage, unsealed and verified by the node itself
        assert shard["sealed"] is True and shard["verified"] is True and shard["layers"] == node["layers"]
        assert len(shard["key_id"]) == 32 and len(shard["digest"]) == 64
        assert node["state"] == ("serving" if node["role"] == "head" else "ray_joined"), node.get("lifecycle")
        # the overlay address lives in the node's inner namespace (lo + WireGuard only), not the host's
        addrs = in_inner(node, ["ip", "-4", "-o", "addr", "show", node["wg_ifname"]]).stdout
        assert node["overlay_ip"] in addrs
        assert node["overlay_ip"] not in in_netns(node["netns"], ["ip", "-4", "-o", "addr"]).stdout
    keys = [n["shard"]["key_id"] for n in status["nodes"]]
    assert len(set(keys)) == len(keys), "one key per stage"
    layout = json.loads((Path(status["model"]["sealed"]["shards"]) / "stages.json").read_text())
    assert [s["digest"] for s in layout["stages"]] == [n["shard"]["digest"] for n in status["nodes"]]
    assert [s["key_id"] for s in layout["stages"]] == keys
    engine = Path(f"/proc/{status['engine_pid']}/cmdline").read_bytes().split(b"\0")
    assert engine[engine.index(b"--host") + 1] == b"127.0.0.1"   # vLLM only behind the head's TLS front
    owner_key = Path(status["network"]["trust_dir"]) / "owner.key"
    assert stat.S_IMODE(owner_key.stat().st_mode) == 0o600


def test_every_agent_meshed_with_every_other_and_ray_runs_on_the_overlay(ccluster):
    nodes = ccluster.status["nodes"]
    for node in nodes:
        st = agent_status(node["agent_socket"])
        assert st["firewall"] == "nft" and st["device"] in ("wireguard-go", "kernel")
        peers = {p["node_id"]: p for p in st["peers"]}
        others = {n["node_id"] for n in nodes} - {node["node_id"]}
        assert others <= set(peers) and all(peers[o]["state"] == "meshed" for o in others)
        if node["role"] == "worker":
            assert st["secrets_received"]["ray_token"]["from"] == nodes[0]["node_id"]
        ray_cmd = Path(f"/proc/{node['ray_pid']}/cmdline").read_bytes().split(b"\0")
        assert ray_cmd[ray_cmd.index(b"--node-ip-address") + 1].decode() == node["overlay_ip"]
        env = dict(e.split(b"=", 1) for e in Path(f"/proc/{node['ray_pid']}/environ").read_bytes().split(b"\0") if b"=" in e)
        assert env[b"GLOO_SOCKET_IFNAME"].decode() == node["wg_ifname"]
        assert env[b"VLLM_HOST_IP"].decode() == node["overlay_ip"]


# -- a host with bad evidence ----------------------------------------------------------------------------
def test_impostor_of_a_stage_is_never_admitted_and_gets_no_secret(ccluster, tmp_path):
    """A fourth host running the same code claims a worker's stage (its name, role and the real
    manifest), with its own simulated, wrong-measurement evidence and no enrolment by that stage's
    owner: every node refuses its stage claim (owner_not_enrolled, checked before any evidence), the
    real stage stays meshed, the impostor gets no Ray token, no tunnel and no shard key. Enrolled
    rogues with a wrong measurement or key: tests/overlay/test_rogues_netns.py."""
    outsider = Outsider(ccluster.status)
    nodes = ccluster.status["nodes"]
    try:
        sock = outsider.start_bad_node(ccluster.status, tmp_path)
        deadline = time.monotonic() + 60
        while not sock.exists() or not agent_status(str(sock)).get("wg_public_key"):
            assert time.monotonic() < deadline, "the impostor did not start"
            time.sleep(1)
        key = agent_status(str(sock))["wg_public_key"]

        def records(node):
            return [p for p in agent_status(node["agent_socket"])["peers"] if p["wg_public_key"] == key]
        while True:   # until every other cluster agent has tried (and refused) the impostor
            seen = [(records(n) or [None])[0] for n in nodes if n["node_id"] != outsider.stage]
            if all(p is not None and p.get("reason") for p in seen):
                break
            assert time.monotonic() < deadline, f"the cluster never tried the impostor: {seen}"
            time.sleep(1)
        time.sleep(5)  # a few more admission rounds: it must stay out
        for node in nodes:
            if node["node_id"] == outsider.stage:
                continue
            for p in records(node):
                assert p["state"] == "rejected" and p["reason"] == "owner_not_enrolled", p
            real = [p for p in agent_status(node["agent_socket"])["peers"]
                    if p["node_id"] == outsider.stage and p["state"] == "meshed"]
            assert real and real[0]["wg_public_key"] != key     # the real stage keeps its place
        intruder = agent_status(str(sock))
        assert intruder["secrets_received"] == {}               # no Ray token
        assert intruder["device_peers"] == []                   # no WireGuard tunnel to anyone
        assert (intruder["lifecycle"] or {}).get("shard", {}).get("verified") is not True   # no shard key
        for node in nodes:
            assert key not in agent_status(node["agent_socket"])["device_peers"]
        status = json.loads(harness.cli(["status", "--json"], ccluster.env).stdout)
        assert [n["state"] for n in status["nodes"]] == ["serving", "ray_joined", "ray_joined"]   # undisturbed
        assert "Paris" in harness.chat_answer(ccluster)
    finally:
        outsider.close()


# -- the underlay is closed ----------------------------------------------------------------------------
KNOWN_PORTS = {6379, 8000, 8265, 9469, 10001, 52365, 29500}


def test_from_an_unadmitted_namespace_only_admission_rendezvous_and_the_api_answer(ccluster):
    nodes = ccluster.status["nodes"]
    inner = {n["name"]: {int(l.split()[3].rsplit(":", 1)[1]) for l in in_inner(n, ["ss", "-ltnH"]).stdout.splitlines()
                         if len(l.split()) >= 4} for n in nodes}
    # The check is not empty: Ray's GCS, raylets and workers really listen inside the hosts (in each
    # node's inner namespace; vLLM on a unix socket there).
    assert 6379 in inner["n0"]
    assert all(len(ports) >= 5 for ports in inner.values()), inner   # raylet, object manager, workers, agents
    listening = {n["name"]: listening_tcp_ports(n["netns"]) | inner[n["name"]] for n in nodes}
    front = state_of(ccluster).get("front")
    public_port = int(front["port"]) if front else 8000   # the head's API (TLS front, else vLLM)
    allowed = {(nodes[0]["underlay_ip"], RENDEZVOUS), (nodes[0]["underlay_ip"], public_port)}
    allowed |= {(n["underlay_ip"], ADMISSION) for n in nodes}
    targets = sorted({(n["underlay_ip"], p) for n in nodes for p in listening[n["name"]] | KNOWN_PORTS})
    outsider = Outsider(ccluster.status, index=101)
    try:
        answered = outsider.scan(targets)
    finally:
        outsider.close()
    assert answered == allowed, f"unexpected open underlay ports: {sorted(answered - allowed)}"
    for node in nodes:   # the rules that make it so, per host namespace
        rules = in_netns(node["netns"], ["nft", "list", "ruleset"]).stdout
        assert f"udp dport {ccluster.status['network']['wireguard_port']} accept" in rules
        assert re.search(r"\n\s*drop\n", rules)


# -- no secret where it does not belong -----------------------------------------------------------------
def _secrets(cluster) -> dict[str, list[bytes]]:
    st = state_of(cluster)
    nodes = cluster.status["nodes"]
    out: dict[str, list[bytes]] = {}
    environ = Path(f"/proc/{nodes[0]['ray_pid']}/environ").read_bytes().split(b"\0")
    token = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"RAY_AUTH_TOKEN=")]
    assert token and len(token[0]) == 64, "the head's Ray node runs without its token"
    out["ray_token"] = [token[0]]
    out["api_key"] = [st["api_key"].encode()]
    for node in nodes:
        ifname = node["wg_ifname"]
        priv = subprocess.run(["wg", "show", ifname, "private-key"], capture_output=True, text=True,
                              check=True).stdout.strip()
        out[f"wg_private_{node['name']}"] = [priv.encode(), base64.b64decode(priv).hex().encode()]
        for line in subprocess.run(["wg", "show", ifname, "preshared-keys"], capture_output=True, text=True,
                                   check=True).stdout.splitlines():
            psk = line.split()[1]
            if psk != "(none)":
                out.setdefault(f"psk_{node['name']}", []).extend([psk.encode(), base64.b64decode(psk).hex().encode()])
    trust = Path(cluster.status["network"]["trust_dir"])
    owner_pem = (trust / "owner.key").read_text()
    out["owner_key"] = ["".join(l for l in owner_pem.splitlines() if "-----" not in l).encode()]
    out["sim_root_key"] = [json.loads((trust / "sim-root.key").read_text())["key"].encode()]
    assert any(k.startswith("psk_") for k in out), "no pre-shared keys found: the overlay is not meshed"
    return out


def test_no_secret_in_argv_logs_or_readable_files(ccluster):
    found = []
    secrets = _secrets(ccluster)
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        found += [f"cmdline of pid {pid}: {name}" for name, vals in secrets.items() if any(v in cmdline for v in vals)]
    roots = [Path(ccluster.status["run_dir"]), ccluster.state_file.parent]
    files = 0
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077 == 0 and root == ccluster.state_file.parent:
                continue   # 0600 files in the state dir may hold secrets (state file, owner key, sim root)
            files += 1
            data = path.read_bytes()
            found += [f"{path}: {name}" for name, vals in secrets.items() if any(v in data for v in vals)]
    assert files > 10, "no log files found: the scan would be empty"
    assert list((Path(ccluster.status["run_dir"]) / "logs").glob("agent-*.log"))
    assert not found, found


# -- the head's public API: TLS bound into the head's evidence ---------------------------------------------
def _verify_args(cluster, manifest: str, fingerprint: str) -> list[str]:
    st = cluster.status
    emulators = st["network"]["emulators"]      # the client fetches its own collateral (emulated PCS/KDS/NVIDIA)
    nvidia = (["--rim-url", emulators["nvidia"]["url"], "--nvidia-ocsp-url", emulators["nvidia"]["ocsp_url"]]
              if "nvidia" in emulators else [])
    return ["verify", f"https://127.0.0.1:{st['endpoint'].split(':')[2].split('/')[0]}", "--manifest", manifest,
            "--owner-fingerprint", fingerprint, "--ca", st["ca_cert"], "--pcs-url", emulators["pcs"]["url"],
            "--pcs-root-crl-url", emulators["pcs"]["url"] + "/IntelSGXRootCA.der", "--kds-url",
            emulators["kds"]["url"], *nvidia, "--json"]


def test_endpoint_is_tls_and_conclave_verify_accepts_it(ccluster):
    st = ccluster.status
    assert st["endpoint"].startswith("https://127.0.0.1:") and Path(st["ca_cert"]).is_file()
    res = harness.cli(_verify_args(ccluster, st["manifest"], st["network"]["owner_fingerprint"]), ccluster.env,
                      check=False)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["ok"] is True
    names = sorted(n["name"] for n in out["nodes"])
    assert names == sorted(n["node_id"] for n in st["nodes"])


def test_conclave_verify_rejects_another_manifest(ccluster, tmp_path):
    """A manifest the cluster does not run (same content but another owner and creation time)."""
    from conclave.runtime.manifest import document as doc
    from conclave.runtime.manifest import ed25519_keys as keys
    st = ccluster.status
    content = dict(json.loads(Path(st["manifest"]).read_text())["manifest"])
    content["created"] = "2020-01-01T00:00:00Z"
    other_key = keys.generate_key_file(tmp_path / "other-owner.key")
    other = tmp_path / "other-manifest.json"
    other.write_bytes(doc.sign_content(content, other_key))
    res = harness.cli(_verify_args(ccluster, str(other), keys.fingerprint(other_key.public_key())), ccluster.env,
                      check=False)
    assert res.returncode == 2, res.stdout + res.stderr[-2000:]
    assert json.loads(res.stdout)["reason"] == "manifest_mismatch"


def test_conclave_proxy_forwards_a_chat_request(ccluster, tmp_path):
    import httpx
    st = ccluster.status
    port = harness.free_port()
    args = _verify_args(ccluster, st["manifest"], st["network"]["owner_fingerprint"])
    upstream = args[1]
    proxy = subprocess.Popen([*harness.CONCLAVE, "proxy", "--upstream", upstream, *args[2:-1],
                              "--listen", f"127.0.0.1:{port}"], env=ccluster.env, stdout=subprocess.DEVNULL,
                             stderr=open(tmp_path / "proxy.log", "wb"), start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                                  headers={"Authorization": f"Bearer {st['api_key']}"},
                                  json={"model": st["model"]["name"], "temperature": 0, "max_tokens": 24,
                                        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
                break
            except httpx.TransportError:
                assert proxy.poll() is None, (tmp_path / "proxy.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the proxy never listened"
                time.sleep(0.5)
        assert resp.status_code == 200, resp.text
        assert "Paris" in resp.json()["choices"][0]["message"]["content"]
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(5)


def test_front_requires_the_api_key_beyond_health(ccluster):
    """The head's front holds the API key (its agent's stdin bundle): /metrics and /version need it,
    /health does not; vLLM's extra routes are not reachable at all."""
    import httpx
    root = ccluster.base_url.rsplit("/v1", 1)[0]

    def get(path: str, key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(root + path, headers=headers, timeout=30, verify=ccluster.verify).status_code

    for path in ("/metrics", "/version"):
        assert get(path, None) == 401 and get(path, "wrong") == 401 and get(path, ccluster.api_key) == 200, path
    assert get("/health", None) == 200
    assert get("/invocations", ccluster.api_key) == 404 and get("/tokenize", None) == 401


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_each_host_runs_its_own_ray_and_the_head_its_engine(ccluster):
    """Every host is a bare `conclave node`: its Ray node (and on the head, vLLM) is that node's child,
    not the local orchestrator's; the orchestrator only started the node processes."""
    status = json.loads(harness.cli(["status", "--json"], ccluster.env).stdout)
    groups = {g["name"]: int(g["pid"]) for g in state_of(ccluster)["groups"]}
    for node in status["nodes"]:
        node_pid = groups[f"agent-{node['name']}"]
        cmdline = Path(f"/proc/{node_pid}/cmdline").read_bytes().split(b"\0")
        assert b"node" in cmdline and b"--allow-launch" not in cmdline   # nobody launches on its behalf
        assert _parent(int(node["ray_pid"])) == node_pid, node
        assert b"ray" in Path(f"/proc/{node['ray_pid']}/cmdline").read_bytes()
    assert _parent(int(status["engine_pid"])) == groups[f"agent-{status['nodes'][0]['name']}"]
    assert status["orchestrator_pid"] and status["orchestrator_pid"] not in {
        _parent(int(n["ray_pid"])) for n in status["nodes"]}


def test_stage_statements_are_signed_by_each_worker(ccluster):
    """The head learns each worker's shard result from a statement the worker signed with the key its
    evidence binds (Ping replies); what the head holds names that worker's stage and shard digest."""
    status = json.loads(harness.cli(["status", "--json"], ccluster.env).stdout)
    head = agent_status(status["nodes"][0]["agent_socket"])
    for node in status["nodes"][1:]:
        meshed = [p for p in head["peers"] if p["node_id"] == node["node_id"] and p["state"] == "meshed"]
        assert meshed, node["node_id"]
        statement = meshed[0]["stage_statement"]
        assert statement and statement["stage"] == node["node_id"], meshed[0]
        assert statement["shard"]["digest"] == node["shard"]["digest"] and statement["shard"]["verified"] is True
        assert statement["wg_public_key"] == meshed[0]["wg_public_key"]


def test_run_report_lists_each_stage_shard_as_that_stage_signed_it(ccluster):
    """/v1/report carries every worker's shard statement, signed by the statement key that worker's
    evidence binds (its entry in /v1/attestation); the head's own stage is covered by the report's
    signature (the head's attested report key)."""
    import httpx
    from conclave.runtime.endpoint.bundle import parse_bundle
    from conclave.runtime.report.document import check_stage_statements, verify_report
    root = ccluster.base_url.rsplit("/v1", 1)[0]
    bundle = parse_bundle(httpx.get(root + "/v1/attestation", params={"nonce": os.urandom(32).hex()},
                                    timeout=60, verify=ccluster.verify).json())
    report = verify_report(httpx.get(root + "/v1/report", timeout=30, verify=ccluster.verify).content).report
    workers = [n for n in bundle.nodes if n.role == "worker"]
    keys = {n.name: n.inputs.extra.get("statement_key") for n in workers}
    assert workers and all(len(k or b"") == 32 for k in keys.values()), keys
    worker_report = type(report)(report.manifest_digest, report.engine_digest, report.model_digest,
                                 report.started_at, tuple(s for s in report.stages if s.role == "worker"))
    assert check_stage_statements(worker_report, keys) == []
    status = json.loads(harness.cli(["status", "--json"], ccluster.env).stdout)
    digests = {n["node_id"]: n["shard"]["digest"] for n in status["nodes"]}
    assert {s.node: s.shard_sha256 for s in report.stages} == digests
    other = next(iter(keys))                   # a statement checked under another stage's key fails
    swapped = {name: keys[other] for name in keys}
    assert check_stage_statements(worker_report, swapped) == [n for n in keys if n != other]
