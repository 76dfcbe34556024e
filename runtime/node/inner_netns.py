"""The node's inner network namespace: Ray and vLLM live where the underlay does not exist.

A serving node creates one private network namespace ("inner") whose only interfaces are
loopback and the node's WireGuard device. The device is created in the node's own namespace
(so its UDP socket stays on the underlay) and then moved in (overlay/device.py); Ray, the head's
vLLM server and every probe of them run inside; the head's TLS front reaches vLLM over a unix
socket. Whatever Ray binds (GCS, raylets, workers, the dashboard agent, wildcard or not) is then
reachable only through the overlay, with or without any firewall rule.

Names are host-local and unique per node: `ci<inode of the outer namespace>-<node name>`.
Each inner namespace is recorded in REGISTRY (its nsfs inode, the outer namespace's inode, the
node's name and WireGuard interface) so that whoever outlives a SIGKILLed node can find and stop
what still runs inside: the node's next boot (`create` removes a stale namespace of its own name
and its processes first) and the local host layer, for a host's outer namespace
(`cleanup_for_outer`). In local mode a node runs in its own mount namespace (`ip netns exec`),
where `ip netns add` mounts the name: other mount namespaces see the name's file but cannot enter
it, which is why cleanup goes by inode, never by name alone. Before anything is killed by inode,
the namespace is checked to hold nothing but loopback and the recorded WireGuard interface (an
inode number of a namespace that is gone may be reused by an unrelated one).
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from conclave.runtime.errors import ConclaveError
from conclave.runtime.node import process

log = logging.getLogger("conclave.node.inner_netns")

REGISTRY = Path("/run/conclave-inner")
NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]")


def netns_inode(path: str | Path = "/proc/self/ns/net") -> int:
    """The nsfs inode that identifies a network namespace (os.stat follows /proc/PID/ns/net)."""
    return os.stat(path).st_ino


def inner_name(node_name: str, outer_inode: int | None = None) -> str:
    """`ci<outer netns inode>-<node name>`: unique per node on this host, the same for every boot of
    the same node in the same outer namespace (so a new boot finds its predecessor's leftovers)."""
    outer = netns_inode() if outer_inode is None else outer_inode
    return f"ci{outer}-{_NAME_RE.sub('_', node_name)[:40]}"


def pids_in_inode(inode: int) -> list[int]:
    """Every live process whose network namespace has this inode."""
    want = f"net:[{inode}]"
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "net") == want:
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def _links_of(pid: int) -> set[str] | None:
    """Interface names in the network namespace of `pid` (None: cannot tell)."""
    res = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-o", "link", "show"],
                         capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        return None
    names = set()
    for line in res.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.add(parts[1].strip().split("@", 1)[0])
    return names


