"""`conclave env` (real CLI) from a status file the test writes, and the official openai client
configured only by its output against the head front (chat, completion, streaming); also
`conclave receipt verify --local`, which takes its trust from the same status file."""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import textwrap

import httpx
import pytest

from conclave.runtime.cli.env import LocalCluster, client_env, local_cluster, render

from front_support import API_KEY, CONCLAVE, run_cli

CLIENT = textwrap.dedent("""
    import json, openai
    client = openai.OpenAI(max_retries=0, timeout=10)          # everything from the environment
    chat = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}])
    text = client.completions.create(model="smollm2", prompt="The capital of France is").choices[0].text
    stream = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
    print(json.dumps({"chat": chat.choices[0].message.content, "completion": text, "stream": stream}))
""")


def _write_state(folder, front, deployment, files, **over) -> None:
    man, root = files
    state = {"cluster_id": "abc123", "phase": "ready", "supervisor_pid": os.getpid(),
             "endpoint": front.url + "/v1", "api_key": API_KEY, "ca_cert": str(front.cert_path),
             "manifest": str(man), "network_kind": "attested",
             "network": {"manifest": str(man), "sim_root": str(root),
                         "owner_fingerprint": deployment.manifest.owner_fingerprint}}
    state.update(over)
    (folder / "cluster.json").write_text(json.dumps(state))


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    folder = tmp_path / "state"
    folder.mkdir()
    monkeypatch.setenv("CONCLAVE_STATE_DIR", str(folder))
    return folder


def _bare_env(extra: dict) -> dict:
    """No OPENAI_* / SSL_* from the test runner: only what `conclave env` printed."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "SSL_", "REQUESTS_", "CURL_"))}
    env.update(extra)
    return env


def test_openai_client_configured_only_by_conclave_env(make_front, deployment, files, state_dir):
    front = make_front()
    _write_state(state_dir, front, deployment, files)
    code, out, err = run_cli("env", "--shell", "json")
    assert code == 0, err
    assert out == {"OPENAI_BASE_URL": front.url + "/v1", "OPENAI_API_KEY": API_KEY,
                   "SSL_CERT_FILE": str(front.cert_path), "REQUESTS_CA_BUNDLE": str(front.cert_path),
                   "CURL_CA_BUNDLE": str(front.cert_path)}
    proc = subprocess.run([sys.executable, "-c", CLIENT], env=_bare_env(out), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"chat": "The capital of France is Paris.", "completion": " Paris.",
                                       "stream": "The capital of France is Paris."}


def test_eval_in_bash_sets_the_same_environment(make_front, deployment, files, state_dir):
    front = make_front()
    _write_state(state_dir, front, deployment, files)
    script = f'eval "$({CONCLAVE} env)" && exec {sys.executable} -c "$CLIENT"'
    proc = subprocess.run(["bash", "-c", script], env=_bare_env({"CLIENT": CLIENT}), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["chat"] == "The capital of France is Paris."


def test_no_cluster_or_not_ready_is_a_clear_error(state_dir, tmp_path):
    code, out, err = run_cli("env")
    assert code == 3 and "[no_cluster]" in err and "conclave up --local" in err
    code, out, _ = run_cli("env", "--shell", "json")
    assert code == 3 and out["reason"] == "no_cluster"
    (state_dir / "cluster.json").write_text(json.dumps({"phase": "launching", "supervisor_pid": os.getpid()}))
    code, out, _ = run_cli("env", "--shell", "json")
    assert code == 3 and out["reason"] == "cluster_not_ready"
    (state_dir / "cluster.json").write_text(json.dumps({"phase": "ready", "endpoint": "http://x/v1",
                                                        "supervisor_pid": 2 ** 22 + 7}))
    code, out, _ = run_cli("env", "--shell", "json")
    assert code == 3 and out["reason"] == "no_cluster"        # its supervisor is gone


def test_shell_syntaxes_quote_values_and_plain_clusters_have_no_cert():
    cluster = LocalCluster("http://127.0.0.1:8000/v1", None, None, None, None, None)
    env = client_env(cluster)
    assert env == {"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1", "OPENAI_API_KEY": "none"}
    tricky = {"OPENAI_API_KEY": "a'b $(rm -rf /)"}
    assert render(tricky, "bash") == "export OPENAI_API_KEY='a'\"'\"'b $(rm -rf /)'"
    assert render(tricky, "fish").startswith("set -gx OPENAI_API_KEY 'a'")
    assert json.loads(render(tricky, "json")) == tricky
    secret = LocalCluster("https://h/v1", "sk-secret", "/c.pem", "/m.json", "/r.pem", "ff")
    assert "sk-secret" not in repr(secret) and secret.front_url == "https://h"


def test_local_cluster_reads_the_attested_trust(make_front, deployment, files, state_dir):
    front = make_front()
    _write_state(state_dir, front, deployment, files)
    cluster = local_cluster()
    assert cluster.front_url == front.url and cluster.sim_root == str(files[1])
    assert cluster.owner_fingerprint == deployment.manifest.owner_fingerprint


def test_receipt_verify_local_needs_no_flags(make_front, deployment, files, state_dir, tmp_path):
    front = make_front()
    _write_state(state_dir, front, deployment, files)
    body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}).encode()
    r = httpx.post(front.url + "/v1/chat/completions", content=body, timeout=10,
                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
                   verify=ssl.create_default_context(cafile=str(front.cert_path)))
    (tmp_path / "req").write_bytes(body)
    (tmp_path / "resp").write_bytes(r.content)
    (tmp_path / "rec").write_text(r.headers["Conclave-Receipt"])
    args = ["receipt", "verify", "--request", str(tmp_path / "req"), "--response", str(tmp_path / "resp"),
            "--receipt", str(tmp_path / "rec"), "--local"]
    code, out, err = run_cli(*args, "--json")
    assert code == 0 and out["ok"] and out["key_attested"], err
    text = subprocess.run([str(CONCLAVE), *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))
    assert text.returncode == 0 and text.stdout.startswith("receipt OK"), text.stderr
    assert "node-1" in text.stdout
