"""`conclave node` start-up: secret material never through argv, misconfigured nodes refuse to run;
secrets reach `wg` only through a pipe; pure helpers (firewall rules, names, addresses)."""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

from conclave.overlay import device
from conclave.overlay.addressing import derive_address, interface_name
from conclave.overlay.firewall import ruleset
from conclave.overlay.keys import WgPrivateKey
from conclave.runtime.attestation.sim import SimulatedRoot

from signed_manifest import SignedManifest, sim_policy, write_signed_manifest

GOOD = bytes.fromhex("ab" * 48)
DEV_POLICY = sim_policy(GOOD)


def signed_manifest(tmp: Path, policy: dict) -> SignedManifest:
    """The deployment manifest the node under test boots from (it runs the stage cli-n1)."""
    return write_signed_manifest(tmp / "manifest.json", stages=[("cli-n0", "head"), ("cli-n1", "worker")],
                                 policy=policy)


def run_node(tmp: Path, policy: dict, bundle: dict, *, via: str = "stdin", extra=()) -> subprocess.CompletedProcess:
    root_pem = tmp / "root.pem"
    cmd = [sys.executable, "-m", "conclave.runtime", "node", "--role", "worker", "--name", "cli-n1",
           *signed_manifest(tmp, policy).node_args(), "--underlay-host", "127.0.0.1",
           "--evidence", "sim", "--sim-root", str(root_pem), "--status-socket", str(tmp / "s.sock"), *extra]
    data = json.dumps(bundle).encode()
    if via == "stdin":
        cmd.append("--bundle-stdin")
        return subprocess.run(cmd, input=data, capture_output=True, timeout=60,
                              env={**os.environ, "CONCLAVE_STATE_DIR": str(tmp)})
    path = tmp / "bundle.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if via == "file" else 0o644)
    os.write(fd, data)
    os.close(fd)
    os.chmod(path, 0o600 if via == "file" else 0o644)
    cmd += ["--bundle-file", str(path)]
    return subprocess.run(cmd, capture_output=True, timeout=60, env={**os.environ, "CONCLAVE_STATE_DIR": str(tmp)})


def _setup(tmp: Path, **issue):
    root = SimulatedRoot.generate()
    (tmp / "root.pem").write_bytes(root.cert_pem)
    attester = root.issue_attester("cli-n1", measurement=GOOD, **issue)
    return {"sim_attester": base64.b64encode(attester.to_secret_bytes()).decode()}


def test_sim_node_under_production_policy_refuses_to_start(tmp_path):
    bundle = _setup(tmp_path)
    res = run_node(tmp_path, {"production": True, "allowed_tee": ["tdx"], "tdx": {"mr_td": ["00" * 48], "xfam": ["00" * 8]}}, bundle)
    assert res.returncode == 2, res.stderr
    assert b"self_attestation_failed" in res.stderr and b"simulated_not_allowed" in res.stderr


def test_debug_node_refuses_to_start_and_bundle_file_is_removed(tmp_path):
    bundle = _setup(tmp_path, debug=True)
    res = run_node(tmp_path, DEV_POLICY, bundle, via="file")
    assert res.returncode == 2 and b"debug_enabled" in res.stderr
    assert not (tmp_path / "bundle.json").exists()


def test_world_readable_bundle_file_is_refused_and_removed(tmp_path):
    bundle = _setup(tmp_path)
    res = run_node(tmp_path, DEV_POLICY, bundle, via="open-file")
    assert res.returncode == 1 and b"bundle_permissions" in res.stderr
    assert not (tmp_path / "bundle.json").exists()


def test_missing_attester_is_a_usage_error(tmp_path):
    _setup(tmp_path)
    res = run_node(tmp_path, DEV_POLICY, {})
    assert res.returncode == 1 and b"attester_missing" in res.stderr


