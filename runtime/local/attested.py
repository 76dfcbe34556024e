"""AttestedOverlayNetwork: the confidential NetworkLayer of `conclave up --local` (the default).

bring_up() makes the cluster's trust material (simulated TEE root, owner key, signed manifest:
local_trust), then starts one `conclave node --manifest ...` agent per host inside the host's
namespace, each with its own SimulatedAttester handed over stdin (never argv). The head's agent
serves the rendezvous and generates the Ray token; the agents admit each other mutually, open
the WireGuard overlay (wireguard-go) and close the underlay with nftables (only WireGuard UDP,
admission gRPC, rendezvous and the head's public API port stay open). Workers fetch the Ray
token from the head's broker only after both sides admitted each other.

The token never leaves the agents: launch() asks a host's agent (its 0600 status socket) to start
`ray start` / vLLM / a probe with the token added to that child's environment.
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Sequence

from conclave.overlay.addressing import DEFAULT_OVERLAY_CIDR, derive_address, parse_cidr
from conclave.runtime import log
from conclave.runtime.agent import status as agent_status
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.local import trust as local_trust
from conclave.runtime.node import process
from conclave.runtime.local.network import ClusterAddress, ClusterContext, Host

WIREGUARD_PORT = 51820
ADMISSION_PORT = 51821
RENDEZVOUS_PORT = 51822
PCS_PORT = 51840          # the emulated Intel PCS / AMD KDS, on the model owner's host (emulated hardware)
KDS_PORT = 51841
RIM_PORT = 51842          # the emulated NVIDIA RIM service and OCSP responder (emulated H100s), same host
NVIDIA_OCSP_PORT = 51843
EMULATOR_READY_TIMEOUT = 30.0
LOCAL_COLLATERAL_REFRESH_S = 5.0   # verifiers fetch again this soon: revocation shows within a re-attestation
MESH_TIMEOUT = 120.0
PROBE_POLL = 1.0


def node_name(cluster_id: str, index: int) -> str:
    """Unique per cluster: wireguard-go sockets (/var/run/wireguard) are shared by all namespaces."""
    return f"cv{cluster_id}-n{index}"


def interface_name(cluster_id: str, index: int) -> str:
    return f"cv{cluster_id}w{index}"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class AttestedOverlayNetwork:
    kind = "attested"

    def __init__(self) -> None:
        self._hosts: dict[str, Host] = {}
        self._agents: dict[str, dict] = {}        # host name -> {"name", "socket", "pid", "log", ...}
        self._addresses: dict[str, ClusterAddress] = {}
        self.trust: local_trust.LocalTrust | None = None
        self.context: ClusterContext | None = None
        self._rendezvous: dict | None = None     # {"pid", "head", "restarts"}
        self._broker: dict | None = None          # the model owner's key broker process
        self._emulators: dict[str, dict] = {}      # "pcs" / "kds" -> {"pid", "url", "admin_socket", ...}

    # -- bring up ---------------------------------------------------------------------------------
    def bring_up(self, hosts: Sequence[Host], context: ClusterContext | None = None) -> dict[str, ClusterAddress]:
        if context is None:
            raise ConclaveError("context_missing", "the attested network needs the cluster context")
        self.context = context
        cid = context.cluster_id
        overlay = parse_cidr(DEFAULT_OVERLAY_CIDR)
        head = hosts[0]
        rendezvous = f"{head.underlay_ip}:{RENDEZVOUS_PORT}"
        stages = [(node_name(cid, i), "head" if i == 0 else "worker", context.layer_ranges[i])
                  for i in range(len(hosts))]
        log.progress("trust: simulated TEE root, owner key and signed deployment manifest for this cluster")
        self.trust = local_trust.create(context.state_dir / f"local-{cid}", stages=stages,
                                        model_digest=context.model_digest, overlay_cidr=str(overlay),
                                        rendezvous=[rendezvous], model_source=context.extra.get("model_source"),
                                        tee=context.extra.get("tee", local_trust.DEFAULT_TEE_MODE),
                                        gpus=context.extra.get("gpus"))
        agents_dir = context.run_dir / "agents"
        agents_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.trust.tee_mode != "sim":
            self._start_emulators((context.extra.get("broker") or {}).get("host"))
        self._start_rendezvous(head)
        if context.extra.get("broker"):
            self._start_broker(context.extra["broker"])
        for i, host in enumerate(hosts):
            name = node_name(cid, i)
            ifname = interface_name(cid, i)
            address = derive_address(name, overlay)
            sock = agents_dir / f"{host.name}.sock"
            argv = [process.venv_bin("python"), "-m", "conclave.runtime", "node",
                    "--role", "head" if i == 0 else "worker", "--name", name, "--owner", local_trust.OWNER_LABEL,
                    "--manifest", str(self.trust.manifest_path), "--owner-fingerprint", self.trust.owner_fingerprint,
                    *self._evidence_args(name), "--bundle-stdin",
                    "--underlay-host", host.underlay_ip, "--overlay-cidr", str(overlay),
                    "--overlay-address", str(address), "--interface", ifname,
                    "--wg-port", str(WIREGUARD_PORT), "--admission-port", str(ADMISSION_PORT),
                    "--rendezvous", rendezvous, "--firewall", "nft", "--status-socket", str(sock),
                    "--retry-interval", "2"]
            node_args = context.extra.get("node_args")
            if node_args:   # the node runs its own stage lifecycle (shard, Ray, engine)
                argv += list(node_args[i])
            else:
                argv.append("--allow-launch")
            if i == 0:
                # the rendezvous is its own process on the head's host: its port is opened like a public one
                argv += ["--public-port", str(RENDEZVOUS_PORT), "--generate-secret", "ray_token",
                         "--public-port", str(context.public_port)]
                argv += list(context.extra.get("head_node_args", []))
            self._hosts[host.name] = host
            self._agents[host.name] = {"name": name, "socket": sock, "pid": None, "argv": argv,
                                       "log": context.run_dir / "logs" / f"agent-{host.name}.log",
                                       "ifname": ifname, "overlay_ip": str(address), "head": i == 0}
            self._spawn_agent(host.name)
            self._addresses[host.name] = ClusterAddress(str(address), ifname)
            log.progress(f"overlay: agent {name} ({'head' if i == 0 else 'worker'}) on {host.underlay_ip}, "
                         f"overlay {address} on {ifname}")
        self._wait_meshed(len(hosts))
        return dict(self._addresses)

    def _evidence_args(self, name: str) -> list[str]:
        """How a node collects evidence and where its verifier gets collateral."""
        if self.trust.tee_mode == "sim":
            return ["--evidence", "sim", "--sim-root", str(self.trust.root_pem_path)]
        gpu_dir = self.trust.gpu_device_dirs.get(name)
        gpus = ["--gpu-evidence", "emulated", "--gpu-device-dir", str(gpu_dir)] if gpu_dir is not None else []
        return ["--evidence", "emulated", *gpus, *self._collateral_args(),
                "--collateral-dir", str(self.context.run_dir / "collateral" / name)]

    def _collateral_args(self) -> list[str]:
        """The emulated vendor services for a verifier (a node's or the broker's)."""
        if not self._emulators:
            return []
        out = ["--collateral-refresh", str(LOCAL_COLLATERAL_REFRESH_S)]
        if "pcs" in self._emulators:
            from conclave.runtime.attestation.emulated.pcs_server import ROOT_CRL_PATH
            url = self._emulators["pcs"]["url"]
            out += ["--pcs-url", url, "--pcs-root-crl-url", url + ROOT_CRL_PATH]
        if "kds" in self._emulators:
            out += ["--kds-url", self._emulators["kds"]["url"]]
        if "nvidia" in self._emulators:
            out += ["--rim-url", self._emulators["nvidia"]["url"],
                    "--nvidia-ocsp-url", self._emulators["nvidia"]["ocsp_url"]]
        return out

    def _bundle_identity(self, name: str) -> dict:
        """The host's TEE identity for its stdin bundle: emulated TDX/SNP keys or the simulated attester."""
        if self.trust.tee_mode == "sim":
            return {"sim_attester": base64.b64encode(self.trust.attester(name).to_secret_bytes()).decode()}
        return {"emulated_host": base64.b64encode(self.trust.host_identity(name)).decode()}

    def _start_emulators(self, host: Host | None) -> None:
        """The emulated Intel PCS, AMD KDS and NVIDIA RIM service + OCSP responder (when the hosts have
        emulated GPUs), each its own process on the model owner's host (the nodes reach them over the
        underlay, as they would reach the vendors' services); their vendor keys go over stdin, their
        admin controls are 0600 Unix sockets in the run folder."""
        if host is None:
            raise ConclaveError("emulator_host_missing", "emulated TEE hardware needs the model owner's host "
                                "for the emulated vendor services", exit_code=ExitCode.RUNTIME)
        folder = self.context.run_dir / "emulators"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for kind, port in (("pcs", PCS_PORT), ("kds", KDS_PORT), ("nvidia", RIM_PORT)):
            try:
                state = self.trust.vendor_state(kind)
            except KeyError:
                continue   # no host of that vendor in this cluster
            sock = folder / f"{kind}.sock"
            argv = [process.venv_bin("python"), "-m", "conclave.runtime.attestation.emulated.service", kind,
                    "--host", host.underlay_ip, "--port", str(port), "--admin-socket", str(sock)]
            if kind == "nvidia":
                argv += ["--ocsp-port", str(NVIDIA_OCSP_PORT)]
            started = process.spawn(f"emulated-{kind}", argv, env=_agent_env(),
                                    log_path=self.context.run_dir / "logs" / f"emulated-{kind}.log",
                                    netns_name=host.netns, stdin_data=state)
            del state
            self.context.record(started)
            self._emulators[kind] = {"pid": started.pid, "url": f"http://{host.underlay_ip}:{port}",
                                     "admin_socket": str(sock), "host": host.name}
            if kind == "nvidia":
                self._emulators[kind]["ocsp_url"] = f"http://{host.underlay_ip}:{NVIDIA_OCSP_PORT}/"
        deadline = time.monotonic() + EMULATOR_READY_TIMEOUT
        for kind, emu in self._emulators.items():
            while not Path(emu["admin_socket"]).exists():
                if not process.alive(emu["pid"]) or time.monotonic() > deadline:
                    raise ConclaveError("emulator_failed", f"the emulated {kind} did not start:\n"
                                        f"{_tail(self.context.run_dir / 'logs' / f'emulated-{kind}.log')}",
                                        exit_code=ExitCode.RUNTIME)
                time.sleep(0.2)
            log.progress(f"emulated hardware: {kind.upper()} at {emu['url']} (admin {emu['admin_socket']})")

    def _spawn_agent(self, host_name: str) -> None:
        """Start (or restart) a host's agent; its TEE identity goes over stdin, never argv."""
        agent, host = self._agents[host_name], self._hosts[host_name]
        payload = self._bundle_identity(agent["name"])
        if agent["head"] and self.context.head_api_key:
            payload["api_key"] = self.context.head_api_key   # the head's front checks it itself (stdin, never argv)
        bundle = json.dumps(payload).encode()
        del payload
        started = process.spawn(f"agent-{host_name}", agent["argv"], env=_agent_env(), log_path=agent["log"],
                                netns_name=host.netns, stdin_data=bundle)
        del bundle
        agent["pid"] = started.pid
        self.context.record(started)

    def _start_rendezvous(self, head: Host) -> None:
        """The untrusted announcement relay, as its own process on the head's host (as it would run
        beside the cluster in production): a dead or frozen rendezvous must not stop a running cluster."""
        argv = [process.venv_bin("python"), "-m", "conclave.runtime", "rendezvous",
                "--host", head.underlay_ip, "--port", str(RENDEZVOUS_PORT)]
        started = process.spawn("rendezvous", argv, env=_agent_env(),
                                log_path=self.context.run_dir / "logs" / "rendezvous.log", netns_name=head.netns)
        self._rendezvous = {"pid": started.pid, "head": head.name, "restarts": 0}
        self.context.record(started)

    def _start_broker(self, broker: dict) -> None:
        """The model owner's key broker on a host of its own (the model owner's machine): it admits
        each node with the manifest's policy and releases stage K's shard key only to stage K."""
        host: Host = broker["host"]
        argv = [process.venv_bin("python"), "-m", "conclave.runtime", "broker",
                "--manifest", str(self.trust.manifest_path), "--owner-fingerprint", self.trust.owner_fingerprint,
                "--key-dir", str(broker["key_dir"]), "--host", host.underlay_ip, "--port", str(broker["port"]),
                "--sim-root", str(self.trust.root_pem_path), *self._collateral_args(),
                "--collateral-dir", str(self.context.run_dir / "collateral" / "broker")]
        started = process.spawn("broker", argv, env=_agent_env(),
                                log_path=self.context.run_dir / "logs" / "broker.log", netns_name=host.netns)
        self._broker = {"pid": started.pid, "host": host.name, "underlay_ip": host.underlay_ip,
                        "port": broker["port"], "netns": host.netns}
        self.context.record(started)
        log.progress(f"model owner: key broker on {host.underlay_ip}:{broker['port']} (its own host)")

    # -- health and recovery (the local supervisor plays each host's service manager) -------------------
    def problems(self) -> list[tuple[str, str, str | None]]:
        """What keeps the cluster from serving, as (reason, detail, host to restart or None)."""
        out: list[tuple[str, str, str | None]] = []
        for host_name, agent in self._agents.items():
            if not process.alive(agent["pid"]):
                out.append(("agent_lost", f"the node agent on {host_name} exited", host_name))
        if out:
            return out
        head = next(h for h, a in self._agents.items() if a["head"])
        st = self._status(head)
        if st is None:
            return [("agent_unresponsive", f"the head agent on {head} does not answer its status socket", None)]
        for host_name, agent in self._agents.items():
            if agent["head"]:
                continue
            records = [p for p in st.get("peers", []) if p.get("node_id") == agent["name"]]
            if not any(p.get("state") == "meshed" for p in records):
                why = sorted({p.get("reason") or p.get("state") for p in records}) or ["not discovered"]
                out.append(("stage_not_meshed", f"{agent['name']} is not meshed with the head ({', '.join(why)})",
                            None))
        return out

    def maintain(self) -> bool:
        """Restart what may die without stopping the serving cluster (the rendezvous: running peers
        know each other's endpoints already). True when something was restarted."""
        rdv = self._rendezvous
        if rdv is None or process.alive(rdv["pid"]):
            return False
        restarts = rdv["restarts"] + 1
        log.progress(f"overlay: the rendezvous exited; restarting it (restart {restarts})")
        self._start_rendezvous(self._hosts[rdv["head"]])
        self._rendezvous["restarts"] = restarts
        return True

    def restart_hosts(self, host_names: Sequence[str]) -> None:
        """A host "reboots": whatever is left of it stops, its wireguard-go socket goes, its agent starts
        again with fresh keys and must be admitted again. The head's restart takes every host with it
        (its new agent generates a new Ray token, which the workers must fetch again)."""
        names = list(host_names)
        if any(self._agents[n]["head"] for n in names):
            names = list(self._agents)
        for name in names:
            process.kill_netns_processes(self._hosts[name].netns)
            _remove_wg_socket(self._agents[name]["ifname"])
        if any(self._agents[n]["head"] for n in names):
            self._start_rendezvous(self._hosts[next(h for h, a in self._agents.items() if a["head"])])
        for name in names:
            log.progress(f"overlay: restarting the node agent on {name}")
            self._spawn_agent(name)

    def wait_meshed(self, timeout: float = MESH_TIMEOUT, check_stop=None) -> None:
        self._wait_meshed(len(self._agents), timeout, check_stop)

    def _status(self, host_name: str) -> dict | None:
        try:
            return agent_status.query(self._agents[host_name]["socket"], timeout=5)
        except ConclaveError:
            return None

    def enroll_pending(self) -> list[str]:
        """The node owner's part after a host restarted: enrol every node that answers its status
        socket without an enrolment (a new boot has new keys). Returns the hosts enrolled now."""
        done = []
        for host_name, agent in self._agents.items():
            if not process.alive(agent["pid"]):
                continue
            st = self._status(host_name)
            if st is not None and st.get("enrolment") is None and self._enroll(host_name):
                done.append(host_name)
        return done

    def _enroll(self, host_name: str) -> bool:
        """Play the host's node owner (runtime/local/enrol.py): sign its per-boot keys for its stage."""
        from conclave.runtime.local.enrol import enroll_local_node
        agent = self._agents[host_name]
        try:
            answer = enroll_local_node(self.trust, agent["socket"], agent["name"])
        except ConclaveError as exc:
            log.progress(f"overlay: enrolling {agent['name']} failed [{exc.reason}]: {exc.message}")
            return False
        log.progress(f"overlay: {agent['name']} enrolled for its stage by owner {answer.get('owner')}")
        return True

    def _wait_meshed(self, count: int, timeout: float = MESH_TIMEOUT, check_stop=None) -> None:
        """Until every agent meshed with every other one and every worker holds the Ray token.
        check_stop: called every round; raises to abandon the wait (the supervisor was told to stop)."""
        deadline = time.monotonic() + timeout
        log.progress(f"overlay: mutual admission between {count} hosts")
        last = ""
        while True:
            if check_stop is not None:
                check_stop()
            pending = []
            for host_name, agent in self._agents.items():
                if not process.alive(agent["pid"]):
                    raise ConclaveError("agent_failed", f"the node agent on {host_name} exited:\n{_tail(agent['log'])}",
                                        exit_code=ExitCode.RUNTIME)
                st = self._status(host_name)
                if st is None:
                    pending.append(f"{host_name}: starting")
                    continue
                if st.get("enrolment") is None and not self._enroll(host_name):
                    pending.append(f"{host_name}: not enrolled by its owner yet")
                    continue
                # distinct names: a restarted peer's old record may still be listed beside the new one
                meshed = {p.get("node_id") for p in st.get("peers", []) if p.get("state") == "meshed"}
                if len(meshed) < count - 1:
                    reasons = sorted({p.get("reason") for p in st.get("peers", []) if p.get("reason")})
                    pending.append(f"{host_name}: {len(meshed)}/{count - 1} meshed {reasons or ''}")
                elif st.get("role") == "worker" and "ray_token" not in st.get("secrets_received", {}):
                    pending.append(f"{host_name}: waiting for the Ray token")
            if not pending:
                log.progress(f"overlay: all {count} hosts admitted each other; workers hold the Ray token")
                return
            last = "; ".join(pending)
            if time.monotonic() > deadline:
                raise ConclaveError("mesh_timeout", f"the overlay did not form within {timeout:.0f}s: {last}",
                                    exit_code=ExitCode.RUNTIME)
            time.sleep(0.5)

    # -- processes with the token -------------------------------------------------------------------
    def _launch(self, host: Host, argv: list[str], env: dict[str, str], log_path: Path) -> int:
        reply = agent_status.request(self._agents[host.name]["socket"],
                                     {"cmd": "launch", "argv": argv, "env": env, "log": str(log_path)}, timeout=15)
        if not reply.get("ok"):
            raise ConclaveError(reply.get("reason") or "launch_failed",
                                f"the agent on {host.name} refused to start {Path(argv[0]).name}")
        return int(reply["pid"])

    def launch(self, host: Host, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        return process.Started(name, self._launch(host, argv, env, log_path), str(log_path))

    def run_probe(self, host: Host, argv: list[str], env: dict[str, str], log_path: Path,
                  timeout: float) -> tuple[int | None, str]:
        try:
            log_path.unlink()
        except FileNotFoundError:
            pass
        pid = self._launch(host, argv, env, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = agent_status.request(self._agents[host.name]["socket"], {"cmd": "exit_code", "pid": pid})
            code = reply.get("exit_code")
            if code is not None:
                return int(code), _tail(log_path, 40)
            time.sleep(PROBE_POLL)
        process.stop_group(pid)
        return None, _tail(log_path, 40)

    def release_ray_token(self, host: Host) -> str:
        raise ConclaveError("token_not_released", "in attested mode the Ray token never leaves the node agents",
                            exit_code=ExitCode.POLICY_VIOLATED)

    # -- status / teardown ----------------------------------------------------------------------------
    def node_facts(self, host_name: str) -> dict:
        agent = self._agents.get(host_name, {})
        gpu_dir = self.trust.gpu_device_dirs.get(agent.get("name")) if self.trust is not None and agent else None
        return {"node_id": agent.get("name"), "overlay_ip": agent.get("overlay_ip"),
                "wg_ifname": agent.get("ifname"), "admission_port": ADMISSION_PORT, "wireguard_port": WIREGUARD_PORT,
                "tee": self.trust.tees.get(agent.get("name")) if self.trust is not None and agent else None,
                "agent_socket": str(agent.get("socket")) if agent else None,
                "gpu_device_dir": str(gpu_dir) if gpu_dir is not None else None,
                "gpus": gpu_summary(gpu_dir)}

    def describe(self) -> dict:
        out = {"kind": self.kind, "encrypted": True, "attested": True,
               "tee": self.trust.tee_mode if self.trust is not None else None,
               "overlay_cidr": DEFAULT_OVERLAY_CIDR, "wireguard_port": WIREGUARD_PORT,
               "admission_port": ADMISSION_PORT, "rendezvous_port": RENDEZVOUS_PORT}
        rdv = self._rendezvous
        if rdv is not None:
            out["rendezvous"] = {"pid": rdv["pid"], "restarts": rdv["restarts"]}
        if self._broker is not None:
            out["broker"] = dict(self._broker)
        if self.trust is not None:
            out.update({"manifest": str(self.trust.manifest_path), "sim_root": str(self.trust.root_pem_path),
                        "owner_fingerprint": self.trust.owner_fingerprint,
                        "measurement": self.trust.measurement.hex(), "trust_dir": str(self.trust.folder),
                        "test_roots_pem": (str(self.trust.test_roots_pem_path)
                                           if self.trust.test_roots_pem_path is not None else None),
                        "gpus_per_host": self.trust.gpus_per_host,
                        "gpu_test_roots_pem": (str(self.trust.gpu_roots_pem_path)
                                               if self.trust.gpu_roots_pem_path is not None else None)})
        if self._emulators:
            out["emulators"] = {k: dict(v) for k, v in self._emulators.items()}
        return out

    def tear_down(self) -> None:
        for agent in self._agents.values():
            if agent["pid"] is not None:
                process.stop_group(agent["pid"])
        rdv = self._rendezvous
        if rdv is not None:
            process.stop_group(rdv["pid"])
        for emu in self._emulators.values():
            process.stop_group(emu["pid"])
        self._agents = {}

    def __repr__(self) -> str:
        return f"AttestedOverlayNetwork(hosts={sorted(self._hosts)}, token=<held by the agents>)"


def gpu_summary(gpu_dir: Path | str | None) -> list[dict]:
    """A host's emulated GPUs as `conclave status` lists them (index, model, serial, switches read now);
    [] for a host without GPUs or whose device dir is gone."""
    if gpu_dir is None or not Path(gpu_dir).is_dir():
        return []
    from conclave.runtime.attestation.collect import CollectionError
    from conclave.runtime.attestation.emulated import nvgpu_device
    try:
        return nvgpu_device.gpu_summary(Path(gpu_dir))
    except CollectionError as exc:
        return [{"error": exc.reason or "gpu_device_invalid"}]


def _agent_env() -> dict[str, str]:
    from conclave.runtime import config
    env = process.base_env()
    for name in ("CONCLAVE_LOG_FORMAT", "CONCLAVE_LOG_LEVEL"):
        if (value := config.raw(name)) is not None:
            env[name] = value
    return env


def cleanup(st: dict) -> list[str]:
    """What `conclave down` removes beyond namespaces: stale wireguard-go sockets, trust folder."""
    import shutil
    left = []
    for node in st.get("nodes") or []:
        ifname = node.get("wg_ifname")
        if ifname and not _remove_wg_socket(ifname):
            left.append(f"file:/var/run/wireguard/{ifname}.sock")
    trust_dir = (st.get("network") or {}).get("trust_dir")
    if trust_dir and Path(trust_dir).name.startswith("local-") and Path(trust_dir).exists():
        shutil.rmtree(trust_dir, ignore_errors=True)
        if Path(trust_dir).exists():
            left.append(f"dir:{trust_dir}")
    return left



def _remove_wg_socket(ifname: str) -> bool:
    """Remove a stale wireguard-go control socket (the folder is shared by every namespace)."""
    sock = Path("/var/run/wireguard") / f"{ifname}.sock"
    try:
        sock.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
