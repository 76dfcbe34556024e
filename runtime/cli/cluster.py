"""`conclave up --local | down | status`: the local multi-host cluster (namespaces + Ray + vLLM)."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conclave.runtime import config, log, netns
from conclave.runtime.errors import ConclaveError, ExitCode, UsageError
from conclave.runtime.cli import status_table
from conclave.runtime.local import hosts as local_hosts
from conclave.runtime.model import registry
from conclave.runtime.node import engine
from conclave.runtime.local import network
from conclave.runtime.node import process
from conclave.runtime.local import state as state_mod
from conclave.runtime.local import orchestrator as supervisor
from conclave.runtime.local import trust as local_trust

DEFAULT_PORT = 8000
FRONT_PORT = 8443   # the head's TLS front server, on the head's underlay address (inside its namespace)
DETACH_TIMEOUT = 1200.0


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port", reason="bad_port")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ConclaveError("port_in_use", f"127.0.0.1:{port} is already in use; pick another --port",
                                exit_code=ExitCode.USAGE) from None


def _read_api_key(args) -> str | None:
    if args.no_api_key and args.api_key_file:
        raise UsageError("--no-api-key and --api-key-file exclude each other", reason="bad_api_key")
    if args.no_api_key:
        return None
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read --api-key-file: {exc.strerror}", reason="bad_api_key") from None
        if not key or any(c.isspace() for c in key):
            raise UsageError("--api-key-file must hold one non-empty key without whitespace", reason="bad_api_key")
        return key
    return secrets.token_urlsafe(32)


def _existing_cluster() -> dict | None:
    st = state_mod.read()
    if st is None:
        return None
    pid = st.get("supervisor_pid")
    if pid and process.alive(int(pid)):
        raise ConclaveError("cluster_running", f"a local cluster is already running ({st.get('endpoint')}); "
                            "run `conclave down` first", exit_code=ExitCode.USAGE)
    raise ConclaveError("stale_cluster", "a previous cluster left state behind; run `conclave down` first",
                        exit_code=ExitCode.USAGE)


def build_spec(args) -> dict:
    """Validate every argument and resolve the model before anything is created."""
    if not args.local:
        raise UsageError("only --local clusters are supported by `conclave up` today", reason="not_local")
    if args.nodes < 1 or args.nodes > 16:
        raise UsageError("--nodes must be between 1 and 16", reason="bad_nodes")
    if args.max_model_len < 16 or args.kv_cache_mb < 16:
        raise UsageError("--max-model-len and --kv-cache-mb are too small", reason="bad_engine_args")
    if getattr(args, "reattest_interval", None) is not None and args.reattest_interval < 5:
        raise UsageError("--reattest-interval must be at least 5 seconds", reason="bad_reattest_interval")
    folder, manifest = registry.lookup(args.model)
    partition = engine.parse_partition(args.partition, args.nodes, int(manifest["num_layers"]))
    if args.nodes > int(manifest["num_layers"]):
        raise UsageError(f"--nodes {args.nodes} exceeds the model's {manifest['num_layers']} layers", reason="bad_nodes")
    pool = local_hosts.parse_underlay(args.underlay_cidr)
    api_key = _read_api_key(args)
    netns.require_root_and_netns()
    _existing_cluster()
    _check_port(args.port)
    subnet = local_hosts.pick_subnet(pool, local_hosts.routes_in_root())
    cluster_id = secrets.token_hex(3)
    dtype = manifest["dtype"] if manifest["dtype"] in ("float32", "bfloat16") else "auto"
    network_kind = "plain-veth" if args.network == "plain" else args.network
    gpus = None
    if network_kind == "attested":
        try:
            gpus = local_trust.resolve_gpus(args.tee, args.gpus)
        except ValueError as exc:
            raise UsageError(str(exc), reason="bad_gpus") from None
    elif args.gpus:
        raise UsageError("--gpus needs the attested network (emulated GPUs attest)", reason="bad_gpus")
    front = None
    if network_kind == "attested":
        # The head's public API: the TLS front server (key bound into the head's evidence).
        front = {"port": FRONT_PORT, "ca_cert": str(state_mod.state_path().parent / f"local-{cluster_id}" / "head-tls.pem")}
    scheme = "https" if front else "http"
    return {
        "cluster_id": cluster_id,
        "phase": "launching",
        "stages": args.nodes,
        "partition": list(partition) if partition else None,
        "port": args.port,
        "endpoint": f"{scheme}://127.0.0.1:{args.port}/v1",
        "api_key": api_key,
        "underlay": str(subnet),
        "network_kind": network_kind,
        "tee": args.tee if network_kind == "attested" else None,
        "gpus": gpus,
        "front": front,
        "ca_cert": front["ca_cert"] if front else None,
        "model": {"name": args.model, "path": str(folder), "digest": manifest["digest"],
                  "manifest": registry.manifest_path(args.model),
                  "num_layers": int(manifest["num_layers"]), "dtype": dtype},
        "max_model_len": args.max_model_len,
        "kv_cache_mb": args.kv_cache_mb,
        "reattest_interval": getattr(args, "reattest_interval", None),
        "run_dir": f"/tmp/cv{cluster_id}",
        "nodes": [],
        "groups": [],
        "created": {"netns": [], "links": []},
    }


def _up(args) -> int:
    spec = build_spec(args)
    state_mod.write(spec)
    path = state_mod.state_path()
    if not args.detach:
        code = supervisor.run(path)
        st = state_mod.read(path)
        if st is not None and st.get("phase") == "failed" and not st.get("left_behind"):
            state_mod.remove(path)
        return code
    Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = Path(spec["run_dir"]) / "supervisor.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "conclave.runtime.local.orchestrator", str(path)],
                                env=_supervisor_env(), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    return _follow(proc, log_path, path, json_out=args.json)


def _supervisor_env() -> dict[str, str]:
    """The detached supervisor gets the plain child environment plus Conclave's own settings."""
    env = process.base_env()
    for name in ("CONCLAVE_STATE_DIR", "CONCLAVE_CACHE_DIR", "CONCLAVE_LOG_FORMAT", "CONCLAVE_LOG_LEVEL"):
        if (value := config.raw(name)) is not None:
            env[name] = value
    return env


