"""Clients must pin the deployment owner: `conclave verify` / `conclave proxy` (and the library
entry points) refuse an unpinned manifest before any connection, unless `--unsafe-unpinned`."""
from __future__ import annotations

import json
import socket

import pytest

from conclave.runtime.cli import main
from conclave.runtime.endpoint.client import verify_endpoint
from conclave.runtime.endpoint.proxy import AttestedProxy
from conclave.runtime.manifest import verify_bytes
from conclave.runtime.manifest.document import ManifestError

from front_support import run_cli


@pytest.fixture
def listener():
    """A TCP listener that only counts connection attempts (nothing may reach it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)

    def attempts() -> int:
        n = 0
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1
    yield f"https://127.0.0.1:{sock.getsockname()[1]}", attempts
    sock.close()


def test_verify_without_pin_refuses_before_connecting(files, listener, capsys):
    man, root = files
    url, attempts = listener
    rc = main(["verify", url, "--manifest", str(man), "--sim-root", str(root), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (rc, out["ok"], out["reason"]) == (1, False, "owner_not_pinned")
    assert attempts() == 0


def test_verify_without_pin_refuses_even_without_json(files, listener, capsys):
    man, root = files
    url, attempts = listener
    assert main(["verify", url, "--manifest", str(man), "--sim-root", str(root)]) == 1
    assert "owner_not_pinned" in capsys.readouterr().err
    assert attempts() == 0


def test_proxy_without_pin_refuses_before_connecting(files, listener):
    man, root = files
    url, attempts = listener
    rc, _, err = run_cli("proxy", "--upstream", url, "--manifest", str(man), "--sim-root", str(root),
                         "--listen", "127.0.0.1:0", timeout=30)
    assert rc == 1 and "owner_not_pinned" in err, err
    assert attempts() == 0


def test_unsafe_unpinned_verifies_and_says_so(make_front, files):
    front = make_front()
    man, root = files
    rc, out, err = run_cli("verify", front.url, "--manifest", str(man), "--sim-root", str(root),
                           "--timeout", "10", "--json", "--unsafe-unpinned")
    assert rc == 0, (out, err)
    assert out["ok"] is True and out["unsafe_unpinned"] is True and out["owner_pinned"] is False
    assert "NOT pinned" in err


def test_pinned_verify_reports_no_unsafe_flag(make_front, files, deployment):
    front = make_front()
    man, root = files
    rc, out, err = run_cli("verify", front.url, "--manifest", str(man), "--sim-root", str(root),
                           "--timeout", "10", "--json", "--owner-fingerprint",
                           deployment.manifest.owner_fingerprint)
    assert rc == 0, (out, err)
    assert out["owner_pinned"] is True and "unsafe_unpinned" not in out


def test_unsafe_unpinned_cannot_be_combined_with_a_pin(files, deployment, capsys):
    man, root = files
    with pytest.raises(SystemExit) as exc:
        main(["verify", "https://127.0.0.1:9", "--manifest", str(man), "--unsafe-unpinned",
              "--owner-fingerprint", deployment.manifest.owner_fingerprint])
    assert exc.value.code == 1
    capsys.readouterr()


def test_library_refuses_an_unpinned_manifest(deployment, listener):
    url, attempts = listener
    unpinned = verify_bytes(deployment.manifest_bytes, trusted_owner=None, allow_unpinned=True)
    with pytest.raises(ManifestError) as exc:
        verify_endpoint(url, manifest=unpinned, trusted_roots=[deployment.root.certificate], timeout=5)
    assert exc.value.reason == "owner_not_pinned"
    with pytest.raises(ManifestError) as exc:
        AttestedProxy(url, unpinned, trusted_roots=[deployment.root.certificate])
    assert exc.value.reason == "owner_not_pinned"
    assert attempts() == 0
    proxy = AttestedProxy(url, unpinned, trusted_roots=[deployment.root.certificate], unsafe_unpinned=True)
    assert proxy.owner_pinned is False