def test_a_node_without_the_signed_manifest_refuses_to_start(tmp_path):
    """No unsigned path: without --manifest the node stops with a usage error before doing anything."""
    bundle = _setup(tmp_path)
    res = subprocess.run([sys.executable, "-m", "conclave.runtime", "node", "--role", "worker", "--name", "cli-n1",
                          "--underlay-host", "127.0.0.1", "--evidence", "sim", "--sim-root", str(tmp_path / "root.pem"),
                          "--status-socket", str(tmp_path / "s.sock"), "--bundle-stdin"],
                         input=json.dumps(bundle).encode(), capture_output=True, timeout=60,
                         env={**os.environ, "CONCLAVE_STATE_DIR": str(tmp_path)})
    assert res.returncode == 1 and b"manifest_required" in res.stderr, res.stderr
    assert not (tmp_path / "s.sock").exists()


def test_the_unsigned_policy_flags_are_gone(tmp_path):
    """--policy / --manifest-digest (the former development path) are not accepted any more."""
    import pytest
    from conclave.runtime.cli import build_parser
    from conclave.runtime.errors import ExitCode
    manifest = signed_manifest(tmp_path, DEV_POLICY)
    (tmp_path / "policy.json").write_text(json.dumps(DEV_POLICY))
    base = ["node", "--role", "worker", "--name", "cli-n1", "--underlay-host", "127.0.0.1"]
    assert build_parser().parse_args(base + manifest.node_args()).manifest == manifest.path
    for removed in (["--policy", str(tmp_path / "policy.json")], ["--manifest-digest", "11" * 32]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(base + manifest.node_args() + removed)
        assert exit_.value.code == ExitCode.USAGE


def test_a_node_that_is_not_a_stage_of_the_manifest_refuses_to_start(tmp_path):
    bundle = _setup(tmp_path)
    manifest = write_signed_manifest(tmp_path / "other.json", stages=[("cli-n0", "head"), ("cli-n2", "worker")],
                                     policy=DEV_POLICY)
    res = run_node(tmp_path, DEV_POLICY, bundle, extra=["--manifest", str(manifest.path),
                                                        "--owner-fingerprint", manifest.owner_fingerprint])
    assert res.returncode == 5 and b"[malformed]" in res.stderr, res.stderr   # ExitCode.MALFORMED


def test_private_key_reaches_wg_only_through_a_pipe(tmp_path, monkeypatch):
    log = tmp_path / "wg.log"
    fake = tmp_path / "wg"
    fake.write_text("#!/bin/sh\n"
                    f"echo \"ARGV $*\" >> {log}\n"
                    "for a in \"$@\"; do case \"$a\" in /dev/fd/*) "
                    f"echo \"FDMODE $(stat -L -c %F $a)\" >> {log}; echo \"READ $(cat $a)\" >> {log};; esac; done\n")
    fake.chmod(0o700)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    key = WgPrivateKey.generate()
    device._wg(["set", "wg0", "private-key", "{fd}"], secret=key.wg_text())
    text = log.read_text()
    secret = key.wg_text().decode().strip()
    argv_line = next(line for line in text.splitlines() if line.startswith("ARGV"))
    assert secret not in argv_line and "/dev/fd/" in argv_line
    assert "FDMODE fifo" in text           # a pipe, not a file on disk
    assert f"READ {secret}" in text        # and wg could read it
    leftovers = [p for p in tmp_path.iterdir() if p.name not in ("wg", "wg.log")]
    assert leftovers == []


def test_firewall_ruleset_opens_only_the_underlay_ports():
    rules = ruleset(interface="cncabc", wireguard_port=51820, tcp_ports=[51821, 51822],
                    overlay=ipaddress.IPv4Network("100.64.0.0/16"))
    lines = [line.strip() for line in rules.splitlines()]
    assert 'iifname "cncabc" ip saddr 100.64.0.0/16 accept' in lines
    assert "ip daddr 100.64.0.0/16 drop" in lines
    assert "udp dport 51820 accept" in lines and "tcp dport { 51821, 51822 } accept" in lines
    assert lines[-3] == "drop"  # default deny at the end of the chain
    # the overlay drop comes before any port accept
    assert lines.index("ip daddr 100.64.0.0/16 drop") < lines.index("udp dport 51820 accept")


def test_interface_names_and_default_addresses():
    names = {interface_name(f"node-{i}") for i in range(200)}
    assert len(names) == 200 and all(len(n) <= 15 for n in names)
    net = ipaddress.IPv4Network("100.64.0.0/16")
    addr = derive_address("node-1", net)
    assert addr in net and addr not in (net.network_address, net.broadcast_address)
    assert derive_address("node-1", net) == addr


def test_wg_errors_never_carry_key_material(tmp_path, monkeypatch):
    import pytest
    from conclave.runtime.errors import ConclaveError
    fake = tmp_path / "wg"
    # behave like wg does on a key it cannot parse: quote it on stderr
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in /dev/fd/*) "
                    "echo \"Key is not the correct length or format: \\`$(cat $a)'\" >&2;; esac; done\nexit 1\n")
    fake.chmod(0o700)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    key = WgPrivateKey.generate()
    with pytest.raises(ConclaveError) as err:
        device._wg(["set", "wg0", "private-key", "{fd}"], secret=key.wg_text())
    secret = key.wg_text().decode().strip()
    assert err.value.reason == "wg_failed"
    assert secret not in str(err.value) and secret not in repr(err.value) and "<redacted>" in str(err.value)


def test_bundle_over_an_inherited_fd(tmp_path):
    bundle = _setup(tmp_path, debug=True)
    manifest = signed_manifest(tmp_path, DEV_POLICY)
    r, w = os.pipe()
    os.write(w, json.dumps(bundle).encode())
    os.close(w)
    try:
        res = subprocess.run([sys.executable, "-m", "conclave.runtime", "node", "--role", "worker", "--name", "cli-n1",
                              *manifest.node_args(), "--underlay-host", "127.0.0.1", "--evidence", "sim", "--sim-root",
                              str(tmp_path / "root.pem"), "--bundle-fd", str(r)],
                             pass_fds=(r,), capture_output=True, timeout=60,
                             env={**os.environ, "CONCLAVE_STATE_DIR": str(tmp_path)})
    finally:
        os.close(r)
    # the attester arrived over the fd (its debug claim is what stops the node)
    assert res.returncode == 2 and b"debug_enabled" in res.stderr


def _metrics_host_args(tmp: Path, *extra: str):
    """Parse `conclave node` with the real CLI parser (signed manifest + a sim attester in a 0600 bundle file)."""
    from conclave.runtime.cli import build_parser
    bundle = _setup(tmp)
    manifest = signed_manifest(tmp, DEV_POLICY)
    path = tmp / "bundle.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, json.dumps(bundle).encode())
    os.close(fd)
    return build_parser().parse_args([
        "node", "--role", "worker", "--name", "cli-n1", *manifest.node_args(), "--underlay-host", "198.18.0.5",
        "--evidence", "sim",
        "--sim-root", str(tmp / "root.pem"), "--bundle-file", str(path), *extra])


def test_metrics_host_defaults_to_the_overlay_address(tmp_path):
    from conclave.runtime.cli.node import build_config
    args = _metrics_host_args(tmp_path)
    assert args.metrics_host is None
    assert build_config(args).metrics_host is None  # the agent then binds the overlay address


def test_metrics_host_flag_reaches_the_node_config(tmp_path):
    from conclave.runtime.cli.node import build_config
    cfg = build_config(_metrics_host_args(tmp_path, "--metrics-host", "10.1.2.3", "--metrics-port", "9469"))
    assert cfg.metrics_host == "10.1.2.3" and cfg.metrics_port == 9469


def test_metrics_host_refuses_wildcards_and_names(tmp_path):
    import pytest
    from conclave.runtime.cli.node import build_config
    from conclave.runtime.errors import ConclaveError, ExitCode
    for bad in ("0.0.0.0", "::", "pod-ip"):
        with pytest.raises(ConclaveError) as err:
            build_config(_metrics_host_args(tmp_path, "--metrics-host", bad))
        assert err.value.reason == "metrics_host_invalid" and err.value.exit_code == ExitCode.USAGE
