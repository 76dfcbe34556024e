"""`conclave verify` and `conclave proxy` against an in-process HTTPS head on 127.0.0.1."""
from __future__ import annotations

import http.client
import json
import time

import pytest

from conclave.runtime.cli import main
from conclave.runtime.endpoint.client import verify_endpoint
from conclave.runtime.endpoint.tls import generate_head_identity
from conclave.runtime.endpoint.proxy import AttestedProxy, ThreadedProxy
from conclave.runtime.manifest import verify_bytes

from e2e_support import BAD_MEASUREMENT, make_manifest_bytes


@pytest.fixture
def files(tmp_path, deployment):
    man, root = tmp_path / "manifest.json", tmp_path / "sim-root.pem"
    man.write_bytes(deployment.manifest_bytes)
    root.write_bytes(deployment.root.cert_pem)
    return man, root


def _verify_cli(capsys, deployment, url, man, root, *extra) -> tuple[int, dict]:
    """`conclave verify --json`, pinned to the deployment owner unless `extra` pins otherwise."""
    pinned = any(a.startswith(("--owner-", "--unsafe-unpinned")) for a in extra)
    pin = () if pinned else ("--owner-fingerprint", deployment.manifest.owner_fingerprint)
    rc = main(["verify", url, "--manifest", str(man), "--sim-root", str(root), "--timeout", "10",
               "--json", *pin, *extra])
    return rc, json.loads(capsys.readouterr().out)


def test_verify_accepts_good_head(https_head, files, capsys, deployment):
    head = https_head()
    man, root = files
    rc, out = _verify_cli(capsys, deployment, head.url, man, root,
                          "--owner-fingerprint", deployment.manifest.owner_fingerprint)
    assert rc == 0, out
    assert out["ok"] and out["reason"] is None and out["tee"] == "sim"
    assert {"ok", "tee", "reason", "claims", "violations", "steps", "nodes"} <= set(out)
    assert out["tls"]["spki_sha256"] == head.certs["a"][1].hex()
    assert out["steps"][0] == {"step": "endpoint.00.fetch", "ok": True}


def test_verify_rejects_wrong_manifest(https_head, files, capsys, deployment, tmp_path):
    head = https_head()
    _, root = files
    other = tmp_path / "other.json"
    other.write_bytes(make_manifest_bytes(deployment.owner_key, model_digest="99" * 32))
    rc, out = _verify_cli(capsys, deployment, head.url, other, root)
    assert (rc, out["reason"]) == (2, "manifest_mismatch")


def test_verify_rejects_swapped_tls_key(https_head, files, capsys, deployment):
    head = https_head(bind_tls="a", serve_tls="b")   # evidence binds key A, server presents key B
    man, root = files
    rc, out = _verify_cli(capsys, deployment, head.url, man, root)
    assert (rc, out["reason"]) == (2, "tls_key_mismatch")


def test_verify_rejects_bad_evidence_with_policy_exit(https_head, files, capsys, deployment):
    bad = deployment.root.issue_attester("node-0", measurement=BAD_MEASUREMENT)
    head = https_head(head_attester=bad)
    man, root = files
    rc, out = _verify_cli(capsys, deployment, head.url, man, root)
    assert (rc, out["reason"]) == (4, "measurement_mismatch")
    assert out["violations"] and out["violations"][0]["node"] == "node-0"


def test_verify_with_ca_checks_pki_too(https_head, files, capsys, deployment):
    head = https_head()
    man, root = files
    rc, out = _verify_cli(capsys, deployment, head.url, man, root, "--ca", str(head.certs["a"][0]))
    assert rc == 0, out
    rc, out = _verify_cli(capsys, deployment, head.url, man, root, "--ca", str(head.certs["b"][0]))
    assert (rc, out["reason"]) == (3, "endpoint_unreachable")


