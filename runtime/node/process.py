"""Start and stop the cluster's long-running processes: the ONE place processes are spawned.

Every process runs in its own session (its pid is its process-group id), inside a host's
network namespace via `ip netns exec` (which execs, so the recorded pid is the process
itself), with an explicit environment (secrets go only there, never in argv) and its output
in a log file. Stopping is by recorded process group, then by the pids still inside the
namespaces this cluster created (which only this cluster's processes can be in).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from conclave.runtime import config, netns

# Variables a child inherits from our own environment (caches, locale, paths); nothing else.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "HF_HOME", "XDG_CACHE_HOME",
              "TORCHINDUCTOR_CACHE_DIR", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR")


def base_env() -> dict[str, str]:
    env = {k: v for k in _INHERITED if (v := config.raw(k)) is not None}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def venv_bin(name: str) -> str:
    """A console script next to this interpreter (ray, conclave)."""
    return str(Path(sys.executable).parent / name)


@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    log: str


def spawn(name: str, argv: list[str], *, env: dict[str, str], log_path: Path, netns_name: str | None,
          stdin_data: bytes | None = None) -> Started:
    """stdin_data: written to the child's stdin pipe, then closed (how a node gets its secret bundle)."""
    full = (["ip", "netns", "exec", netns_name] if netns_name else []) + argv
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(full, env=env, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    if stdin_data is not None:
        try:
            proc.stdin.write(stdin_data)
        finally:
            proc.stdin.close()
    return Started(name, proc.pid, str(log_path))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reap() -> None:
    """Collect exited children so they do not linger as zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def stop_group(pgid: int, *, grace: float = 15.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap()
            if not _group_alive(pgid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(alive(pid) for pid in pids_in_group(pgid))


def pids_in_group(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def pids_in_netns(name: str) -> list[int]:
    """Processes of the host whose namespace is `name`: in it, and in the inner namespaces its nodes
    created for Ray and vLLM (inner_netns), which die with the host like the rest."""
    if not netns.netns_exists(name):
        return []
    from conclave.runtime.node import inner_netns
    res = netns.run(["ip", "netns", "pids", name], check=False)
    pids = [int(p) for p in res.stdout.split() if p.isdigit()]
    return pids + [p for p in inner_netns.pids_for_outer(name) if p not in pids]


def kill_netns_processes(name: str, *, grace: float = 5.0) -> None:
    """Stop whatever still runs inside a namespace this cluster created (Ray daemons that double-fork),
    and inside the inner namespaces its nodes created (inner_netns: Ray and vLLM of a node that may
    have died without removing them)."""
    from conclave.runtime.node import inner_netns
    inner_netns.cleanup_for_outer(name)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = pids_in_netns(name)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(alive(p) for p in pids_in_netns(name)):
            reap()
            time.sleep(0.2)
