"""The supervisor's readiness checks through the head's TLS front (via the root-namespace forwarder).

The front's certificate is the trust anchor clients use (`ca_cert` in `conclave status`); the
supervisor verifies against it too rather than switching TLS checks off.
"""
from __future__ import annotations

import json
import secrets
import ssl
import urllib.error
import urllib.request
from pathlib import Path


def _context(state: dict) -> ssl.SSLContext | None:
    cert = Path(state["front"]["ca_cert"])
    if not cert.is_file():
        return None
    return ssl.create_default_context(cafile=str(cert))


def _get(state: dict, path: str, *, auth: bool) -> tuple[int, bytes] | None:
    ctx = _context(state)
    if ctx is None:
        return None
    request = urllib.request.Request(f"https://127.0.0.1:{int(state['port'])}{path}")
    if auth and state.get("api_key"):
        request.add_header("Authorization", f"Bearer {state['api_key']}")
    try:
        with urllib.request.urlopen(request, timeout=30, context=ctx) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError, ValueError):
        return None


def models_ready(state: dict) -> bool:
    got = _get(state, "/v1/models", auth=True)
    if got is None or got[0] != 200:
        return False
    try:
        return bool(json.loads(got[1]).get("data"))
    except ValueError:
        return False


def attestation_ready(state: dict) -> bool:
    got = _get(state, f"/v1/attestation?nonce={secrets.token_hex(32)}", auth=False)
    return got is not None and got[0] == 200