def test_head_identity_repr_and_key_file_removed(tmp_path):
    ident = generate_head_identity(["127.0.0.1"])
    assert "PRIVATE" not in repr(ident) and ident.spki_sha256.hex() in repr(ident)
    ident.server_context(tmp_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_verify_unreachable_and_plain_http(files, capsys, deployment):
    man, root = files
    rc, out = _verify_cli(capsys, deployment, "https://127.0.0.1:9", man, root)
    assert (rc, out["reason"]) == (3, "endpoint_unreachable")
    assert main(["verify", "http://127.0.0.1:9", "--manifest", str(man), "--json",
                 "--owner-fingerprint", deployment.manifest.owner_fingerprint]) == 1
    capsys.readouterr()


def _request(url: str, method: str, path: str, body: dict | None = None):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def test_proxy_forwards_only_while_verified(https_head, deployment):
    head = https_head()
    manifest = verify_bytes(deployment.manifest_bytes, trusted_owner=deployment.manifest.owner_fingerprint)
    proxy = AttestedProxy(head.url, manifest, trusted_roots=[deployment.root.certificate],
                          reverify_interval=0.5, timeout=5)
    with ThreadedProxy(proxy) as tp:
        status, _, body = _request(tp.url, "GET", "/v1/models")
        assert status == 200 and json.loads(body)["data"][0]["id"] == "smollm2"
        status, ctype, body = _request(tp.url, "POST", "/v1/chat/completions",
                                       {"model": "smollm2", "stream": True,
                                        "messages": [{"role": "user", "content": "capital?"}]})
        assert status == 200 and ctype.startswith("text/event-stream")
        events = [line for line in body.decode().split("\n\n") if line]
        assert events[-1] == "data: [DONE]" and "conclave_receipt" in events[-2]   # checked by the proxy
        text = "".join(json.loads(e[len("data: "):])["choices"][0]["delta"]["content"] for e in events[:-2])
        assert text == "The capital is Paris."
        forwarded = len(head.requests)

        # the head starts presenting evidence the policy refuses -> 503 after the re-verify period
        bad = deployment.root.issue_attester("node-0", measurement=BAD_MEASUREMENT)
        head.builder = deployment.builder(head.certs["a"][1], head_attester=bad)
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            try:
                status, _, body = _request(tp.url, "GET", "/v1/models")
            except (http.client.IncompleteRead, http.client.RemoteDisconnected):
                continue  # a response in flight when verification failed is cut, as it should be
            if status == 503:
                break
            time.sleep(0.1)
        assert status == 503
        err = json.loads(body)["error"]
        assert err["code"] == "measurement_mismatch"
        before = len(head.requests)
        status, _, body = _request(tp.url, "POST", "/v1/chat/completions", {"stream": False})
        assert status == 503 and len(head.requests) == before  # nothing reached the head
        status, _, body = _request(tp.url, "GET", "/conclave/status")
        assert status == 503 and json.loads(body)["reason"] == "measurement_mismatch"
        assert forwarded >= 2


def test_proxy_refuses_from_the_start_when_unverified(https_head, deployment):
    head = https_head(bind_tls="a", serve_tls="b")
    proxy = AttestedProxy(head.url, deployment.manifest, trusted_roots=[deployment.root.certificate],
                          reverify_interval=30, timeout=5)
    with ThreadedProxy(proxy) as tp:
        status, _, body = _request(tp.url, "GET", "/v1/models")
        assert status == 503 and json.loads(body)["error"]["code"] == "tls_key_mismatch"
        assert head.requests == []


def test_proxy_pins_the_verified_certificate(https_head, deployment):
    """If the upstream's certificate changes after verification, forwarding stops at once."""
    head = https_head()
    proxy = AttestedProxy(head.url, deployment.manifest, trusted_roots=[deployment.root.certificate],
                          reverify_interval=30, timeout=5)
    with ThreadedProxy(proxy) as tp:
        assert _request(tp.url, "GET", "/v1/models")[0] == 200
        real_sha = proxy.state.cert_sha256
        from dataclasses import replace
        proxy.state = replace(proxy.state, cert_sha256=b"\x00" * 32)  # as if another cert were pinned
        status, _, body = _request(tp.url, "GET", "/v1/models")
        assert status == 503 and json.loads(body)["error"]["code"] in ("tls_key_mismatch",)
        assert real_sha != b"\x00" * 32


def test_verify_endpoint_api(https_head, deployment):
    head = https_head()
    v = verify_endpoint(head.url, manifest=deployment.manifest, trusted_roots=[deployment.root.certificate],
                        timeout=10)
    assert v.ok and v.fetched.tls_spki_sha256 == head.certs["a"][1]


def test_proxy_cuts_a_stream_when_verification_stops_holding(https_head, deployment):
    from dataclasses import replace
    head = https_head()
    proxy = AttestedProxy(head.url, deployment.manifest, trusted_roots=[deployment.root.certificate],
                          reverify_interval=30, timeout=5)
    with ThreadedProxy(proxy) as tp:
        host, port = tp.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("POST", "/v1/chat/completions", body=json.dumps({"stream": True, "slow": True}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            first = resp.readline()
            assert first.startswith(b"data: ")
            proxy.state = replace(proxy.state, ok=False, reason="measurement_mismatch")
            try:
                rest = resp.read()
            except http.client.IncompleteRead as exc:
                rest = exc.partial
        finally:
            conn.close()
        assert b"[DONE]" not in rest          # the client never sees a "complete" answer
        assert rest.count(b"data: ") < 39


def test_proxy_command_serves_and_refuses(https_head, files, deployment):
    """`conclave proxy` as a real process: forwards while the head verifies, 503 when it does not."""
    import socket
    import subprocess
    import sys
    good = https_head()
    bad = https_head(bind_tls="a", serve_tls="b")
    man, root = files
    procs = []
    try:
        ports = []
        for upstream in (good.url, bad.url):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            ports.append(port)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "conclave.runtime", "proxy", "--upstream", upstream,
                 "--manifest", str(man), "--sim-root", str(root), "--listen", f"127.0.0.1:{port}",
                 "--reverify", "30", "--owner-fingerprint", deployment.manifest.owner_fingerprint],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        results = []
        for port, proc in zip(ports, procs):
            deadline = time.monotonic() + 30
            while True:
                try:
                    results.append(_request(f"http://127.0.0.1:{port}", "GET", "/v1/models"))
                    break
                except OSError:
                    assert proc.poll() is None, proc.stderr.read().decode()
                    assert time.monotonic() < deadline, "proxy did not start listening"
                    time.sleep(0.2)
        assert results[0][0] == 200 and json.loads(results[0][2])["data"][0]["id"] == "smollm2"
        assert results[1][0] == 503 and json.loads(results[1][2])["error"]["code"] == "tls_key_mismatch"
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            proc.stderr.close()


def test_report_key_from_a_verified_endpoint_checks_the_run_report(https_head, files, capsys,
                                                                    deployment, tmp_path):
    """Client flow: verify the head, take its attested report key, check the signed run report."""
    from datetime import datetime, timezone
    from conclave.runtime.report import RunReport
    head = https_head()
    man, root = files
    rc, out = _verify_cli(capsys, deployment, head.url, man, root)
    assert rc == 0
    report = RunReport.for_manifest(deployment.manifest, started_at=datetime.now(timezone.utc),
                                    evidence={"node-0": ("sim", b"e0"), "node-1": ("sim", b"e1")},
                                    shards={"node-0": "01" * 32, "node-1": "02" * 32},
                                    enrolments={n: deployment.enrolment(n) for n in ("node-0", "node-1")})
    path = tmp_path / "run-report.json"
    path.write_bytes(deployment.report_signer.sign(report))
    assert main(["report", "verify", str(path), "--manifest", str(man),
                 "--report-pubkey", out["head"]["report_pubkey"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["key_pinned"] is True
