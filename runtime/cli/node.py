"""`conclave node`: run one node agent (the same program in a CVM and in local mode).

Every node boots from the owner-signed deployment manifest (--manifest, owner pinned by
--owner-fingerprint or CONCLAVE_OWNER_FINGERPRINT): its policy admits peers and its digest is
bound into evidence. There is no unsigned policy path; a start without --manifest is a usage
error (reason manifest_required).

Secret material never comes through argv: in local mode the parent hands over the simulated
attester (and any secrets to broker) as a JSON bundle on stdin (--bundle-stdin), on an
inherited fd (--bundle-fd N), or in a 0600 temp file that is deleted as soon as it is read
(--bundle-file PATH). Bundle: {"sim_attester": base64, "secrets": {"name": base64},
"api_key": str (head with --front-port: the front then checks the deployment's API key itself),
"emulated_host": base64 (--evidence emulated: the host's emulated TDX/SNP identity, emulated/identity.py)}.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import secrets as pysecrets
import signal
import socket
import stat
import sys
from pathlib import Path

from cryptography import x509

from conclave.runtime import log as clog
from conclave.runtime.errors import UsageError

MAX_BUNDLE = 256 * 1024


def register(subparsers) -> None:
    p = subparsers.add_parser("node", help="run one node agent (attest, admit peers, WireGuard overlay)")
    p.add_argument("--role", required=True, choices=["head", "worker"])
    p.add_argument("--name", default=None, help="node name (default: hostname)")
    p.add_argument("--owner", default="", help="owner label shown to peers")
    p.add_argument("--manifest", type=Path, default=None,
                   help="REQUIRED: the signed deployment manifest: signature and owner are checked at boot, its "
                        "policy admits peers and its digest is bound into evidence (the node refuses a bad one)")
    p.add_argument("--owner-fingerprint", default=None,
                   help="SHA-256 fingerprint of the trusted deployment-owner key (default: CONCLAVE_OWNER_FINGERPRINT)")
    p.add_argument("--stage-name", default=None,
                   help="this node's stage name in the manifest (default: --name)")
    p.add_argument("--public-port", type=int, action="append", default=[], metavar="PORT",
                   help="extra underlay TCP port to let in (the head's public API)")
    p.add_argument("--front-port", type=int, default=None,
                   help="head only: serve the public API (TLS whose key the head's evidence binds, "
                        "/v1/attestation, /v1/report, OpenAI API forwarded to --front-upstream) on the "
                        "underlay address at this port")
    p.add_argument("--front-upstream", default=None,
                   help="the vLLM server inside the head (default: its unix socket when Ray and vLLM run in the "
                        "node's inner namespace, else 127.0.0.1:8000; a loopback address then means that socket)")
    p.add_argument("--front-cert-out", type=Path, default=None, help="write the front's public TLS certificate here")
    p.add_argument("--model-manifest", type=Path, default=None,
                   help="model manifest (JSON) for the run report's per-stage shard digests")
    p.add_argument("--allow-launch", action="store_true",
                   help="local mode: the supervisor may ask this agent (status socket) to start Ray/vLLM with the "
                        "Ray token in their environment")
    p.add_argument("--underlay-host", required=True, help="address peers reach this node at")
    p.add_argument("--listen-host", default=None, help="bind address for admission (default: underlay host)")
    p.add_argument("--overlay-cidr", default=None)
    p.add_argument("--overlay-address", default=None)
    p.add_argument("--wg-port", type=int, default=None)
    p.add_argument("--admission-port", type=int, default=None)
    p.add_argument("--rendezvous", action="append", default=[], metavar="HOST:PORT")
    p.add_argument("--serve-rendezvous", type=int, default=None, metavar="PORT",
                   help="also host a rendezvous on this port (underlay)")
    p.add_argument("--evidence", choices=["auto", "sim", "emulated"], default="auto",
                   help="auto: this CVM's TEE (configfs-tsm, SEV/TDX guest device); sim / emulated (TDX or SNP "
                        "hardware emulated through configfs-tsm's layout, identity in the bundle): local mode")
    vendor = p.add_argument_group("collateral (the verifier's own, from the vendor services)")
    vendor.add_argument("--pcs-url", default=None, metavar="URL",
                        help="Intel PCS base URL (default https://api.trustedservices.intel.com)")
    vendor.add_argument("--pcs-root-crl-url", default=None, metavar="URL",
                        help="Intel SGX root CA CRL URL (default Intel's certificates host)")
    vendor.add_argument("--kds-url", default=None, metavar="URL", help="AMD KDS base URL (default https://kdsintf.amd.com)")
    vendor.add_argument("--rim-url", default=None, metavar="URL",
                        help="NVIDIA RIM service base URL (default https://rim.attestation.nvidia.com)")
    vendor.add_argument("--nvidia-ocsp-url", default=None, metavar="URL",
                        help="NVIDIA OCSP responder for GPU device and RIM chains (default https://ocsp.ndis.nvidia.com/)")
    vendor.add_argument("--collateral-refresh", type=float, default=None, metavar="S",
                        help="fetch cached collateral again after this many seconds (default 3600)")
    vendor.add_argument("--collateral-dir", type=Path, default=None,
                        help="the verifier's collateral cache (default STATE_DIR/collateral/NAME)")
    p.add_argument("--gpu-evidence", choices=["none", "nvattest", "emulated"], default="none",
                   help="add NVIDIA GPU evidence (bound to the same challenge): nvattest (NVIDIA's CLI on real GPUs) "
                        "or emulated (local mode: the emulated H100s of --gpu-device-dir)")
    p.add_argument("--gpu-device-dir", type=Path, default=None, metavar="DIR",
                   help="--gpu-evidence emulated: this host's emulated GPU dir (gpu<i>/ with identity and switches)")
    p.add_argument("--sim-root", type=Path, default=None, help="PEM of the trusted simulated root (local mode)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bundle-stdin", action="store_true")
    src.add_argument("--bundle-fd", type=int, default=None)
    src.add_argument("--bundle-file", type=Path, default=None, help="0600 file, deleted once read")
    p.add_argument("--generate-secret", action="append", default=[], metavar="NAME",
                   help="broker a fresh random secret NAME (e.g. ray_token) generated in memory")
    p.add_argument("--want-secret", action="append", default=None, metavar="NAME",
                   help="secrets to fetch from the head (workers default: ray_token)")
    p.add_argument("--secret-roles", action="append", default=[], metavar="NAME=ROLE[,ROLE]")
    p.add_argument("--reattest-interval", type=float, default=600.0)
    p.add_argument("--reconcile-interval", type=float, default=2.0)
    p.add_argument("--max-evidence-age", type=float, default=None)
    p.add_argument("--retry-interval", type=float, default=5.0)
    p.add_argument("--tick", type=float, default=0.25)
    p.add_argument("--liveness-interval", type=float, default=2.0, metavar="S",
                   help="ping every admitted peer this often (0 disables liveness)")
    p.add_argument("--liveness-timeout", type=float, default=10.0, metavar="S",
                   help="evict a peer (peer_unreachable) after this long without a ping reply")
    p.add_argument("--firewall", choices=["auto", "nft", "none"], default="auto")
    p.add_argument("--inner-netns", choices=["auto", "on", "off"], default="auto",
                   help="run WireGuard's interface, Ray and vLLM in a private network namespace whose only "
                        "interfaces are lo and the WireGuard device, so nothing they bind is on the underlay "
                        "even without firewall rules (auto: on when this node serves a stage)")
    p.add_argument("--metrics-port", type=int, default=None, help="0 disables")
    p.add_argument("--metrics-host", default=None, metavar="ADDR",
                   help="bind address of /metrics (default: the overlay address); a specific IP such as the "
                        "pod IP, never a wildcard")
    p.add_argument("--interface", default=None)
    serve = p.add_argument_group("serving (the stage lifecycle: shard, Ray, and on the head the engine)")
    serve.add_argument("--model", type=Path, default=None, metavar="DIR",
                       help="the model folder holding this stage's shard; with --model-manifest the node verifies "
                            "its layers, starts Ray with the released token and (head) launches vLLM once every "
                            "stage of the manifest is admitted, shard-verified and joined")
    serve.add_argument("--shard-mount", type=Path, default=Path("/run/conclave/shard"), metavar="DIR",
                       help="sealed model: the private tmpfs this node unseals its shard into (the same path on "
                            "every node: vLLM loads one model path on every pipeline rank)")
    serve.add_argument("--shard-mount-mode", choices=["mount", "existing"], default="mount",
                       help="mount: mount a private tmpfs at --shard-mount (needs CAP_SYS_ADMIN in this node's own "
                            "mount namespace); existing: --shard-mount already lies on this node's own memory "
                            "filesystem (a pod's memory emptyDir)")
    serve.add_argument("--served-name", default="smollm2", help="model name the API serves")
    serve.add_argument("--dtype", default=None, help="engine dtype (default: the model manifest's)")
    serve.add_argument("--max-model-len", type=int, default=2048)
    serve.add_argument("--kv-cache-mb", type=int, default=512)
    serve.add_argument("--omp-bind", default=None, metavar="CPUS",
                       help="VLLM_CPU_OMP_THREADS_BIND of this node's Ray worker (CPU builds; default: every core)")
    serve.add_argument("--run-dir", type=Path, default=None,
                       help="where Ray's temp files and the engine log go (default: STATE_DIR/node-NAME)")
    p.add_argument("--status-socket", type=Path, default=None)
    p.set_defaults(func=run_node)


def _read_bundle(args) -> dict:
    if args.bundle_stdin:
        data = sys.stdin.buffer.read(MAX_BUNDLE + 1)
    elif args.bundle_fd is not None:
        with os.fdopen(args.bundle_fd, "rb", closefd=True) as fh:
            data = fh.read(MAX_BUNDLE + 1)
    elif args.bundle_file is not None:
        path = args.bundle_file
        try:
            st = path.stat()
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise UsageError(f"{path} must be mode 0600", reason="bundle_permissions")
            data = path.read_bytes()[: MAX_BUNDLE + 1]
        finally:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
    else:
        return {}
    if len(data) > MAX_BUNDLE:
        raise UsageError("bundle too large", reason="bundle_invalid")
    try:
        bundle = json.loads(data)
        if not isinstance(bundle, dict):
            raise ValueError
        return bundle
    except ValueError:
        raise UsageError("bundle is not a JSON object", reason="bundle_invalid") from None


def _b64(value, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise UsageError(f"bundle {what} is not base64", reason="bundle_invalid") from None


def build_config(args, bundle: dict | None = None):
    from conclave.overlay.addressing import DEFAULT_OVERLAY_CIDR, parse_cidr
    from conclave.overlay.evidence import NodeEvidenceSource
    from conclave.runtime.agent import config as ac
    from conclave.runtime.attestation import collect
    from conclave.runtime.attestation.sim import SimulatedAttester
    from conclave.runtime.keys.broker import DEFAULT_ALLOWED_ROLES
    from conclave.runtime.keys.secret import SecretValue

    bundle = _read_bundle(args) if bundle is None else bundle
    manifest = _signed_manifest(args)
    policy, digest = manifest.policy, manifest.digest
    roots: list[x509.Certificate] = []
    if args.evidence == "sim":
        if "sim_attester" not in bundle:
            raise UsageError("--evidence sim needs the simulated attester in the bundle (never argv)",
                             reason="attester_missing")
        attester = SimulatedAttester.from_secret_bytes(_b64(bundle["sim_attester"], "sim_attester"))
        # --gpu-evidence counts here too (it was silently dropped with --evidence sim)
        source = NodeEvidenceSource(collect.SimulatedSource(attester), gpu_sources(args))
    elif args.evidence == "emulated":
        source = emulated_evidence_source(bundle, gpu_sources(args))
    else:
        source = NodeEvidenceSource(collect.detect_cpu_source(), gpu_sources(args))
    if args.sim_root is not None:
        try:
            roots = x509.load_pem_x509_certificates(args.sim_root.read_bytes())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read --sim-root: {exc}", reason="sim_root_invalid") from None
    secrets_map = {}
    for name, value in (bundle.get("secrets") or {}).items():
        secrets_map[str(name)] = SecretValue(_b64(value, f"secret {name}"))
    for name in args.generate_secret:
        secrets_map[name] = SecretValue(pysecrets.token_bytes(32))
    roles = dict(DEFAULT_ALLOWED_ROLES)
    for item in args.secret_roles:
        name, _, spec = item.partition("=")
        allowed = frozenset(r for r in spec.split(",") if r)
        if not name or not allowed <= {"head", "worker"}:
            raise UsageError(f"--secret-roles {item!r}: NAME=head,worker")
        roles[name] = allowed
    if args.role == "head" and (args.model is not None or manifest.model_source) and "ray_token" not in secrets_map:
        secrets_map["ray_token"] = SecretValue(pysecrets.token_bytes(32))   # the head's Ray cluster secret
    want = args.want_secret if args.want_secret is not None else (["ray_token"] if args.role == "worker" else [])
    timing = ac.Timing(tick=args.tick, reconcile_interval=args.reconcile_interval,
                       reattest_interval=args.reattest_interval, max_evidence_age=args.max_evidence_age,
                       retry_interval=args.retry_interval, liveness_interval=args.liveness_interval,
                       liveness_timeout=args.liveness_timeout)
    kwargs = {}
    if args.wg_port is not None:
        kwargs["wireguard_port"] = args.wg_port
    if args.admission_port is not None:
        kwargs["admission_port"] = args.admission_port
    if args.metrics_port is not None:
        kwargs["metrics_port"] = args.metrics_port or None
    if args.metrics_host is not None:
        kwargs["metrics_host"] = _metrics_host(args.metrics_host)
    inner = wants_inner_netns(args, manifest)
    if args.front_port is not None and args.role == "head":
        # the head serves vLLM behind its front: one scrape of the agent's metrics sees both
        from conclave.runtime.serving.front import parse_upstream
        try:
            upstream = parse_upstream(front_upstream(args, inner))
        except ValueError as exc:
            raise UsageError(f"--front-upstream: {exc}", reason="front_invalid") from None
        if upstream.startswith("unix:"):
            from urllib.parse import quote
            kwargs["metrics_upstream"] = "http+unix://" + quote(upstream[len("unix:"):], safe="") + "/metrics"
        else:
            kwargs["metrics_upstream"] = upstream + "/metrics"
    try:
        cidr = parse_cidr(args.overlay_cidr or manifest.overlay_cidr or DEFAULT_OVERLAY_CIDR)
        addr = ipaddress.IPv4Address(args.overlay_address) if args.overlay_address else None
    except ValueError as exc:
        raise UsageError(f"overlay address/CIDR: {exc}", reason="overlay_invalid") from None
    return ac.NodeConfig(
        node_name=args.name or socket.gethostname(), role=args.role, owner=args.owner, policy=policy,
        manifest_digest=digest, evidence_source=source, underlay_host=args.underlay_host,
        listen_host=args.listen_host, overlay_cidr=cidr, overlay_address=addr,
        rendezvous=args.rendezvous, serve_rendezvous_port=args.serve_rendezvous, trusted_sim_roots=roots,
        secrets=secrets_map, allowed_roles=roles, want_secrets=want, interface=args.interface,
        firewall=args.firewall, status_socket=args.status_socket, timing=timing,
        public_tcp_ports=tuple(args.public_port) + ((args.front_port,) if args.front_port and args.role == "head" else ())
        + _own_rendezvous_ports(manifest, args.underlay_host),
        allow_launch=args.allow_launch, manifest=manifest, vendor_services=vendor_services(args),
        collateral_dir=args.collateral_dir, inner_netns=inner, **kwargs)


def wants_inner_netns(args, manifest) -> bool:
    """--inner-netns: on, off, or (auto) on whenever this node serves a stage (runs Ray; the head vLLM)."""
    mode = getattr(args, "inner_netns", "auto")
    if mode == "auto":
        return args.model is not None or bool(manifest.model_source)
    return mode == "on"


def node_run_dir(args, node_name: str) -> Path:
    from conclave.runtime import config as env_config
    return getattr(args, "run_dir", None) or (env_config.state_dir() / f"node-{node_name}")


def front_upstream(args, inner: bool) -> str:
    """Where the head's front reaches vLLM. With the inner namespace vLLM listens on a unix socket
    only (a loopback TCP address there is unreachable from the front's namespace), so the default
    and any loopback --front-upstream mean that socket."""
    given = getattr(args, "front_upstream", None)
    if inner and (given is None or _is_loopback(given)):
        from conclave.runtime.node.inner_netns import engine_socket_path
        name = getattr(args, "name", None) or socket.gethostname()
        return f"unix:{engine_socket_path(node_run_dir(args, name))}"
    return given or "127.0.0.1:8000"


def _engine_socket(args, inner_head: bool) -> Path | None:
    """The head's vLLM socket when its engine runs in the inner namespace (else vLLM listens on TCP)."""
    if not inner_head:
        return None
    upstream = front_upstream(args, True)
    return Path(upstream[len("unix:"):]) if upstream.startswith("unix:") else None


def _is_loopback(upstream: str) -> bool:
    from urllib.parse import urlsplit
    try:
        host = urlsplit(upstream if "://" in upstream else f"http://{upstream}").hostname or ""
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gpu_sources(args) -> list:
    """The GPU evidence sources of --gpu-evidence (none, NVIDIA's nvattest, or emulated H100s)."""
    from conclave.runtime.attestation import collect
    mode = getattr(args, "gpu_evidence", "none")
    if mode == "nvattest":
        return [collect.NvattestSource()]
    if mode == "emulated":
        from conclave.runtime.attestation.emulated.nvgpu_device import EmulatedGpuSource
        if getattr(args, "gpu_device_dir", None) is None:
            raise UsageError("--gpu-evidence emulated needs --gpu-device-dir", reason="gpu_device_invalid")
        try:
            return [EmulatedGpuSource(args.gpu_device_dir)]
        except collect.CollectionError as exc:
            raise UsageError(str(exc), reason="gpu_device_invalid") from None
    return []


def emulated_evidence_source(bundle: dict, gpus=()):
    """`--evidence emulated`: this host's emulated TDX/SNP identity from the bundle (never argv),
    collected through configfs-tsm's layout like a real CVM's evidence (with any GPU sources)."""
    from conclave.overlay.evidence import NodeEvidenceSource
    from conclave.runtime.attestation.emulated import identity, tsm
    if "emulated_host" not in bundle:
        raise UsageError("--evidence emulated needs the host's emulated TEE identity in the bundle (never argv)",
                         reason="attester_missing")
    try:
        host = identity.host_from_secret_bytes(_b64(bundle["emulated_host"], "emulated_host"))
    except ValueError:
        raise UsageError("bundle emulated_host is not an emulated TEE identity", reason="bundle_invalid") from None
    if isinstance(host, identity.EmulatedTdxHost):
        return NodeEvidenceSource(tsm.EmulatedTdxSource(host), gpus)
    return NodeEvidenceSource(tsm.EmulatedSnpSource(host), gpus)


def vendor_services(args):
    """The collateral URLs of --pcs-url / --pcs-root-crl-url / --kds-url (Intel's and AMD's by default)."""
    from conclave.runtime.agent.verifier import VendorServices
    defaults = VendorServices()
    try:
        return VendorServices(pcs=getattr(args, "pcs_url", None) or defaults.pcs,
                              pcs_root_crl=getattr(args, "pcs_root_crl_url", None) or defaults.pcs_root_crl,
                              kds=getattr(args, "kds_url", None) or defaults.kds,
                              rim=getattr(args, "rim_url", None) or defaults.rim,
                              nvidia_ocsp=getattr(args, "nvidia_ocsp_url", None) or defaults.nvidia_ocsp,
                              refresh_after_s=(defaults.refresh_after_s if getattr(args, "collateral_refresh", None)
                                               is None else args.collateral_refresh))
    except ValueError as exc:
        raise UsageError(f"collateral services: {exc}", reason="vendor_url_invalid") from None


def _own_rendezvous_ports(manifest, underlay_host: str) -> tuple[int, ...]:
    """Ports of the manifest's rendezvous endpoints on this node's own underlay address: a rendezvous
    running beside this node must stay reachable for the others through its firewall."""
    ports = []
    for endpoint in manifest.rendezvous:
        host, _, port = endpoint.rpartition(":")
        if host.strip("[]") == underlay_host and port.isdigit():
            ports.append(int(port))
    return tuple(ports)


def _signed_manifest(args):
    """The one source of a node's policy and bound digest: the owner-signed manifest, checked at
    boot (signature, pinned owner, this node listed as a stage). There is no unsigned path."""
    from conclave.runtime.manifest.node import require_manifest
    if args.manifest is None:
        raise UsageError("a node needs the signed deployment manifest: pass --manifest FILE "
                         "(and --owner-fingerprint FP or CONCLAVE_OWNER_FINGERPRINT)", reason="manifest_required")
    return require_manifest(args.manifest, trusted_owner=args.owner_fingerprint,
                            node=args.stage_name or args.name or socket.gethostname())


def _metrics_host(value: str) -> str:
    """A specific IP address: serve_metrics refuses wildcards, so refuse them here as a usage error."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise UsageError(f"--metrics-host must be an IP address, not {value!r}", reason="metrics_host_invalid") from None
    if address.is_unspecified:
        raise UsageError(f"--metrics-host {value} is a wildcard; pass a specific address (the pod or overlay IP)",
                         reason="metrics_host_invalid")
    return str(address)


def run_node(args) -> int:
    from conclave.runtime.agent.agent import NodeAgent

    clog.setup()
    bundle = _read_bundle(args)
    cfg = build_config(args, bundle)
    agent = NodeAgent(cfg)
    api_key = bundle_api_key(bundle)
    front = _head_front(args, cfg, agent, api_key=api_key)
    runner = _stage_runner(args, cfg, agent, api_key=api_key)
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    clog.progress(f"node {cfg.node_name} ({cfg.role}) overlay {cfg.overlay_address} on {cfg.interface}")

    def started() -> None:
        if front is not None:
            host, port = front.start_in_thread()
            clog.progress(f"head API (TLS, attested key) on {host}:{port}")
        if runner is not None:
            runner.start()

    def stopping() -> None:
        try:
            if front is not None:
                front.stop_thread()
        finally:
            if runner is not None:
                runner.stop()

    agent.run_forever(on_started=started, on_stopping=stopping)
    return 0


def _stage_runner(args, cfg, agent, api_key: str | None):
    """The stage lifecycle after meshing (runtime/node/stage_runner.py): the sealed shard the
    manifest's model_source names, or a plain --model folder; None when the node has neither."""
    if args.model is None and not cfg.manifest.model_source:
        return None
    from conclave.runtime import config as env_config
    from conclave.runtime.node.stage_runner import StageRunner, StageSpec
    from conclave.runtime.local.network import ClusterAddress
    if args.model_manifest is None:
        raise UsageError("serving needs --model-manifest (the per-layer digests the shard is checked against)",
                         reason="model_manifest_invalid")
    try:
        model_manifest = json.loads(args.model_manifest.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read --model-manifest: {exc}", reason="model_manifest_invalid") from None
    manifest = cfg.manifest
    if model_manifest.get("digest") != manifest.model_digest:
        raise UsageError("the model manifest's digest is not the one the deployment manifest signs",
                         reason="model_changed")
    stages = list(manifest.stages)
    names = [s.node for s in stages]
    me = manifest.stage_for(cfg.node_name)
    if me is None:
        raise UsageError(f"{cfg.node_name} is no stage of the manifest", reason="stage_unknown")
    if me.role != str(cfg.role):
        raise UsageError(f"{cfg.node_name} is the manifest's {me.role}, not a {cfg.role}", reason="role_mismatch")
    ordered = sorted(stages, key=lambda s: s.layer_start)
    index = [s.node for s in ordered].index(me.node)
    dtype = args.dtype or (model_manifest.get("dtype") if model_manifest.get("dtype") in ("float32", "bfloat16")
                           else "auto")
    cores = os.cpu_count() or 1
    spec = StageSpec(
        name=me.node, index=index, stages=len(stages), role=me.role, layers=(me.layer_start, me.layer_end),
        layer_counts=tuple(s.layer_end - s.layer_start for s in ordered), stage_order=tuple(s.node for s in ordered),
        model_path=args.model or args.shard_mount,
        model_manifest=model_manifest, served_name=args.served_name, dtype=dtype, max_model_len=args.max_model_len,
        kv_cache_bytes=args.kv_cache_mb * 1024 * 1024,
        run_dir=node_run_dir(args, cfg.node_name),
        omp_bind=args.omp_bind or (f"0-{cores - 1}" if cores > 1 else "0"), api_key=api_key,
        model_source=manifest.model_source, shard_index=names.index(me.node), shard_mount=args.shard_mount,
        mount_shard_tmpfs=args.shard_mount_mode == "mount",
        engine_socket=_engine_socket(args, getattr(cfg, "inner_netns", False) and me.role == "head"))
    return StageRunner(agent, spec, ClusterAddress(str(cfg.overlay_address), cfg.interface),
                       worker_names=[n for n in names if n != me.node])


def bundle_api_key(bundle: dict) -> str | None:
    """The deployment's API key for the head's front, from the bundle (never argv): a non-empty
    string without whitespace, or absent."""
    key = bundle.get("api_key")
    if key is None:
        return None
    if not isinstance(key, str) or not key or any(c.isspace() for c in key):
        raise UsageError("bundle api_key must be a non-empty string without whitespace", reason="bundle_invalid")
    return key


def _head_front(args, cfg, agent, api_key: str | None = None):
    """The head's public TLS front server (conclave.runtime.serving.front), bound into its evidence."""
    if args.front_port is None:
        return None
    if str(cfg.role) != "head":
        raise UsageError("--front-port needs --role head", reason="front_invalid")
    from conclave.runtime.serving.front import head_front_for_agent
    model_manifest = None
    if args.model_manifest is not None:
        try:
            model_manifest = json.loads(args.model_manifest.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read --model-manifest: {exc}", reason="model_manifest_invalid") from None
    front = head_front_for_agent(agent, manifest=cfg.manifest, upstream=front_upstream(args, getattr(cfg, "inner_netns", False)),
                                 listen_host=cfg.underlay_host, listen_port=args.front_port,
                                 tls_names=[cfg.underlay_host, "127.0.0.1", "localhost"],
                                 model_manifest=model_manifest, api_key=api_key)
    if args.front_cert_out is not None:
        front.write_public_cert(args.front_cert_out)
    return front