def kill_inode(inode: int, *, interface: str | None, grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL, every process in the namespace `inode`, provided that namespace holds
    only loopback (and `interface`). Returns how many processes were signalled."""
    me = os.getpid()
    pids = [p for p in pids_in_inode(inode) if p != me]
    if not pids:
        return 0
    if not _only_ours(pids, interface):
        log.warning("inner netns inode %d holds more than lo and %s: not ours, left alone", inode, interface)
        return 0
    signalled = 0
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = [p for p in pids_in_inode(inode) if p != me]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
                signalled += 1
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(process.alive(p) for p in pids_in_inode(inode) if p != me):
            process.reap()
            time.sleep(0.1)
    return signalled


def _remove_name(name: str) -> None:
    """`ip netns del`: unmounts the name where it is mounted here, and unlinks its file."""
    if (NETNS_DIR / name).exists():
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _records(dirs: list[Path] | None = None) -> list[tuple[Path, dict]]:
    out = []
    entries = []
    for folder in dirs or [REGISTRY]:
        try:
            entries += sorted(folder.glob("*.json"))
        except OSError:
            continue
    for path in entries:
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return out


def _cleanup_record(path: Path, record: dict) -> None:
    inode = record.get("inode")
    if isinstance(inode, int):
        kill_inode(inode, interface=record.get("interface"))
    name = record.get("name")
    if isinstance(name, str) and name:
        _remove_name(name)
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def cleanup_stale(name: str, interface: str | None = None) -> bool:
    """Remove a namespace of this name left by an earlier boot, and its processes. True if found."""
    found = False
    for path, record in _records():
        if record.get("name") == name:
            _cleanup_record(path, record)
            found = True
    if (NETNS_DIR / name).exists():
        found = True
        if _is_nsfs(NETNS_DIR / name):   # mounted here (same mount namespace as the earlier boot)
            kill_inode(netns_inode(NETNS_DIR / name), interface=interface)
        _remove_name(name)
    return found


def _is_nsfs(path: Path) -> bool:
    """True when `path` is a mounted network namespace here (not just the empty file under it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        # ioctl NS_GET_NSTYPE (0xb703) answers only on nsfs files
        import fcntl
        return fcntl.ioctl(fd, 0xB703) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def _registry_dirs(outer_netns: str) -> list[Path]:
    """This mount namespace's registry, and the registries seen by the processes in `outer_netns`
    (a pod's own /run is a memory volume only its mount namespace sees: /proc/PID/root reaches it)."""
    dirs, seen = [], set()
    res = subprocess.run(["ip", "netns", "pids", outer_netns], capture_output=True, text=True, timeout=10)
    pids = [p for p in res.stdout.split() if p.isdigit()]
    for folder in [REGISTRY] + [Path(f"/proc/{p}/root") / REGISTRY.relative_to("/") for p in pids]:
        try:
            st = os.stat(folder)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            dirs.append(folder)
    return dirs


def _records_under(outer_netns: str) -> list[tuple[Path, dict]]:
    """Registry records of the inner namespaces created inside the outer namespace `outer_netns`."""
    try:
        outer = netns_inode(NETNS_DIR / outer_netns)
    except OSError:
        return []
    return [(path, record) for path, record in _records(_registry_dirs(outer_netns))
            if record.get("outer_inode") == outer]


def _only_ours(pids: list[int], interface: str | None) -> bool:
    """The namespace of pids[0] holds only loopback (and `interface`): an inner namespace, not a
    namespace that reused a recorded inode number."""
    links = _links_of(pids[0])
    return links is not None and links <= {"lo"} | ({interface} if interface else set())


def cleanup_for_outer(outer_netns: str) -> list[str]:
    """Stop every inner namespace registered under the outer namespace `outer_netns` (a name in
    /var/run/netns): the host layer calls this before it stops or deletes a host. Returns the names."""
    done = []
    for path, record in _records_under(outer_netns):
        _cleanup_record(path, record)
        done.append(str(record.get("name")))
    return done


def pids_for_outer(outer_netns: str) -> list[int]:
    """Processes in the inner namespaces registered under the outer namespace `outer_netns` (a host's
    Ray and vLLM): part of that host, like the processes in its own namespace."""
    out = []
    for _, record in _records_under(outer_netns):
        inode = record.get("inode")
        pids = pids_in_inode(inode) if isinstance(inode, int) else []
        if pids and _only_ours(pids, record.get("interface")):
            out += pids
    return out


@dataclass
class InnerNetns:
    """One node's inner namespace: create it (removing a stale one first), run things inside, close it."""

    name: str
    interface: str | None = None
    inode: int | None = None
    _fd: int | None = None

    @classmethod
    def for_node(cls, node_name: str, interface: str | None = None) -> "InnerNetns":
        return cls(inner_name(node_name), interface)

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    @property
    def enter_path(self) -> str | None:
        """A path any root process on this host can enter with `nsenter --net=PATH` (our open fd)."""
        return None if self._fd is None else f"/proc/{os.getpid()}/fd/{self._fd}"

    def create(self) -> "InnerNetns":
        if cleanup_stale(self.name, self.interface):
            log.warning("removed a stale inner network namespace %s (an earlier boot of this node)", self.name)
        res = subprocess.run(["ip", "netns", "add", self.name], capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            raise ConclaveError("inner_netns_failed", f"ip netns add {self.name}: {res.stderr.strip()[:200]}")
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self.inode = os.fstat(self._fd).st_ino
            run(self, ["ip", "link", "set", "lo", "up"])
            self._register()
        except Exception:
            self.close()
            raise
        return self

    def _register(self) -> None:
        REGISTRY.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {"name": self.name, "inode": self.inode, "outer_inode": netns_inode(),
                  "interface": self.interface, "pid": os.getpid(), "created": time.time()}
        tmp = REGISTRY / f".{self.name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, REGISTRY / f"{self.name}.json")

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:  # noqa: A002
        """A socket that belongs to the inner namespace (created on a thread that entered it)."""
        if self._fd is None:
            raise ConclaveError("inner_netns_failed", f"{self.name} is not open")
        return socket_in(self._fd, family, type)

    def call(self, fn, *args):
        """fn(*args) on a thread inside this namespace (call_in)."""
        if self._fd is None:
            raise ConclaveError("inner_netns_failed", f"{self.name} is not open")
        return call_in(self._fd, fn, *args)

    def processes(self) -> list[int]:
        return [] if self.inode is None else [p for p in pids_in_inode(self.inode) if p != os.getpid()]

    def close(self) -> None:
        """Stop whatever still runs inside, delete the namespace and its record."""
        if self.inode is not None:
            kill_inode(self.inode, interface=self.interface)
        _remove_name(self.name)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            (REGISTRY / f"{self.name}.json").unlink()
        except FileNotFoundError:
            pass


def run(inner: InnerNetns, argv: list[str], *, timeout: float = 30) -> subprocess.CompletedProcess:
    res = subprocess.run(inner.exec_prefix() + argv, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise ConclaveError("inner_netns_failed", f"{' '.join(argv)} in {inner.name}: {res.stderr.strip()[:200]}")
    return res


_libc = None


def _setns(fd: int, nstype: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def call_in(netns_fd: int, fn, *args):
    """Run fn(*args) on a short-lived thread that entered the network namespace `netns_fd` (setns
    changes only the calling thread's) and return its result. Sockets fn creates stay in that
    namespace, whichever thread binds or uses them later; threads fn starts begin inside it."""
    result: dict = {}

    def work() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(netns_fd, CLONE_NEWNET)
            try:
                result["value"] = fn(*args)
            finally:
                _setns(own, CLONE_NEWNET)
        except BaseException as exc:   # handed to the caller
            result["error"] = exc
        finally:
            os.close(own)

    thread = threading.Thread(target=work, name="conclave-inner-call")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def socket_in(netns_fd: int, family: int, type: int) -> socket.socket:  # noqa: A002
    """A socket created inside the network namespace `netns_fd`."""
    try:
        return call_in(netns_fd, socket.socket, family, type)
    except OSError as exc:
        raise ConclaveError("inner_netns_failed", f"cannot open a socket in the inner namespace: {exc}") from None


def engine_socket_path(run_dir: Path) -> Path:
    """Where a node's vLLM server listens (a unix socket in a 0700 folder of its own): RUN_DIR/engine/
    api.sock, or a short folder under /run when that path is too long for a unix socket address."""
    path = Path(run_dir) / "engine" / "api.sock"
    if len(str(path).encode()) <= 100:
        return path
    import hashlib
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    return Path("/run/conclave-engine") / digest / "api.sock"
