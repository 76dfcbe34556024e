"""The local cluster supervisor: hosts -> network -> Ray -> vLLM -> endpoint, then teardown.

`conclave up` writes the cluster spec into the state file and either runs `run()` in the
foreground or starts this module detached (`python -m conclave.runtime.local.orchestrator
STATE_FILE`): one code path either way. The supervisor owns the forwarder, so the endpoint
lives exactly as long as it does. `teardown()` works from the state file alone, so
`conclave down` can clean up even after the supervisor died.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from conclave.runtime import log
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.local import hosts as local_hosts
from conclave.runtime.model.manifest import check_manifest, verify_layer_range
from conclave.runtime.node import engine
from conclave.runtime.node import process
from conclave.runtime.node import ray_cluster
from conclave.runtime.local import state as state_mod
from conclave.runtime.local.forwarder import Forwarder
from conclave.runtime.serving.plain_front import PlainFront
from conclave.runtime.local import network as network_mod
from conclave.runtime.local.network import NetworkLayer

RAY_JOIN_TIMEOUT = 180.0
BROKER_PORT = 51830
ENGINE_READY_TIMEOUT = 900.0
HEALTH_POLL = 1.0              # how often a running cluster is checked
RECOVERY_BACKOFF = 5.0         # between failed recovery attempts
RECOVERY_MESH_TIMEOUT = 180.0  # a restarted host must be admitted and meshed within this

# Engine log lines worth a progress line while starting (first occurrence only).
_ENGINE_MILESTONES = (
    ("Loading weights", "engine: loading weights"),
    ("Loading model", "engine: loading model"),
    ("torch.compile", "engine: compiling (torch.compile; the first start takes minutes on 2 cores)"),
    ("Compiling a graph", "engine: compiling graphs"),
    ("KV cache", "engine: allocating the KV cache"),
    ("Starting vLLM API server", "engine: API server starting"),
)


def _models_ready(url: str, api_key: str | None) -> bool:
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status == 200 and bool(json.loads(resp.read()).get("data"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_tail(path: str, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Supervisor:
    def __init__(self, state_file: Path, network: NetworkLayer | None = None) -> None:
        self.state_file = state_file
        self.state = state_mod.read(state_file) or {}
        self.network = network or network_mod.create(self.state.get("network_kind", "plain-veth"))
        self.forwarder: Forwarder | PlainFront | None = None
        self.stop_requested = threading.Event()

    # -- state -------------------------------------------------------------------------
    def _save(self) -> None:
        state_mod.write(self.state, self.state_file)

    def _phase(self, phase: str, message: str | None = None) -> None:
        self.state["phase"] = phase
        self._save()
        if message:
            log.progress(message)

    def _check_stop(self) -> None:
        if self.stop_requested.is_set():
            raise ConclaveError("interrupted", "cluster start interrupted")

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        st = self.state
        stages = int(st["stages"])
        run_dir = Path(st["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        logs = run_dir / "logs"

        self._phase("hosts", f"hosts: creating {stages} network namespaces on {st['underlay']}"
                    + (" (+1 for the model owner's key broker)" if self._nodes_serve() else ""))
        hosts = local_hosts.LocalHosts(st["cluster_id"], local_hosts.parse_underlay(st["underlay"]))
        self.hosts = hosts
        try:
            hosts.create(stages + (1 if self._nodes_serve() else 0))   # + the model owner's machine
        finally:
            st["created"] = hosts.created
            st["bridge"], st["bridge_ip"] = hosts.bridge, hosts.bridge_ip if hosts.bridge else None
            self._save()
        self._check_stop()

        self._phase("network", f"network: {self.network.kind}")
        st["groups"] = []

        def record(started) -> None:  # agents first: stopped last, after Ray and the engine
            self._record_group(started.name, started.pid)

        context = network_mod.ClusterContext(
            cluster_id=st["cluster_id"], run_dir=run_dir, state_dir=self.state_file.parent,
            layer_ranges=engine.stage_layer_ranges(int(st["model"]["num_layers"]), stages,
                                                   tuple(st["partition"]) if st.get("partition") else None),
            model_digest=st["model"]["digest"], public_port=self._public_port(), record=record,
            extra=self._network_extra(),
            head_api_key=st.get("api_key") if self._front_enabled() else None)   # the head's front checks it
        stage_hosts = hosts.hosts[:stages]
        if self._nodes_serve():
            self._seal_model(context, hosts.hosts[stages])
        try:
            addresses = self.network.bring_up(stage_hosts, context)
        finally:
            st["network"] = self.network.describe()
            self._save()
        plans = []
        binds = ray_cluster.omp_binds(stages, os.cpu_count() or 1)
        ranges = engine.stage_layer_ranges(int(st["model"]["num_layers"]), stages,
                                           tuple(st["partition"]) if st.get("partition") else None)
        st["nodes"] = []
        for i, host in enumerate(stage_hosts):
            plan = ray_cluster.RayNodePlan(host, addresses[host.name], head=(i == 0),
                                           temp_dir=str(run_dir / host.name), omp_bind=binds[i])
            plans.append(plan)
            node = {"name": host.name, "role": "head" if i == 0 else "worker", "netns": host.netns,
                    "underlay_ip": host.underlay_ip, "cluster_ip": plan.address.ip,
                    "ifname": plan.address.ifname, "omp_bind": plan.omp_bind,
                    "layers": list(ranges[i]), "ray_pid": None}
            if hasattr(self.network, "node_facts"):
                node.update(self.network.node_facts(host.name))
            st["nodes"].append(node)
        if st["network"].get("manifest"):
            st["manifest"] = st["network"]["manifest"]
        self._save()
        self._check_stop()
        self.plans = plans
        if self._nodes_serve():
            # every host's `conclave node` verifies its shard, starts its Ray node and (head) the engine
            self._start_public_endpoint()
            self._wait_head_serving(ENGINE_READY_TIMEOUT)
            self._wait_front()
            self._set_health("ok")
            self._phase("ready", f"ready: {st['endpoint']} (model {st['model']['name']})")
            return
        # Each stage checks its shard once the network admitted it (attested: after mutual admission).
        self._verify_shards()

        self._start_ray([n["name"] for n in st["nodes"]])
        self._check_stop()
        self._start_public_endpoint()
        self._start_engine()
        self._wait_front()
        self._set_health("ok")
        self._phase("ready", f"ready: {st['endpoint']} (model {st['model']['name']})")

    def _start_public_endpoint(self) -> None:
        """127.0.0.1:PORT in the root namespace. With the head's TLS front the bytes pass through (the
        front checks keys and routes inside the head); otherwise vLLM itself is the target, so an
        HTTP guard checks the API key on every route but /health and caps request bodies."""
        st = self.state
        target = self._engine_binding(self.plans[0])[1]
        if self._nodes_serve():
            # its own process (a host's port mapping): serving must outlive this orchestrator
            argv = [process.venv_bin("python"), "-m", "conclave.runtime.local.forwarder",
                    "127.0.0.1", str(st["port"]), target, str(self._public_port())]
            started = process.spawn("forwarder", argv, env=process.base_env(),
                                    log_path=Path(st["run_dir"]) / "logs" / "forwarder.log", netns_name=None)
            st["forwarder_pid"] = started.pid
            self._record_group("forwarder", started.pid)
        elif self._front_enabled():
            self.forwarder = Forwarder("127.0.0.1", int(st["port"]), target, self._public_port())
            self.forwarder.start()
        else:
            self.forwarder = PlainFront(upstream=f"{target}:{self._public_port()}", listen_host="127.0.0.1",
                                        listen_port=int(st["port"]), api_key=st.get("api_key"))
            self.forwarder.start_in_thread()

    def _stop_public_endpoint(self) -> None:
        if isinstance(self.forwarder, PlainFront):
            self.forwarder.stop_thread()
        elif self.forwarder is not None:
            self.forwarder.stop()

    def _start_ray(self, names: list[str]) -> None:
        """`ray start` on the named hosts (the head first), then wait until every node is in."""
        st = self.state
        head = self.plans[0]
        for plan, node in zip(self.plans, st["nodes"]):
            if node["name"] not in names:
                continue
            self._check_stop()
            log.progress(f"ray: starting {'head' if plan.head else 'worker'} on {node['name']} "
                         f"({plan.address.ip}, {plan.address.ifname})")
            started = ray_cluster.start_node(plan, head.address.ip, self.network, Path(st["run_dir"]) / "logs")
            node["ray_pid"] = started.pid
            self._record_group(started.name, started.pid)
            if plan.head:
                time.sleep(3)  # let the GCS bind before the workers dial it
        self._phase("ray", f"ray: waiting for {len(st['nodes'])} nodes to join")
        ray_cluster.wait_for_nodes(head, self.network, len(st["nodes"]), RAY_JOIN_TIMEOUT,
                                   lambda: all(process.alive(n["ray_pid"]) for n in st["nodes"]),
                                   Path(st["run_dir"]) / "logs")

    def _start_engine(self) -> None:
        st = self.state
        stages = int(st["stages"])
        head = self.plans[0]
        spec = engine.EngineSpec(model_path=st["model"]["path"], served_name=st["model"]["name"], stages=stages,
                                 dtype=st["model"]["dtype"], max_model_len=int(st["max_model_len"]),
                                 kv_cache_bytes=int(st["kv_cache_mb"]) * 1024 * 1024,
                                 partition=tuple(st["partition"]) if st.get("partition") else None)
        mode = "eager (one stage)" if stages == 1 else "compiled"
        self._phase("engine", f"engine: launching vLLM OpenAI server, pipeline_parallel_size={stages}, {mode}")
        bind_host, public_ip = self._engine_binding(head)
        started = engine.start(spec, head.host, head.address, self.network, st.get("api_key"),
                               Path(st["run_dir"]) / "logs", bind_host=bind_host)
        st["engine_pid"] = started.pid
        st["engine_log"] = started.log
        self._record_group("engine", started.pid)
        self._wait_engine(f"http://{public_ip}:{engine.ENGINE_PORT}/v1/models", started.log)

    def _record_group(self, name: str, pid: int) -> None:
        """Remember a process group for teardown; a restarted one replaces its dead predecessor."""
        groups = self.state.setdefault("groups", [])
        groups[:] = [g for g in groups if g["name"] != name or process.alive(int(g["pid"]))]
        groups.append({"name": name, "pid": pid, "start": _start_time(pid)})
        self._save()

    # -- the head's public endpoint ------------------------------------------------------------
    def _front_enabled(self) -> bool:
        return bool(self.state.get("front"))

    def _public_port(self) -> int:
        """The head's public API port on its underlay address (the forwarder's target)."""
        if self._front_enabled():
            return int(self.state["front"]["port"])
        return engine.ENGINE_PORT

    def _network_extra(self) -> dict:
        front = self.state.get("front")
        if not front:
            return {}
        st = self.state
        stages = int(st["stages"])
        binds = ray_cluster.omp_binds(stages, os.cpu_count() or 1)
        node_args = []
        for i in range(stages):
            node_args.append(["--served-name", st["model"]["name"],
                              "--dtype", st["model"]["dtype"], "--max-model-len", str(st["max_model_len"]),
                              "--kv-cache-mb", str(st["kv_cache_mb"]), "--omp-bind", binds[i],
                              "--run-dir", str(Path(st["run_dir"]) / f"n{i}")]
                             + ([] if i == 0 else ["--model-manifest", st["model"]["manifest"]])
                             + (["--reattest-interval", str(st["reattest_interval"])]
                                if st.get("reattest_interval") else []))
        return {"tee": st.get("tee") or "sim",   # a state without the field predates emulated hardware
                "gpus": st.get("gpus"),           # emulated H100s per host (None: the TEE mode's default)
                "head_node_args": ["--front-port", str(front["port"]), "--front-cert-out", front["ca_cert"],
                                   "--front-upstream", f"127.0.0.1:{engine.ENGINE_PORT}",
                                   "--model-manifest", self.state["model"]["manifest"]],
                "node_args": node_args}

    def _seal_model(self, context, broker_host) -> None:
        """Play the model owner: seal the model into one shard per stage, each under its own fresh
        key (kept only in the broker's 0700 key folder), and name shards and broker in the manifest."""
        from conclave.runtime.sealing.shards import seal_stages
        st = self.state
        owner_dir = Path(st["run_dir"]) / "model-owner"
        owner_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        sealed, key_dir = owner_dir / "sealed", owner_dir / "keys"
        self._phase("seal", f"model owner: sealing {st['model']['name']} into {st['stages']} stage shards, "
                            "one key per stage")
        manifest = json.loads(Path(st["model"]["manifest"]).read_text())
        seal_stages(Path(st["model"]["path"]), manifest, sealed, key_dir, list(context.layer_ranges),
                    progress=log.progress)
        context.extra["model_source"] = {"shards": str(sealed),
                                         "broker": f"{broker_host.underlay_ip}:{BROKER_PORT}"}
        context.extra["broker"] = {"host": broker_host, "key_dir": key_dir, "port": BROKER_PORT}
        st["model"]["sealed"] = {"shards": str(sealed), "broker": f"{broker_host.underlay_ip}:{BROKER_PORT}",
                                 "broker_netns": broker_host.netns}
        self._save()

    def _nodes_serve(self) -> bool:
        """Attested local mode: each host's node runs its own stage lifecycle; this process only
        plays the machines (namespaces, service manager, published port)."""
        return self.network.kind == "attested" and bool(self._front_enabled())

    def _wait_head_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        self._phase("engine", "nodes: each host verifies its shard and joins Ray; the head launches vLLM "
                              "once every stage is admitted, shard-verified and joined")
        while True:
            self._check_stop()
            process.reap()
            problems = self.network.problems()
            lost = [p for p in problems if p[2]]
            if lost:
                raise ConclaveError("agent_failed", lost[0][1], exit_code=ExitCode.RUNTIME)
            view = refresh_live(self.state)
            self._save()
            head = (self.state["nodes"][0].get("lifecycle") or {})
            if head.get("state") == "serving":
                return
            summary = ", ".join(f"{n['name']}={(n.get('lifecycle') or {}).get('state', '?')}" for n in view)
            if summary != last:
                log.progress(f"nodes: {summary}")
                last = summary
            if any((n.get("lifecycle") or {}).get("shard_error") for n in view):
                bad = next(n for n in view if (n.get("lifecycle") or {}).get("shard_error"))
                raise ConclaveError("model_shard_mismatch", f"{bad['name']}: {bad['lifecycle']['shard_error']}",
                                    exit_code=ExitCode.VERIFICATION_FAILED)
            if time.monotonic() > deadline:
                raise ConclaveError("engine_timeout", f"the head did not serve within {timeout:.0f}s ({summary})")
            time.sleep(2)

    def _engine_binding(self, head) -> tuple[str, str]:
        """(where vLLM listens inside the head, where the root-namespace forwarder connects).

        plain: the head's cluster address. attested without the TLS front: every address of the
        head (nftables keeps only the API port open on the underlay). attested with the front:
        vLLM on the head's loopback, the front server on the head's underlay address."""
        if self.network.kind != "attested":
            return head.address.ip, head.address.ip
        if self._front_enabled():
            return "127.0.0.1", head.host.underlay_ip
        return "0.0.0.0", head.host.underlay_ip

    def _wait_front(self) -> None:
        """With the front: the attestation endpoint must answer too before the cluster is ready."""
        if not self._front_enabled():
            return
        from conclave.runtime.serving import front_client
        deadline = time.monotonic() + 120
        while not front_client.attestation_ready(self.state):
            self._check_stop()
            if time.monotonic() > deadline:
                raise ConclaveError("front_timeout", "the head's /v1/attestation did not answer within 120s")
            time.sleep(2)

    def _verify_shards(self) -> None:
        """Each stage checks its own layers (plus embeddings / final norm where it holds them)
        against the model manifest before the engine loads anything; any mismatch stops the start."""
        st = self.state
        self._phase("verify", "model: every stage verifies its shard against the manifest")
        manifest = json.loads(Path(st["model"]["manifest"]).read_text())
        check_manifest(manifest)
        if manifest["digest"] != st["model"]["digest"]:
            raise ConclaveError("model_changed", "the model manifest changed since `conclave up` resolved it",
                                exit_code=ExitCode.VERIFICATION_FAILED)
        last = len(st["nodes"]) - 1
        for i, node in enumerate(st["nodes"]):
            start, end = node["layers"]
            verify_layer_range(Path(st["model"]["path"]), manifest, start, end, first=(i == 0), last=(i == last))
            node["shard_verified"] = True
            log.progress(f"model: {node['name']} layers [{start}, {end}) match the manifest")
        self._save()

    def _engine_answers(self, url: str) -> bool:
        if self._front_enabled():
            from conclave.runtime.serving import front_client
            return front_client.models_ready(self.state)
        return _models_ready(url, self.state.get("api_key"))

    def _wait_engine(self, url: str, log_path: str) -> None:
        deadline = time.monotonic() + ENGINE_READY_TIMEOUT
        seen: set[str] = set()
        offset = 0
        while time.monotonic() < deadline:
            self._check_stop()
            if not process.alive(int(self.state["engine_pid"])):
                raise ConclaveError("engine_failed", "the vLLM server exited while starting:\n" + _log_tail(log_path))
            for n in self.state["nodes"]:
                if not process.alive(int(n["ray_pid"])):
                    raise ConclaveError("ray_failed", f"the Ray node on {n['name']} exited while the engine started")
            try:
                with open(log_path, "rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read().decode(errors="replace")
                    offset = fh.tell()
            except OSError:
                chunk = ""
            for needle, message in _ENGINE_MILESTONES:
                if int(self.state["stages"]) == 1 and "ompil" in message:
                    continue  # one stage runs eager: nothing is compiled
                if needle not in seen and needle in chunk:
                    seen.add(needle)
                    log.progress(message)
            if self._engine_answers(url):
                return
            time.sleep(2)
        raise ConclaveError("engine_timeout", f"the vLLM server did not answer within {ENGINE_READY_TIMEOUT:.0f}s:\n"
                            + _log_tail(log_path))

    # -- run / stop ----------------------------------------------------------------------
    def serve_until_stopped(self) -> None:
        """Watch the cluster; on a lost stage, stop the engine at once (in-flight requests end with an
        error instead of hanging), then bring back what died and restart the engine, without an operator."""
        while not self.stop_requested.wait(HEALTH_POLL):
            process.reap()
            if hasattr(self.network, "maintain") and self.network.maintain():
                self.state["network"] = self.network.describe()
                self._save()
            if self._nodes_serve():
                self._watch_nodes()
                continue
            problems = self._problems()
            if problems:
                self._recover(problems)

    def _watch_nodes(self) -> None:
        """The service manager's part only: restart a host whose node process died; health and
        recovery are the head node's own (its lifecycle state and reasons)."""
        dead = [p for p in self.network.problems() if p[2]]
        if dead:
            self._set_health("degraded", dead)
            log.progress(f"degraded [{dead[0][0]}]: {dead[0][1]}; restarting that host's node")
            self.network.restart_hosts(sorted({p[2] for p in dead}))
        if hasattr(self.network, "enroll_pending"):
            self.network.enroll_pending()     # each restarted node's owner enrols its new keys
        refresh_live(self.state)
        self._save()

    def _problems(self) -> list[tuple[str, str, str | None]]:
        """(reason, detail, host to restart or None) for everything that stops serving now."""
        out = list(self.network.problems()) if hasattr(self.network, "problems") else []
        for n in self.state["nodes"]:
            if not process.alive(int(n["ray_pid"])):
                out.append(("ray_node_lost", f"the Ray node on {n['name']} exited", None))
        if not process.alive(int(self.state["engine_pid"])):
            out.append(("engine_exited", "the vLLM server exited", None))
        return out

    def _set_health(self, status: str, problems: list[tuple[str, str, str | None]] = ()) -> None:
        health = self.state.setdefault("health", {"status": "ok", "recoveries": 0})
        health["status"] = status
        health["problems"] = [{"reason": r, "detail": d} for r, d, _ in problems]
        if status == "degraded" and health.get("since") is None:
            health["since"] = time.time()
        if status == "ok":
            health["since"] = None
        self._save()

    def _recover(self, problems: list[tuple[str, str, str | None]]) -> None:
        first = problems[0]
        self._set_health("degraded", problems)
        self._phase("degraded", f"degraded [{first[0]}]: {first[1]}; stopping the engine and recovering")
        attempt = 0
        while not self.stop_requested.is_set():
            attempt += 1
            try:
                self._recover_once(problems)
            except ConclaveError as exc:
                self.state["health"]["last_error"] = {"reason": exc.reason, "message": exc.message[-500:]}
                log.progress(f"recovery attempt {attempt} failed [{exc.reason}]; retrying in {RECOVERY_BACKOFF:.0f}s")
                if self.stop_requested.wait(RECOVERY_BACKOFF):
                    return
                process.reap()
                problems = self._problems() or problems
                self._set_health("degraded", problems)
                continue
            self.state["health"]["recoveries"] = int(self.state["health"].get("recoveries", 0)) + 1
            self.state["health"]["last_error"] = None
            self._set_health("ok")
            self._phase("ready", f"ready again after recovery ({first[0]}): {self.state['endpoint']}")
            return

    def _recover_once(self, problems: list[tuple[str, str, str | None]]) -> None:
        st = self.state
        if isinstance(self.forwarder, PlainFront):   # the TLS front ends its own streams (stage_lost / upstream_lost)
            reason, detail, _ = problems[0]
            self.forwarder.end_in_flight("stage_lost", f"serving stopped [{reason}]: {detail}")
        process.stop_group(int(st["engine_pid"]), grace=5.0)   # never serve with a stage missing
        restart = sorted({h for _, _, h in problems if h})
        if restart:
            self.network.restart_hosts(restart)
        if hasattr(self.network, "wait_meshed"):
            self._phase("degraded", "recovering: waiting until every host is admitted and meshed again")
            self.network.wait_meshed(RECOVERY_MESH_TIMEOUT, self._check_stop)
        dead = [n["name"] for n in st["nodes"] if not process.alive(int(n["ray_pid"]))]
        if st["nodes"][0]["name"] in dead:   # a new GCS: every node joins it again
            for n in st["nodes"][1:]:
                process.stop_group(int(n["ray_pid"]), grace=5.0)
            dead = [n["name"] for n in st["nodes"]]
        if dead:
            self._start_ray(dead)
        self._check_stop()
        self._start_engine()
        self._wait_front()
        left = self._problems()
        if left:
            raise ConclaveError(left[0][0], f"still degraded after restarting the engine: {left[0][1]}")

    def shutdown(self) -> list[str]:
        self.state["phase"] = "stopping"
        self._save()
        self._stop_public_endpoint()
        left = teardown(self.state)
        self.network.tear_down()
        return left + _network_cleanup(self.state)


def refresh_live(st: dict) -> list[dict]:
    """Update the state's per-node lifecycle, Ray and engine pids and health from the nodes' own
    status sockets (attested local mode): what `conclave status` shows even with no orchestrator."""
    from conclave.runtime.agent import status as agent_status
    nodes = st.get("nodes") or []
    for node in nodes:
        sock = node.get("agent_socket")
        try:
            reply = agent_status.query(Path(sock), timeout=5) if sock else None
        except ConclaveError:
            reply = None
        node["lifecycle"] = (reply or {}).get("lifecycle") or None
        life = node["lifecycle"] or {}
        node["state"] = life.get("state") or ("booting" if reply is None else (reply or {}).get("state"))
        if life.get("shard"):
            node["shard"] = life["shard"]
            node["shard_verified"] = bool(life["shard"].get("verified"))
        if (life.get("ray") or {}).get("pid"):
            node["ray_pid"] = life["ray"]["pid"]
        if node.get("role") == "head" and (life.get("engine") or {}).get("pid"):
            st["engine_pid"] = life["engine"]["pid"]
            st["engine_log"] = str(Path(st["run_dir"]) / "n0" / "logs" / "engine.log")
    if nodes:
        head = nodes[0].get("lifecycle") or {}
        health = st.setdefault("health", {"status": "ok", "recoveries": 0})
        if head:
            serving = head.get("state") == "serving"
            if serving or health.get("status") != "degraded" or not health.get("problems") \
                    or health["problems"][0].get("reason") != "agent_lost":
                health["status"] = "ok" if serving else "degraded"
                health["problems"] = [] if serving else list(head.get("reasons") or [])
            health["recoveries"] = max(int(health.get("recoveries") or 0),
                                       int((head.get("engine") or {}).get("recoveries") or 0))
            if health["status"] == "degraded" and health.get("since") is None:
                health["since"] = time.time()
            if health["status"] == "ok":
                health["since"] = None
    return nodes


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _network_cleanup(st: dict) -> list[str]:
    if st.get("network_kind") != "attested":
        return []
    from conclave.runtime.local import attested
    return attested.cleanup(st)


def teardown(st: dict) -> list[str]:
    """Stop every recorded process group and namespace process; remove namespaces, links, run dir.

    Idempotent; returns what is left behind (empty when everything is gone).
    """
    for group in reversed(st.get("groups", [])):
        pid = int(group["pid"])
        if process.alive(pid) and group.get("start") is not None and _start_time(pid) != group["start"]:
            continue  # pid reused by an unrelated process: its original group is gone
        process.stop_group(pid)
    for name in st.get("created", {}).get("netns", []):
        process.kill_netns_processes(name)
    left = local_hosts.destroy(st.get("created", {}))
    left += _network_cleanup(st)
    run_dir = st.get("run_dir")
    if run_dir and Path(run_dir).name.startswith("cv") and Path(run_dir).exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        if Path(run_dir).exists():
            left.append(f"dir:{run_dir}")
    for group in st.get("groups", []):
        if process.alive(int(group["pid"])) and _start_time(int(group["pid"])) == group.get("start"):
            left.append(f"pid:{group['pid']}")
    return left


def run(state_file: Path, network: NetworkLayer | None = None) -> int:
    """Start the cluster and serve until SIGTERM/SIGINT or a failure; always tear down."""
    sup = Supervisor(state_file, network)
    sup.state["supervisor_pid"] = os.getpid()
    sup._save()

    def _stop(signum, frame):  # noqa: ARG001 - signal API
        sup.stop_requested.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    code = 0
    try:
        sup.start()
        sup.serve_until_stopped()
    except ConclaveError as exc:
        if exc.reason != "interrupted":
            sup.state["error"] = {"reason": exc.reason, "message": exc.message, "exit_code": int(exc.exit_code)}
            log.progress(f"error [{exc.reason}]: {exc.message}")
            code = int(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - recorded, then torn down
        sup.state["error"] = {"reason": "supervisor_crashed", "message": repr(exc)}
        log.progress(f"error [supervisor_crashed]: {exc!r}")
        code = 3
    finally:
        log.progress("stopping: tearing the cluster down")
        left = sup.shutdown()
        if left:
            sup.state["left_behind"] = left
            log.progress(f"teardown left: {', '.join(left)}")
        if sup.state.get("error"):
            sup.state["phase"] = "failed"
            sup.state["groups"], sup.state["created"] = [], {"netns": [], "links": []} if not left else sup.state.get("created")
            sup._save()
        else:
            state_mod.remove(state_file)
        log.progress("stopped")
    return code


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
