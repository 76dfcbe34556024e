"""Pieces of the confidential path that need no cluster: trust material, node boot checks, launcher."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conclave.runtime.agent.launcher import Launcher
from conclave.runtime.attestation import sim
from conclave.runtime.manifest.document import DeploymentManifest
from conclave.runtime.local import trust as local_trust

STAGES = [("cvabc-n0", "head", (0, 10)), ("cvabc-n1", "worker", (10, 20)), ("cvabc-n2", "worker", (20, 30))]


@pytest.fixture
def trust(tmp_path):
    return local_trust.create(tmp_path / "local-abc", stages=STAGES, model_digest="ab" * 32,
                              overlay_cidr="100.64.0.0/16", rendezvous=["198.18.0.1:51822"])


def test_trust_material_is_per_cluster_signed_and_private(trust, tmp_path):
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(trust.owner_key_path) == 0o600 and mode(trust.root_key_path) == 0o600
    assert mode(trust.folder) == 0o700
    manifest = DeploymentManifest.load(trust.manifest_path, trusted_owner=trust.owner_fingerprint)
    assert manifest.policy_dict == {"production": False, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
                                    "sim": {"measurement": [local_trust.local_measurement().hex()]}}
    assert [s.node for s in manifest.stages] == [s[0] for s in STAGES] and manifest.head.node == "cvabc-n0"
    # the attester a host gets is certified by this cluster's root for the local measurement
    evidence = trust.attester("cvabc-n1").evidence(b"\x07" * 64)
    from datetime import datetime, timezone
    verified = sim.verify(sim.parse(evidence), at=datetime.now(timezone.utc), trusted_roots=[trust.root.certificate])
    assert sim.claims(sim.parse(evidence))["measurement"] == trust.measurement
    assert verified.report_data == b"\x07" * 64
    other = local_trust.create(tmp_path / "local-def", stages=STAGES, model_digest="ab" * 32,
                               overlay_cidr="100.64.0.0/16", rendezvous=[])
    assert other.owner_fingerprint != trust.owner_fingerprint            # generated per cluster
    assert other.root.cert_pem != trust.root.cert_pem
    assert local_trust.load_root(trust.folder).cert_pem == trust.root.cert_pem
    assert "key" not in repr(trust).replace("keys=<redacted>", "")


def _node(args: list[str], bundle: bytes, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conclave.runtime", "node", *args], input=bundle,
                          capture_output=True, timeout=60, env={**os.environ, **(env or {})})


def _node_args(trust, manifest: Path, fingerprint: str) -> list[str]:
    return ["--role", "worker", "--name", "cvabc-n1", "--manifest", str(manifest), "--owner-fingerprint", fingerprint,
            "--evidence", "sim", "--sim-root", str(trust.root_pem_path), "--bundle-stdin",
            "--underlay-host", "127.0.0.1", "--firewall", "none"]


def _bundle(trust) -> bytes:
    import base64
    return json.dumps({"sim_attester": base64.b64encode(trust.attester("cvabc-n1").to_secret_bytes()).decode()}).encode()


def test_node_refuses_a_manifest_with_a_bad_signature(trust, tmp_path):
    doc = json.loads(trust.manifest_path.read_text())
    doc["manifest"]["stages"][1]["layers"] = [10, 21]
    doc["manifest"]["stages"][2]["layers"] = [21, 30]
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    res = _node(_node_args(trust, tampered, trust.owner_fingerprint), _bundle(trust))
    assert res.returncode == 2 and b"signature_invalid" in res.stderr


def test_node_refuses_a_manifest_from_another_owner(trust):
    res = _node(_node_args(trust, trust.manifest_path, "00" * 32), _bundle(trust))
    assert res.returncode == 2 and b"owner_key_mismatch" in res.stderr


def test_node_refuses_to_be_given_a_policy_beside_the_manifest(trust, tmp_path):
    """The policy comes only from the signed manifest: `conclave node` has no --policy any more,
    so a policy beside the manifest is a usage error (argparse) and the node never starts."""
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps(local_trust.sim_policy(b"\x00" * 48)))
    sock = tmp_path / "s.sock"
    res = _node(_node_args(trust, trust.manifest_path, trust.owner_fingerprint)
                + ["--status-socket", str(sock), "--policy", str(policy)], _bundle(trust))
    assert res.returncode == 1 and b"--policy" in res.stderr and not sock.exists()


def test_node_refuses_to_start_without_the_signed_manifest(trust, tmp_path):
    args = _node_args(trust, trust.manifest_path, trust.owner_fingerprint)
    i = args.index("--manifest")
    res = _node(args[:i] + args[i + 2:], _bundle(trust))
    assert res.returncode == 1 and b"manifest_required" in res.stderr


def test_launcher_adds_the_token_only_to_the_child_env(tmp_path):
    token = b"\x42" * 32
    launcher = Launcher(lambda: token)
    out = tmp_path / "child.log"
    code = "import os; print('TOKEN', os.environ.get('RAY_AUTH_TOKEN'))"
    python = str(Path(sys.executable).parent / "python")
    reply = launcher.launch({"argv": [python, "-c", code], "env": {"PATH": "/usr/bin:/bin"}, "log": str(out)})
    assert reply["ok"]
    deadline = time.monotonic() + 30
    while launcher.exit_code(reply["pid"]) is None:
        launcher.reap()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert launcher.exit_code(reply["pid"]) == 0
    assert out.read_text().strip() == f"TOKEN {token.hex()}"


def test_launcher_refuses_foreign_programs_and_missing_tokens(tmp_path):
    python = str(Path(sys.executable).parent / "python")
    log = str(tmp_path / "x.log")
    assert Launcher(lambda: b"t")._allowed_program("/bin/sh") is False
    assert Launcher(lambda: b"t").launch({"argv": ["/bin/sh", "-c", "env"], "log": log})["reason"] == "launch_refused"
    assert Launcher(lambda: b"t").launch({"argv": [python, "-c", "1"], "log": "relative.log"})["reason"] == "launch_refused"
    assert Launcher(lambda: None).launch({"argv": [python, "-c", "1"], "log": log})["reason"] == "secret_missing"
    assert not Path(log).exists()