def _follow(proc: subprocess.Popen, log_path: Path, path: Path, *, json_out: bool) -> int:
    """Echo the detached supervisor's progress until the endpoint answers (or the start fails)."""
    deadline = time.monotonic() + DETACH_TIMEOUT
    offset = 0
    try:
        while True:
            try:
                with open(log_path, "rb") as fh:
                    fh.seek(offset)
                    for line in fh.read().decode(errors="replace").splitlines(keepends=True):
                        if not line.endswith("\n"):
                            break
                        offset += len(line.encode())
                        if line.startswith("conclave: "):
                            sys.stderr.write(line)
            except OSError:
                pass
            st = state_mod.read(path) or {}
            if st.get("phase") == "ready":
                if json_out:
                    print(json.dumps(state_mod.public_view(st)))
                else:
                    print(st["endpoint"])
                return 0
            exited = proc.poll() is not None
            if st.get("phase") == "failed" or exited or time.monotonic() > deadline:
                err = st.get("error") or {"reason": "supervisor_exited", "message": "the cluster supervisor exited"}
                if not exited:
                    _stop_supervisor(st, proc.pid)
                if not (state_mod.read(path) or {}).get("left_behind"):
                    supervisor.teardown(state_mod.read(path) or {})
                    state_mod.remove(path)
                raise ConclaveError(err["reason"], err["message"], exit_code=ExitCode(err.get("exit_code", 3)))
            time.sleep(1)
    except KeyboardInterrupt:
        _stop_supervisor(state_mod.read(path) or {}, proc.pid)
        raise


def _stop_supervisor(st: dict, pid: int | None, timeout: float = 120.0) -> None:
    if not pid or not process.alive(pid):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"conclave" not in cmdline:
        return  # pid reused by something else
    try:
        os.kill(pid, signal.SIGTERM)
        signal_ok = True
    except ProcessLookupError:
        signal_ok = False
    deadline = time.monotonic() + timeout
    while signal_ok and time.monotonic() < deadline and process.alive(pid):
        process.reap()
        time.sleep(0.5)
    if process.alive(pid):  # hung: stop it; the caller then tears down from the state file
        log.progress(f"the supervisor (pid {pid}) did not stop within {timeout:.0f}s; killing it")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _down(args) -> int:
    st = state_mod.read()
    if st is None:
        if args.json:
            print(json.dumps({"ok": True, "removed": False}))
        else:
            log.progress("no local cluster is running")
        return 0
    log.progress("stopping the cluster supervisor")
    _stop_supervisor(st, st.get("supervisor_pid"))
    st = state_mod.read() or st  # the supervisor may have updated or removed it
    log.progress("removing processes, namespaces, interfaces and temporary files")
    left = supervisor.teardown(st)
    if left:
        raise ConclaveError("teardown_incomplete", f"could not remove: {', '.join(left)}")
    state_mod.remove()
    if args.json:
        print(json.dumps({"ok": True, "removed": True, "cluster_id": st.get("cluster_id")}))
    else:
        log.progress(f"cluster {st.get('cluster_id')} removed")
    return 0


