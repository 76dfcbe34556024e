"""StageRunner: what a node does after it is meshed, by itself: shard, Ray, and (head) the engine.

One thread next to the node agent, stepping once a second:
1. Shard: verify this stage's layers (plus embeddings / final norm / head where it holds them)
   against the model manifest once; a mismatch stops the node here (model_shard_mismatch).
2. Statement: publish a signed stage statement (shard digest and result, Ray state) that every
   Ping reply carries; the key that signs it is bound into this node's evidence.
3. Ray: once the node holds the Ray token, the head runs `ray start --head` on its overlay
   address (a fresh epoch each time); a worker joins the head whose verified statement names a
   running Ray epoch, and rejoins when that epoch changes (the head restarted Ray).
4. Engine (head only): when every manifest stage is meshed, has signed a verified shard and
   joined this epoch, the head launches vLLM pipeline-parallel over Ray on its loopback (the TLS
   front is the public endpoint; with the agent's inner namespace, on a unix socket there); when a
   stage is lost or the engine exits it stops the engine at once, reports `degraded` with the
   reasons, and launches again once the set is whole.
The Ray token only ever travels in the children's environment. When the agent has an inner
network namespace (runtime/node/inner_netns.py: lo + the WireGuard device only), Ray, the engine
and every probe of them run inside it, so nothing they bind is on the underlay.
"""
from __future__ import annotations

import json
import logging
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from conclave.runtime import log as clog
from conclave.runtime.errors import ConclaveError
from conclave.runtime.node.lifecycle import LifecycleReason, NodeState, StageView, stage_problems
from conclave.runtime.node.vllm_stage_order import ENV as STAGE_ORDER_ENV
from conclave.runtime.node import engine as engine_mod
from conclave.runtime.node import process
from conclave.runtime.node import ray_cluster
from conclave.runtime.node.address import ClusterAddress
from conclave.runtime.node.timeline import Timeline

log = logging.getLogger("conclave.node")
STEP = 1.0
RAY_RESTART_BACKOFF = 3.0
SHARD_RETRY_FIRST = 0.5     # the broker refuses until our owner enrolled us (usually well under a second)
SHARD_RETRY_MAX = 5.0       # doubling up to this while the broker or the shard source stays unreachable
RAY_PROBE_TIMEOUT = 60.0
ENGINE_READY_TIMEOUT = 900.0
_ENGINE_MILESTONES = (
    ("Loading weights", "engine: loading weights"),
    ("torch.compile", "engine: compiling (torch.compile; the first start takes minutes on 2 cores)"),
    ("KV cache", "engine: allocating the KV cache"),
    ("Starting vLLM API server", "engine: API server starting"),
)


@dataclass(frozen=True)
class StageSpec:
    """Everything a node needs to serve its stage (from the signed manifest and its command line)."""
    name: str
    index: int
    stages: int
    role: str
    layers: tuple[int, int]
    layer_counts: tuple[int, ...]          # per stage, in pipeline order (VLLM_PP_LAYER_PARTITION)
    model_path: Path
    model_manifest: dict = field(repr=False)
    served_name: str = "smollm2"
    dtype: str = "float32"
    max_model_len: int = 2048
    kv_cache_bytes: int = 512 * 1024 * 1024
    max_num_seqs: int = 16
    engine_port: int = engine_mod.ENGINE_PORT
    run_dir: Path = Path("/run/conclave/node")
    omp_bind: str = "0"
    api_key: str | None = field(default=None, repr=False)   # the head's vLLM checks it too (VLLM_API_KEY)
    model_source: dict | None = None       # the manifest's {"shards", "broker"}: sealed per stage
    shard_index: int = 0                   # this stage's shard (manifest order: ROOT/stage-K)
    shard_mount: Path = Path("/run/conclave/shard")   # private tmpfs; the same path on every node
    mount_shard_tmpfs: bool = True         # False: shard_mount already is this node's own memory fs
    stage_order: tuple[str, ...] = ()      # stage (node) names in pipeline order
    engine_socket: Path | None = None      # head: vLLM listens on this unix socket (in a 0700 folder), not TCP

    @property
    def sealed(self) -> bool:
        return self.model_source is not None

    @property
    def engine_model_path(self) -> Path:
        """Where vLLM loads weights from on every rank: the unsealed shard (same path on every node,
        each node's own tmpfs), or the plain model folder."""
        return self.shard_mount / "model" if self.sealed else self.model_path

    @property
    def is_head(self) -> bool:
        return self.role == "head"

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.stages - 1


