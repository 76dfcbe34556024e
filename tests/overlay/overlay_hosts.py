"""Local hosts for overlay tests: one network namespace per host on a private bridge, each
running a real `conclave node` (wireguard-go) with simulated evidence handed over on stdin.

Every node boots from one signed deployment manifest (signed_manifest.py) that lists all the
hosts as stages, so add every host before starting the first one; the manifest is written then.
Peers admit only a node its stage's owner enrolled (owner_not_enrolled otherwise), so the test
plays that owner: once a started node's status socket answers (wait_status), it is enrolled the
way `conclave owner enroll` does it (attest it, sign this boot's keys, hand them over). A
restarted node has new keys and is enrolled again. start(enrol=...) says how:
  ENROL_ATTESTED  the honest owner: attests the node first (a node whose evidence fails is refused)
  ENROL_VOUCHED   an owner that signs what its node's socket names without attesting: a rogue
                  that carries a valid enrolment, so what refuses it is the peers' own evidence check
  None            nobody enrols it: peers refuse it with owner_not_enrolled

Everything created carries a per-run prefix and is recorded, so teardown removes exactly that,
even after a failure. Processes are stopped by PID (SIGTERM, then SIGKILL).
"""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from conclave.overlay.addressing import interface_name
from conclave.runtime import netns
from conclave.runtime.agent.status import query
from conclave.runtime.errors import ConclaveError
from conclave.runtime.attestation.sim import SimulatedRoot

from signed_manifest import SignedManifest, sim_policy, write_signed_manifest

GOOD_MEASUREMENT = bytes.fromhex("ab" * 48)
OVERLAY_CIDR = "100.64.0.0/16"
METRICS_PORT = 9469
ADMISSION_PORT = 51821
RENDEZVOUS_PORT = 51822
REPO = Path(__file__).resolve().parents[2]
ROGUE = Path(__file__).with_name("rogue_node.py")
ENROL_ATTESTED = "attested"
ENROL_VOUCHED = "vouched"
ENROL_RETRY_S = 20.0   # a node's status socket may answer a moment before its admission server does


@dataclass
class Host:
    name: str            # node name (unique per run)
    ns: str
    underlay_ip: str
    overlay_ip: str
    role: str
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    status_socket: Path | None = None
    veth: str = ""       # its underlay link, root-namespace side (taking it down partitions the host)
    enrol: str | None = ENROL_ATTESTED   # how its owner enrols this boot (see the module docstring)
    enrolment: dict | None = None        # the node's answer to this boot's enrolment; None: not yet

    @property
    def interface(self) -> str:
        return interface_name(self.name)