def _status(args) -> int:
    st = state_mod.read()
    if st is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("no local cluster")
        return 0
    if st.get("network_kind") == "attested":
        supervisor.refresh_live(st)   # the nodes' own view: true even when the orchestrator is gone
    view = state_mod.public_view(st)
    view["orchestrator_pid"] = st.get("supervisor_pid")
    pid = st.get("supervisor_pid")
    view["running"] = bool(pid and process.alive(int(pid)))
    for node in view.get("nodes") or []:
        node["ray_alive"] = bool(node.get("ray_pid") and process.alive(int(node["ray_pid"])))
        if node.get("gpu_device_dir"):   # emulated GPUs: their switches as they are now
            from conclave.runtime.local.attested import gpu_summary
            node["gpus"] = gpu_summary(node["gpu_device_dir"])
    if args.json:
        print(json.dumps(view))
        return 0
    print(status_table.render(view))   # one row per node; "-" where a field is not known yet
    return 0


def register(subparsers) -> None:
    up = subparsers.add_parser("up", help="start a cluster (--local: N network-namespace hosts on this machine)")
    up.add_argument("--local", action="store_true", help="build the hosts as local network namespaces")
    up.add_argument("--nodes", type=int, default=2, help="number of hosts = pipeline stages (default 2)")
    up.add_argument("--model", default=registry.DEFAULT_MODEL, help="imported model name (default smollm2)")
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="endpoint port on 127.0.0.1 (default 8000)")
    up.add_argument("--partition", help="layers per stage, e.g. 10,10,10 (VLLM_PP_LAYER_PARTITION)")
    up.add_argument("--detach", action="store_true", help="return once the endpoint answers")
    up.add_argument("--api-key-file", help="file holding the API key (default: generate one)")
    up.add_argument("--no-api-key", action="store_true", help="serve without an API key")
    up.add_argument("--underlay-cidr", default=local_hosts.DEFAULT_UNDERLAY_POOL,
                    help="pool for host addresses; a free /24 is picked (default 198.18.0.0/15)")
    up.add_argument("--network", choices=sorted(network.NETWORK_LAYERS), default=network.DEFAULT_NETWORK,
                    help="how the hosts talk: attested (default: simulated TEEs, signed manifest, attested "
                         "WireGuard overlay, underlay closed by nftables) or plain (unencrypted veth, for "
                         "comparison benchmarks; plain-veth is an alias)")
    up.add_argument("--tee", choices=list(local_trust.TEE_MODES), default=local_trust.DEFAULT_TEE_MODE,
                    help="attested network: the hosts' CPU TEE: mixed (default: TDX, SNP, TDX, ...), tdx or snp "
                         "(emulated hardware with this cluster's test roots, emulated Intel PCS / AMD KDS), or sim "
                         "(the simulated format)")
    up.add_argument("--reattest-interval", type=float, default=None, metavar="S",
                    help="attested network: every node re-attests its peers this often (default: the node's, 600 s)")
    up.add_argument("--gpus", type=int, default=None, metavar="K",
                    help="emulated NVIDIA H100s per host with emulated TEEs (default 1; 0: none): each stage of "
                         "the manifest then requires K attested H100s in CC mode, validated against the "
                         "cluster's test RIMs")
    up.add_argument("--max-model-len", type=int, default=2048)
    up.add_argument("--kv-cache-mb", type=int, default=256, help="KV cache per stage in MiB (default 256)")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=_up)

    down = subparsers.add_parser("down", help="stop the local cluster and remove everything it created")
    down.add_argument("--json", action="store_true")
    down.set_defaults(func=_down)

    status = subparsers.add_parser("status", help="the local cluster's endpoint, API key and nodes")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)