class StageRunner:
    def __init__(self, agent, spec: StageSpec, address: ClusterAddress, *, worker_names: list[str] | None = None):
        self.agent = agent
        self.spec = spec
        self.address = address
        self.worker_names = list(worker_names or [])
        self.logs = spec.run_dir / "logs"
        self.state = NodeState.MESHED
        self.reasons: list[tuple[str, str]] = []
        self.shard: dict = {"sealed": False, "key_id": "", "layers": list(spec.layers), "digest": None,
                            "verified": False}
        self.ray_pid: int | None = None
        self.ray_epoch: str | None = None      # head: the epoch it runs; worker: the head epoch it joined
        self._ray_token_fp: str | None = None
        self._ray_exited_at = 0.0
        self.engine_pid: int | None = None
        self.engine_started_at: float | None = None
        self.engine_ready = False
        self.recoveries = 0
        self._was_serving = False
        self._engine_log_offset = 0
        self._milestones: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._published: bytes | None = None
        self.timeline = Timeline(started=getattr(agent, "started_wall", None))
        self._shard_retry_at = 0.0
        self._shard_retry_delay = 0.0   # 0.5, 1, 2, 4, 5, 5... s between tries for the sealed shard

    # -- thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.timeline.mark("agent_started")
        self._thread = threading.Thread(target=self._run, name="conclave-stage", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._stop_engine("node stopping")
        self._stop_ray()
        if self.spec.sealed and self.spec.mount_shard_tmpfs:
            _unmount(self.spec.shard_mount)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:   # the loop must survive anything one step does
                log.exception("stage step failed")
            self._stop.wait(STEP)

    # -- one step --------------------------------------------------------------------------
    def step(self) -> None:
        process.reap()
        self._mark_agent_steps()
        if self.shard["digest"] is None:
            self._verify_shard()
        if self.shard["digest"] is None:   # sealed shard not obtained yet (broker or source unreachable)
            self._publish()
            return
        if not self.shard["verified"]:
            self._set(NodeState.DEGRADED, [(LifecycleReason.MODEL_SHARD_MISMATCH, self.shard.get("error", ""))])
            self._publish()
            return
        if self.spec.is_head:
            self._head_step()
        else:
            self._worker_step()
        self._publish()

    def _verify_shard(self) -> None:
        if self.spec.sealed:
            self._open_sealed_shard()
            return
        from conclave.runtime.model.manifest import verify_layer_range
        from conclave.runtime.model.stage_check import shard_digest
        s = self.spec
        start, end = s.layers
        self.shard["digest"] = shard_digest(s.model_manifest, start, end, first=s.first, last=s.last)
        try:
            result = verify_layer_range(s.model_path, s.model_manifest, start, end, first=s.first, last=s.last)
        except ConclaveError as exc:
            self.shard.update(verified=False, error=f"[{exc.reason}] {exc.message}")
        except OSError as exc:
            self.shard.update(verified=False, error=f"cannot read the shard: {exc}")
        else:
            if result.ok:
                self.shard.update(verified=True)
                clog.progress(f"model: {s.name} layers [{start}, {end}) match the manifest")
            else:
                self.shard.update(verified=False, error="mismatched: " + ", ".join(result.mismatched[:8]))
        if not self.shard["verified"]:
            clog.progress(f"error [model_shard_mismatch]: {s.name}: {self.shard['error']}; this node will not serve")
        else:
            self.timeline.mark("shard_verified")
            self._set(NodeState.SHARD_VERIFIED, [])

    def _open_sealed_shard(self) -> None:
        """Fetch this stage's sealed shard from the manifest's source, get its key from the model
        owner's broker (which admits this node as its stage first), unseal it into this node's
        private tmpfs and verify it exactly. A shard that does not match stops the node
        (model_shard_mismatch); an unreachable source or broker is retried."""
        from conclave.runtime.model.shard_source import ShardMismatch, obtain_stage_shard, stage_shard_location
        from conclave.runtime.node.stage_key import fetch_stage_key
        from conclave.runtime.sealing.shards import key_from_secret
        s = self.spec
        now = time.monotonic()
        if now < self._shard_retry_at:
            return
        agent = self.agent
        try:
            secret = fetch_stage_key(s.model_source["broker"], me=agent.me, identity=agent.identity,
                                     source=agent.cfg.evidence_source, manifest_digest=agent.cfg.manifest_digest,
                                     enrolment=agent.enrolment, broker_key=_broker_key(s.model_source))
            clog.progress(f"model: the broker released the shard key of stage {s.name}")
            self.timeline.mark("stage_key")
            if s.mount_shard_tmpfs:
                _mount_private_tmpfs(s.shard_mount)
            else:
                s.shard_mount.mkdir(parents=True, exist_ok=True, mode=0o700)
            result = obtain_stage_shard(stage_shard_location(s.model_source["shards"], s.shard_index),
                                        key_from_secret(secret), s.model_manifest, s.layers, first=s.first,
                                        last=s.last, dest=s.engine_model_path, work_dir=s.run_dir)
            del secret
        except ShardMismatch as exc:
            self.shard.update(verified=False, digest=self.shard.get("digest") or "", sealed=True,
                              error=f"[{exc.reason}] {exc.message}")
            clog.progress(f"error [model_shard_mismatch]: {s.name}: {exc.message}; this node will not serve")
            return
        except ConclaveError as exc:
            self._shard_retry_delay = min(SHARD_RETRY_MAX, max(SHARD_RETRY_FIRST, self._shard_retry_delay * 2))
            self._shard_retry_at = now + self._shard_retry_delay
            self._set(NodeState.DEGRADED, [(LifecycleReason.SHARD_UNAVAILABLE, f"[{exc.reason}] {exc.message}")])
            log.warning("shard not available yet [%s]: %s", exc.reason, exc.message)
            return
        self.shard.update(result.to_json())
        self.shard.pop("error", None)
        self.timeline.mark("shard_verified", after="stage_key")
        self._set(NodeState.SHARD_VERIFIED, [])

    # -- Ray ---------------------------------------------------------------------------------
    def _token(self) -> bytes | None:
        return self.agent.ray_token()

    def _inner(self):
        """The agent's inner namespace (Ray and vLLM run there), or None."""
        return getattr(self.agent, "inner", None)

    def _netns_name(self) -> str | None:
        inner = self._inner()
        return inner.name if inner is not None else None

    def _ray_alive(self) -> bool:
        return self.ray_pid is not None and process.alive(self.ray_pid)

    def _start_ray(self, head_ip: str, epoch: str) -> None:
        token = self._token()
        if token is None:
            return
        plan = ray_cluster.RayNodePlan(host=None, address=self.address, head=self.spec.is_head,
                                       temp_dir=str(self.spec.run_dir / "ray"), omp_bind=self.spec.omp_bind)
        Path(plan.temp_dir).mkdir(parents=True, exist_ok=True)
        env = ray_cluster.ray_env(self.address, token.hex())
        env["VLLM_CPU_OMP_THREADS_BIND"] = plan.omp_bind
        clog.progress(f"ray: starting {'head' if plan.head else 'worker'} on {self.address.ip} "
                      f"({self.address.ifname})" + ("" if plan.head else f", joining {head_ip}"))
        started = process.spawn("ray", ray_cluster.node_argv(plan, head_ip), env=env,
                                log_path=self.logs / "ray.log", netns_name=self._netns_name())
        del env
        self.ray_pid = started.pid
        self.ray_epoch = epoch
        self._ray_token_fp = _fingerprint(token)
        self.timeline.mark("ray_started")

    def _stop_ray(self) -> None:
        if self.ray_pid is not None:
            process.stop_group(self.ray_pid, grace=5.0)
        self.ray_pid = None
        self.ray_epoch = None

    def _ray_needs_restart(self) -> bool:
        if not self._ray_alive():
            return True
        token = self._token()
        return token is not None and _fingerprint(token) != self._ray_token_fp

    # -- worker --------------------------------------------------------------------------------
    def _worker_step(self) -> None:
        head = self._meshed_head()
        if head is None:
            self._set(NodeState.DEGRADED if self._ray_alive() else NodeState.SHARD_VERIFIED,
                      [(LifecycleReason.HEAD_NOT_MESHED, "the manifest's head is not meshed with this node")])
            return
        if self._token() is None:
            self._set(NodeState.SHARD_VERIFIED, [(LifecycleReason.SECRET_MISSING, "waiting for the Ray token")])
            return
        ray = (head.get("statement") or {}).get("ray") or {}
        epoch = ray.get("epoch") if ray.get("running") else None
        if epoch is None:
            self._set(NodeState.SHARD_VERIFIED, [(LifecycleReason.STAGE_RAY_NOT_JOINED, "the head's Ray is not up")])
            return
        if self._ray_alive() and (epoch != self.ray_epoch or self._ray_needs_restart()):
            clog.progress(f"ray: the head's Ray cluster changed (epoch {epoch}); rejoining")
            self._stop_ray()
        if not self._ray_alive():
            if self.ray_pid is not None:   # died on its own
                self.ray_pid = None
                self._ray_exited_at = time.monotonic()
            if time.monotonic() - self._ray_exited_at < RAY_RESTART_BACKOFF:
                return
            self._start_ray(head["overlay_address"], epoch)
        self._set(NodeState.RAY_JOINED, [])

    def _meshed_head(self) -> dict | None:
        status = self.agent.status()
        for peer in status.get("peers", []):
            if peer.get("role") == "head" and peer.get("state") == "meshed":
                return {"name": peer["node_id"], "overlay_address": peer["overlay_address"],
                        "statement": peer.get("stage_statement")}
        return None

    # -- head --------------------------------------------------------------------------------
    def _head_step(self) -> None:
        if self._token() is None:
            self._set(NodeState.SHARD_VERIFIED, [(LifecycleReason.SECRET_MISSING, "no Ray token")])
            return
        if self._ray_needs_restart():
            if self.ray_pid is not None:
                clog.progress("ray: the head's Ray node exited; restarting it (workers rejoin the new epoch)")
                self._stop_engine("the head's Ray node exited")
                self.ray_pid = None
                self._ray_exited_at = time.monotonic()
            if time.monotonic() - self._ray_exited_at < RAY_RESTART_BACKOFF:
                return
            self._start_ray(self.address.ip, secrets.token_hex(8))
            self._publish()
            return
        problems = stage_problems(self._views(), ray_epoch=self.ray_epoch)
        if self.engine_pid is not None and not process.alive(self.engine_pid):
            clog.progress("degraded [engine_exited]: the vLLM server exited")
            process.stop_group(self.engine_pid, grace=5.0)   # what is left of its group (EngineCore, the Ray driver)
            self.engine_pid, self.engine_ready = None, False
            problems.append((LifecycleReason.ENGINE_EXITED, "the vLLM server exited; restarting it"))
        if problems:
            if self.engine_pid is not None:
                self._stop_engine(f"{problems[0][0]}: {problems[0][1]}")
            self._set(NodeState.DEGRADED if self._was_serving else NodeState.RAY_JOINED, problems)
            return
        if self.engine_pid is None:
            self.timeline.mark("stages_ready")   # every stage meshed, shard-verified, in this Ray epoch
            if not self._ray_has_every_stage():
                self._set(NodeState.RAY_JOINED, [(LifecycleReason.STAGE_RAY_NOT_JOINED,
                                                  "not every stage's Ray node is in the cluster yet")])
                return
            self.timeline.mark("ray_all_joined", after="stages_ready")
            self._start_engine()
        self._follow_engine_log()
        if not self.engine_ready:
            if self._engine_answers():
                self.engine_ready = True
                if self._was_serving:
                    self.recoveries += 1
                    clog.progress(f"ready again after recovery {self.recoveries}")
                self._was_serving = True
                self.timeline.mark("engine_ready", after="engine_launched")
                clog.progress("serving: every stage admitted, shard-verified and joined; the engine answers")
                self._set(NodeState.SERVING, [])
                return
            if time.monotonic() - (self.engine_started_at or 0) > ENGINE_READY_TIMEOUT:
                self._stop_engine("the vLLM server did not answer in time")
            self._set(NodeState.DEGRADED if self._was_serving else NodeState.RAY_JOINED,
                      [(LifecycleReason.ENGINE_STARTING, "the vLLM server is starting")])
            return
        self._set(NodeState.SERVING, [])

    def _views(self) -> list[StageView]:
        statements = self.agent.peer_statements()
        status = self.agent.status()
        meshed = {p["node_id"] for p in status.get("peers", []) if p.get("state") == "meshed"}
        return [StageView(name, name in meshed, statements.get(name)) for name in self.worker_names]

    def _ray_has_every_stage(self) -> bool:
        token = self._token()
        if token is None:
            return False
        env = ray_cluster.ray_env(self.address, token.hex())
        inner = self._inner()
        argv = (inner.exec_prefix() if inner is not None else []) + [
            process.venv_bin("python"), "-c", ray_cluster._WAIT_SNIPPET,
            f"{self.address.ip}:{ray_cluster.RAY_PORT}", str(self.spec.stages), str(RAY_PROBE_TIMEOUT)]
        try:
            res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=RAY_PROBE_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            return False
        finally:
            del env
        return res.returncode == 0

    def _engine_spec(self) -> engine_mod.EngineSpec:
        s = self.spec
        return engine_mod.EngineSpec(model_path=str(s.engine_model_path), served_name=s.served_name, stages=s.stages,
                                     dtype=s.dtype, max_model_len=s.max_model_len, kv_cache_bytes=s.kv_cache_bytes,
                                     partition=s.layer_counts if s.stages > 1 else None,
                                     max_num_seqs=s.max_num_seqs)

    def _start_engine(self) -> None:
        spec = self._engine_spec()
        token = self._token()
        mode = "eager (one stage)" if spec.stages == 1 else "compiled"
        clog.progress(f"engine: launching vLLM OpenAI server, pipeline_parallel_size={spec.stages}, {mode}")
        env = engine_mod.engine_env(spec, self.address, self.spec.api_key)
        env["RAY_AUTH_TOKEN"] = token.hex()
        ips = self._stage_ips()
        if ips is None:
            clog.progress("engine: a stage's overlay address is unknown; not launching")
            return
        env[STAGE_ORDER_ENV] = ",".join(ips)   # pipeline rank k on stage k's node (vllm_stage_order)
        uds = None
        if self.spec.engine_socket is not None:
            uds = str(self.spec.engine_socket)
            self.spec.engine_socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.spec.engine_socket.parent.chmod(0o700)
            try:
                self.spec.engine_socket.unlink()      # a previous engine's socket: vLLM binds a fresh one
            except FileNotFoundError:
                pass
        argv = engine_mod.engine_argv(spec, self.address, bind_host="127.0.0.1", uds=uds)
        started = process.spawn("engine", argv, env=env, log_path=self.logs / "engine.log",
                                netns_name=self._netns_name())
        del env
        self.engine_pid, self.engine_ready = started.pid, False
        self.engine_started_at = time.monotonic()
        self.timeline.mark("engine_launched")
        self._milestones = set()
        try:
            self._engine_log_offset = (self.logs / "engine.log").stat().st_size
        except OSError:
            self._engine_log_offset = 0

    def _stage_ips(self) -> list[str] | None:
        """Overlay addresses of the stages in pipeline order: ours and the meshed peers' (admitted:
        the address is bound into each peer's evidence)."""
        peers = {p["node_id"]: p["overlay_address"] for p in self.agent.status().get("peers", [])
                 if p.get("state") == "meshed"}
        peers[self.spec.name] = self.address.ip
        order = self.spec.stage_order or (self.spec.name,)
        if any(name not in peers for name in order):
            return None
        return [peers[name] for name in order]

    def _stop_engine(self, why: str) -> None:
        if self.engine_pid is None:
            return
        clog.progress(f"engine: stopping ({why})")
        self.timeline.mark("engine_stopped")
        process.stop_group(self.engine_pid, grace=5.0)
        self.engine_pid, self.engine_ready = None, False
        try:
            self.agent.mark_serving(False)
        except Exception:   # not serving yet, or stopping: nothing to undo
            pass

    def _engine_answers(self) -> bool:
        headers = {"Authorization": f"Bearer {self.spec.api_key}"} if self.spec.api_key else {}
        if self.spec.engine_socket is not None:
            return _models_over_unix_socket(self.spec.engine_socket, headers)
        request = urllib.request.Request(f"http://127.0.0.1:{self.spec.engine_port}/v1/models", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status == 200 and bool(json.loads(resp.read()).get("data"))
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _follow_engine_log(self) -> None:
        try:
            with open(self.logs / "engine.log", "rb") as fh:
                fh.seek(self._engine_log_offset)
                chunk = fh.read().decode(errors="replace")
                self._engine_log_offset = fh.tell()
        except OSError:
            return
        for needle, message in _ENGINE_MILESTONES:
            if needle not in self._milestones and needle in chunk:
                self._milestones.add(needle)
                clog.progress(message)

    # -- state ---------------------------------------------------------------------------------
    def _set(self, state: NodeState, reasons: list[tuple[str, str]]) -> None:
        if state != self.state or [r for r, _ in reasons] != [r for r, _ in self.reasons]:
            if reasons:
                log.info("node state %s (%s)", state, ", ".join(str(r) for r, _ in reasons))
            else:
                log.info("node state %s", state)
        if state == NodeState.SERVING and self.state != NodeState.SERVING:
            try:
                self.agent.mark_serving(True)
            except Exception:
                pass
        self.state = state
        self.reasons = [(str(r), d) for r, d in reasons]
        self.agent.stage_extra = self.describe()
        metrics = getattr(self.agent, "metrics", None)
        if metrics is not None:
            metrics.set_node_state(str(state), [r for r, _ in self.reasons])

    def describe(self) -> dict:
        """Public facts for status, metrics and /v1/attestation (no secrets)."""
        return {"state": str(self.state), "reasons": [{"reason": r, "detail": d} for r, d in self.reasons],
                "stage": self.spec.name, "index": self.spec.index, "layers": list(self.spec.layers),
                "shard": {k: v for k, v in self.shard.items() if k != "error"},
                "shard_error": self.shard.get("error"),
                "ray": {"running": self._ray_alive(), "epoch": self.ray_epoch, "pid": self.ray_pid},
                "engine": {"pid": self.engine_pid, "ready": self.engine_ready, "recoveries": self.recoveries}
                if self.spec.is_head else None,
                "timeline": self.timeline.to_json()}

    def _mark_agent_steps(self) -> None:
        """Timeline marks for what the agent did by itself: enrolled by our owner, every peer this
        stage needs meshed (head: every worker stage; worker: the head)."""
        if not self.timeline.seen("enrolled") and getattr(self.agent, "stage_proof", None) is not None:
            self.timeline.mark("enrolled")
        if not self.timeline.seen("peers_meshed"):
            meshed = {p.get("node_id") for p in self.agent.status().get("peers", []) if p.get("state") == "meshed"}
            if (set(self.worker_names) <= meshed) if self.spec.is_head else (self._meshed_head() is not None):
                self.timeline.mark("peers_meshed")

    def _publish(self) -> None:
        statement = {"stage": self.spec.name, "index": self.spec.index, "state": str(self.state),
                     "shard": {k: v for k, v in self.shard.items() if k != "error"},
                     "ray": {"running": self._ray_alive(), "epoch": self.ray_epoch}}
        body = json.dumps(statement, sort_keys=True).encode()
        if body != self._published:
            self.agent.publish_statement(statement)
            self._published = body
        self.agent.stage_extra = self.describe()


def _models_over_unix_socket(path: Path, headers: dict, timeout: float = 5) -> bool:
    """GET /v1/models from the vLLM server listening on the unix socket `path`: True when it lists a model."""
    from conclave.runtime.metrics import unix_http_get
    try:
        status, body = unix_http_get(str(path), "/v1/models", headers, timeout)
        return status == 200 and bool(json.loads(body).get("data"))
    except (OSError, ValueError):
        return False


def _fingerprint(token: bytes) -> str:
    import hashlib
    return hashlib.sha256(b"conclave/ray-token-fp\x00" + token).hexdigest()[:16]


def _broker_key(model_source: dict) -> bytes | None:
    """The broker's Ed25519 key the manifest names (model_source.broker_key, checked when the
    manifest was verified), or None when it names none."""
    from conclave.runtime.manifest.ed25519_keys import unb64
    value = model_source.get("broker_key")
    return None if value is None else unb64(value, "model_source.broker_key", length=32)


def _mount_private_tmpfs(path: Path) -> None:
    """A private tmpfs at `path` for the unsealed shard (this node's own mount namespace: in a CVM
    the guest's, in local mode the one `ip netns exec` gives each host)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if any(line.split()[1] == str(path) for line in Path("/proc/self/mounts").read_text().splitlines()
           if len(line.split()) > 1):
        return
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700,nosuid,nodev", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise ConclaveError(LifecycleReason.SHARD_UNAVAILABLE,
                            f"cannot mount a private tmpfs at {path}: {res.stderr.strip()[:200]}")


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