@dataclass
class LocalHosts:
    workdir: Path
    prefix: str = field(default_factory=lambda: "ov" + secrets.token_hex(3))
    subnet: int = field(default_factory=lambda: 1 + secrets.randbelow(250))
    hosts: dict[str, Host] = field(default_factory=dict)
    root: SimulatedRoot = field(default_factory=SimulatedRoot.generate)
    manifest: SignedManifest | None = None   # written at the first start(), listing every added host
    _created_ns: list[str] = field(default_factory=list)
    _created_links: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bridge = f"{self.prefix}br"
        self.state_dir = self.workdir / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.root_pem = self.workdir / "sim-root.pem"
        self.root_pem.write_bytes(self.root.cert_pem)
        netns.add_bridge(self.bridge, f"198.19.{self.subnet}.254/24")
        self._created_links.append(self.bridge)

    def underlay(self, index: int) -> str:
        return f"198.19.{self.subnet}.{index + 1}"

    def add_host(self, short: str, role: str = "worker") -> Host:
        if self.manifest is not None:
            raise AssertionError("add every host before starting one: the signed manifest lists them all")
        index = len(self.hosts)
        ns = f"{self.prefix}-{short}"
        netns.add_netns(ns)
        self._created_ns.append(ns)
        veth = f"{self.prefix}{index}h"
        netns.attach_host(ns, self.bridge, veth, f"{self.underlay(index)}/24")
        self._created_links.append(veth)
        host = Host(name=f"{self.prefix}-{short}", ns=ns, underlay_ip=self.underlay(index),
                    overlay_ip=str(ipaddress.IPv4Address("100.64.1.1") + index), role=role, veth=veth)
        host.status_socket = self.state_dir / "nodes" / f"{host.name}.sock"
        self.hosts[short] = host
        return host

    def _signed_manifest(self) -> SignedManifest:
        """The deployment manifest every node boots from: all hosts as stages, the head first, and a
        policy that admits simulated evidence with GOOD_MEASUREMENT only."""
        if self.manifest is None:
            hosts = sorted(self.hosts.values(), key=lambda h: h.role != "head")
            head = hosts[0]
            self.manifest = write_signed_manifest(
                self.workdir / "manifest.json", stages=[(h.name, h.role) for h in hosts],
                policy=sim_policy(GOOD_MEASUREMENT), overlay_cidr=OVERLAY_CIDR,
                rendezvous=[f"{head.underlay_ip}:{RENDEZVOUS_PORT}"])
        return self.manifest

    def start(self, short: str, *, measurement: bytes = GOOD_MEASUREMENT, debug: bool = False,
              validity: timedelta = timedelta(hours=1), rogue_mode: str | None = None,
              serve_rendezvous: bool = False, extra: list[str] | None = None,
              reattest_interval: float = 600.0, reconcile_interval: float = 1.0,
              enrol: str | None = ENROL_ATTESTED) -> Host:
        host = self.hosts[short]
        if enrol not in (ENROL_ATTESTED, ENROL_VOUCHED, None):
            raise ValueError(f"unknown enrolment mode {enrol!r}")
        host.enrol, host.enrolment = enrol, None   # a (re)start is a new boot: new keys, enrolled anew
        attester = self.root.issue_attester(host.name, measurement=measurement, debug=debug, validity=validity)
        bundle = {"sim_attester": base64.b64encode(attester.to_secret_bytes()).decode()}
        head = next(h for h in self.hosts.values() if h.role == "head")
        program = [str(ROGUE), rogue_mode] if rogue_mode else ["-m", "conclave.runtime"]
        cmd = ["ip", "netns", "exec", host.ns, sys.executable, *program, "node",
               "--role", host.role, "--name", host.name, "--owner", "test",
               *self._signed_manifest().node_args(),
               "--underlay-host", host.underlay_ip, "--overlay-cidr", OVERLAY_CIDR,
               "--overlay-address", host.overlay_ip, "--rendezvous", f"{head.underlay_ip}:{RENDEZVOUS_PORT}",
               "--evidence", "sim", "--sim-root", str(self.root_pem), "--bundle-stdin",
               "--reattest-interval", str(reattest_interval), "--reconcile-interval", str(reconcile_interval),
               "--retry-interval", "2", "--tick", "0.2", "--metrics-port", str(METRICS_PORT),
               "--status-socket", str(host.status_socket)]
        if serve_rendezvous:
            cmd += ["--serve-rendezvous", str(RENDEZVOUS_PORT)]
        cmd += extra or []
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CONCLAVE_STATE_DIR": str(self.state_dir), "PYTHONUNBUFFERED": "1",
               "CONCLAVE_LOG_LEVEL": "INFO"}
        host.log_path = self.workdir / f"{short}.log"
        with open(host.log_path, "wb") as logf:
            host.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT,
                                         env=env, cwd=str(REPO))
        host.proc.stdin.write(json.dumps(bundle).encode())
        host.proc.stdin.close()
        return host

    # ------------------------------------------------------------ observation helpers
    def status(self, short: str) -> dict:
        return query(self.hosts[short].status_socket)

    def wait_status(self, short: str, timeout: float = 30.0) -> dict:
        """The node's status once its socket answers; a node started for enrolment that has not
        been enrolled yet this boot is enrolled first (see enroll)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            host = self.hosts[short]
            if host.proc is not None and host.proc.poll() is not None:
                raise AssertionError(f"{short} exited {host.proc.returncode}:\n{self.log(short)}")
            try:
                status = self.status(short)
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.1)
                continue
            if host.enrol is not None and host.enrolment is None:
                self.enroll(short)
                status = self.status(short)
            return status
        raise AssertionError(f"{short} status never came up: {last}\n{self.log(short)}")

    def enroll(self, short: str) -> dict:
        """Enrol this boot of the node for its stage as its owner (host.enrol says whether the
        owner attests it first); returns the node's answer. Fails the test when the owner's tool
        or the node refuses, except while the node's admission server is not answering yet."""
        host = self.hosts[short]
        deadline = time.monotonic() + ENROL_RETRY_S
        while True:
            try:
                answer = self._signed_manifest().enroll(host.status_socket, host.name, [self.root.certificate],
                                                        attest=host.enrol == ENROL_ATTESTED)
                break
            except ConclaveError as exc:
                if exc.reason != "node_unreachable" or time.monotonic() > deadline:
                    raise AssertionError(f"enrolling {short} failed [{exc.reason}]: {exc.message}\n"
                                         f"{self.log(short)}") from None
                time.sleep(0.2)
        if not (answer.get("ok") and answer.get("stage") == host.name and answer.get("proven")):
            raise AssertionError(f"{short} did not take its enrolment: {answer}")
        host.enrolment = answer
        return answer

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n" + self.logs())

    def log(self, short: str) -> str:
        path = self.hosts[short].log_path
        return path.read_text(errors="replace")[-4000:] if path and path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {k} ---\n{self.log(k)}" for k in self.hosts)

    def exec(self, short: str, cmd: list[str], timeout: float = 20, **kw) -> subprocess.CompletedProcess:
        return netns.run(cmd, netns=self.hosts[short].ns, check=False, timeout=timeout, **kw)

    def set_underlay(self, short: str, up: bool) -> None:
        """Partition (down) or heal (up) one host: its veth on the bridge."""
        netns.run(["ip", "link", "set", self.hosts[short].veth, "up" if up else "down"])

    def overlay_ping(self, short: str, ip: str) -> bool:
        return self.exec(short, ["ping", "-c1", "-W1", ip], timeout=10).returncode == 0

    def wireguard_go_pids(self, short: str) -> list[int]:
        """PIDs of the wireguard-go processes in this host's namespace (started by its agent)."""
        res = netns.run(["ip", "netns", "pids", self.hosts[short].ns], check=False)
        pids = []
        for pid in res.stdout.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                    pids.append(int(pid))
            except (OSError, ValueError):
                pass
        return pids

    def tcp_probe(self, short: str, ip: str, port: int, timeout: float = 2.0) -> bool:
        code = ("import socket,sys\n"
                f"s=socket.socket(); s.settimeout({timeout})\n"
                f"sys.exit(0 if s.connect_ex(('{ip}', {port})) == 0 else 1)\n")
        return self.exec(short, [sys.executable, "-c", code], timeout=timeout + 10).returncode == 0

    # ------------------------------------------------------------ teardown
    def stop(self, short: str) -> None:
        host = self.hosts[short]
        proc = host.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        host.proc = None

    def teardown(self) -> None:
        for short in list(self.hosts):
            try:
                self.stop(short)
            except Exception:
                pass
        for ns in self._created_ns:
            # anything still running inside a namespace we created was started by this test
            res = netns.run(["ip", "netns", "pids", ns], check=False)
            for pid in res.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for host in self.hosts.values():
            sock = Path("/var/run/wireguard") / f"{host.interface}.sock"
            try:
                sock.unlink()
            except FileNotFoundError:
                pass
        for ns in self._created_ns:
            netns.del_netns(ns)
        for link in reversed(self._created_links):
            netns.del_link(link)


def peer(status: dict, node: str, key: str | None = None) -> dict | None:
    """A node's record in an agent's status, by node name (and, given, its WireGuard key in
    base64: a restarted node's old boot keeps a record of its own beside the new one)."""
    return next((p for p in status["peers"] if p["node_id"] == node and key in (None, p["wg_public_key"])), None)


def meshed_with(lh: "LocalHosts", a: str, b: str, *, handshake: bool = False) -> bool:
    """Host a has host b's current boot meshed and on its device (and, with handshake=True, a
    completed handshake)."""
    st = lh.status(a)
    p = peer(st, lh.hosts[b].name, lh.status(b)["wg_public_key"])
    return bool(p and p["state"] == "meshed" and p["wg_public_key"] in st["device_peers"]
                and (not handshake or p["latest_handshake"]))
