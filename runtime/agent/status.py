"""The agent's local status endpoint: a 0600 unix socket speaking one JSON line each way.

Local only by construction (a filesystem socket, not a network port), so it needs no auth
beyond file permissions. Commands: {"cmd": "status"}, {"cmd": "reattest"}, and (agents started with --allow-launch)
{"cmd": "launch", ...} / {"cmd": "exit_code", "pid": N} (see launcher.py).
"""
from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Callable

from conclave.runtime.errors import ConclaveError

MAX_REQUEST = 65536


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError
            reply = self.server.dispatch(request)  # type: ignore[attr-defined]
        except (ValueError, json.JSONDecodeError):
            reply = {"ok": False, "reason": "malformed_request"}
        except Exception as exc:  # the status socket must never kill the agent
            reply = {"ok": False, "reason": "internal_error", "error": type(exc).__name__}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class StatusServer:
    def __init__(self, path: Path, dispatch: Callable[[dict], dict]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            self._server = _Server(str(self.path), _Handler)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._server.dispatch = dispatch  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def query(path: Path, cmd: str = "status", timeout: float = 5.0) -> dict:
    """Ask an agent over its status socket; ConclaveError(agent_unreachable) when it is not there."""
    return request(path, {"cmd": cmd}, timeout=timeout)


def request(path: Path, payload: dict, timeout: float = 5.0) -> dict:
    """Send one JSON request (e.g. {"cmd": "launch", ...}) and return the agent's JSON reply."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(payload).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as exc:
        raise ConclaveError("agent_unreachable", f"no agent answers at {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(buf)
    except json.JSONDecodeError:
        raise ConclaveError("agent_unreachable", f"agent at {path} sent no valid reply") from None
