"""A host the cluster never admitted: its own namespace on the cluster's underlay bridge.

Used as the vantage point of an attacker on the untrusted network, and to run a node with bad
evidence (a wrong measurement certified by the cluster's own simulated root) against the
running cluster. Everything it creates is removed in close(), even after a failure.
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
from pathlib import Path

from conclave.runtime import netns
from conclave.runtime.local import trust as local_trust

ROGUE_NODE = Path(__file__).resolve().parents[1] / "overlay" / "rogue_node.py"

SCAN_SNIPPET = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
targets = json.loads(sys.argv[1])
def probe(t):
    s = socket.socket(); s.settimeout(1.5)
    try:
        s.connect((t[0], t[1])); return t
    except OSError:
        return None
    finally:
        s.close()
with ThreadPoolExecutor(128) as pool:
    print(json.dumps([t for t in pool.map(probe, [tuple(t) for t in targets]) if t]))
"""


class Outsider:
    def __init__(self, status: dict, index: int = 100):
        cid = status["cluster_id"]
        net = ipaddress.IPv4Network(status["underlay"])
        self.netns = f"cvx{secrets.token_hex(3)}"
        self.veth = f"{self.netns}v"
        self.ip = str(net.network_address + index)
        self.bridge = f"cv{cid}br"
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        netns.add_netns(self.netns)
        try:
            netns.attach_host(self.netns, self.bridge, self.veth, f"{self.ip}/{net.prefixlen}", "eth0")
        except Exception:
            self.close()
            raise

    def scan(self, targets: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """TCP connect to every (ip, port) from this namespace; the set that accepted."""
        res = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-c", SCAN_SNIPPET,
                              json.dumps(targets)], capture_output=True, text=True, timeout=120, check=True)
        return {tuple(t) for t in json.loads(res.stdout)}

    def start_bad_node(self, status: dict, workdir: Path) -> Path:
        """`conclave node` with evidence from the cluster's own simulated root but a WRONG measurement.

        It boots from the cluster's real signed manifest (so it binds the real manifest's digest) as
        the rogue program tests/overlay/rogue_node.py own_policy=FILE, which swaps in a policy that
        pins its own (wrong) measurement: it passes its self-check and really tries to join.
        Returns its status socket path."""
        self.workdir = workdir
        net = status["network"]
        trust = Path(net["trust_dir"])
        root = local_trust.load_root(trust)
        wrong = bytes(b ^ 0xFF for b in bytes.fromhex(net["measurement"]))
        from conclave.runtime.manifest.document import DeploymentManifest as _Manifest
        _manifest = _Manifest.load(status["manifest"], trusted_owner=net["owner_fingerprint"])
        name = self.stage = next(s.node for s in _manifest.stages if s.role == "worker")   # an impostor of it
        attester = root.issue_attester(name, measurement=wrong)
        from conclave.runtime.manifest.document import DeploymentManifest
        manifest = DeploymentManifest.load(status["manifest"], trusted_owner=net["owner_fingerprint"])
        own_policy = local_trust.sim_policy(wrong)
        gpu_args = []
        if net.get("gpus_per_host"):   # the stage asks for GPUs: the impostor brings an emulated H100 of its own
            gpu_args, own_policy = self._own_gpus(net, trust, workdir, own_policy)
        policy = workdir / "policy.json"
        policy.write_text(json.dumps(own_policy))
        sock = workdir / "intruder.sock"
        head = status["nodes"][0]
        # the manifest lists only the cluster's stages: the intruder claims a worker's stage to boot
        stage = next(s.node for s in manifest.stages if s.role == "worker")
        argv = [sys.executable, str(ROGUE_NODE), f"own_policy={policy}", "node", "--role", "worker", "--name", name,
                "--manifest", str(status["manifest"]), "--owner-fingerprint", net["owner_fingerprint"],
                "--stage-name", stage, "--model-manifest", status["model"]["manifest"],
                "--evidence", "sim", "--sim-root", net["sim_root"], "--bundle-stdin",
                "--underlay-host", self.ip, "--overlay-cidr", net["overlay_cidr"],
                "--overlay-address", str(ipaddress.IPv4Network(net["overlay_cidr"]).broadcast_address - 7),
                "--shard-mount", str(workdir / "shard"),
                "--interface", f"{self.netns}w", "--rendezvous", f"{head['underlay_ip']}:{net['rendezvous_port']}",
                "--firewall", "none", "--metrics-port", "0", "--status-socket", str(sock), "--retry-interval", "2",
                *gpu_args]
        bundle = json.dumps({"sim_attester": base64.b64encode(attester.to_secret_bytes()).decode()}).encode()
        log = open(workdir / "intruder.log", "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], stdin=subprocess.PIPE,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.proc.stdin.write(bundle)
        self.proc.stdin.close()
        log.close()
        deadline = time.monotonic() + 30
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the intruder node did not start:\n"
                                     + (workdir / "intruder.log").read_text()[-2000:])
            time.sleep(0.2)
        return sock

    @staticmethod
    def _own_gpus(net: dict, trust: Path, workdir: Path, policy: dict) -> tuple[list[str], dict]:
        """An emulated H100 certified by the cluster's own GPU authority (a genuine GPU in the wrong
        hands), and the impostor's own policy allowing it, so it passes its self-check and tries."""
        from cryptography.hazmat.primitives.serialization import Encoding
        authority = local_trust.load_gpu_authority(trust)
        gpu_dir = authority.provision(workdir / "gpus", 0x99, int(net["gpus_per_host"]))[0].parent
        pem = lambda cert: cert.public_bytes(Encoding.PEM).decode()   # noqa: E731
        policy = dict(policy, allowed_tee=["sim", "nvgpu"], nvgpu={"require_rim": True},
                      unsafe_test_roots={"nvgpu": [pem(authority.device_root)],
                                         "nvgpu_rim": [pem(authority.rim_root)]})
        nvidia = net["emulators"]["nvidia"]
        return (["--gpu-evidence", "emulated", "--gpu-device-dir", str(gpu_dir), "--rim-url", nvidia["url"],
                 "--nvidia-ocsp-url", nvidia["ocsp_url"], "--collateral-dir", str(workdir / "collateral")], policy)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for pid in subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True,
                                  text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        netns.del_netns(self.netns)
        netns.del_link(self.veth)
        sock = Path("/var/run/wireguard") / f"{self.netns}w.sock"
        if sock.exists():
            sock.unlink()
