"""`conclave broker`: the model owner's key broker (stage K's shard key only to the node admitted as stage K).

It runs on the model owner's machine (in local mode: a network namespace of its own), pins the
deployment owner like every node, admits with the manifest's policy, and reads the per-stage
keys from the 0600 files `conclave model seal --stages` wrote (--key-dir). Keys never appear in
argv, logs or output.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from conclave.runtime import log as clog
from conclave.overlay import rpc
from conclave.runtime.cli.grpc_service import serve_until_signalled
from conclave.runtime.errors import UsageError

DEFAULT_BROKER_PORT = 51830


def register(subparsers) -> None:
    p = subparsers.add_parser("broker", help="serve the model owner's per-stage shard keys to admitted stages")
    p.add_argument("--manifest", type=Path, required=True, help="the signed deployment manifest")
    p.add_argument("--owner-fingerprint", default=None,
                   help="SHA-256 fingerprint of the deployment-owner key (default: CONCLAVE_OWNER_FINGERPRINT)")
    p.add_argument("--key-dir", type=Path, required=True,
                   help="folder of stage-K.key files written by `conclave model seal --stages`")
    p.add_argument("--host", required=True, metavar="ADDR", help="bind address (a specific IP)")
    p.add_argument("--port", type=int, default=DEFAULT_BROKER_PORT)
    p.add_argument("--sim-root", type=Path, default=None, help="PEM of the trusted simulated root (local mode)")
    p.add_argument("--signing-key", type=Path, default=None,
                   help="0600 PEM Ed25519 key that signs every released stage key; required when the manifest "
                        "names model_source.broker_key (its public half)")
    p.add_argument("--pcs-url", default=None, metavar="URL", help="Intel PCS base URL (default Intel's)")
    p.add_argument("--pcs-root-crl-url", default=None, metavar="URL", help="Intel SGX root CA CRL URL")
    p.add_argument("--kds-url", default=None, metavar="URL", help="AMD KDS base URL (default AMD's)")
    p.add_argument("--rim-url", default=None, metavar="URL", help="NVIDIA RIM service base URL (default NVIDIA's)")
    p.add_argument("--nvidia-ocsp-url", default=None, metavar="URL",
                   help="NVIDIA OCSP responder for GPU device and RIM chains (default NVIDIA's)")
    p.add_argument("--collateral-refresh", type=float, default=None, metavar="S",
                   help="fetch cached collateral again after this many seconds (default 3600)")
    p.add_argument("--collateral-dir", type=Path, default=None,
                   help="the broker's collateral cache (default STATE_DIR/collateral/broker)")
    p.set_defaults(func=run_broker)


def build_service(args):
    from conclave.runtime.agent.verifier import make_verifier
    from conclave.runtime.cli.node import vendor_services
    from conclave.runtime.broker.service import KeyBrokerService, overlay_network
    from conclave.runtime.keys.broker import SecretsBroker
    from conclave.runtime.manifest.document import DeploymentManifest
    from conclave.runtime import config
    from conclave.runtime.sealing.shards import stage_key_secrets

    fingerprint = args.owner_fingerprint or config.owner_fingerprint()
    if not fingerprint:
        raise UsageError("the broker must pin the deployment owner: --owner-fingerprint FP", reason="owner_not_pinned")
    manifest = DeploymentManifest.load(args.manifest, trusted_owner=fingerprint)
    stages = [s.node for s in manifest.stages]
    secrets_map = stage_key_secrets(args.key_dir, stages)
    roots = []
    if args.sim_root is not None:
        try:
            roots = x509.load_pem_x509_certificates(args.sim_root.read_bytes())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read --sim-root: {exc}", reason="sim_root_invalid") from None
    verifier = make_verifier(policy=manifest.policy, manifest_digest=manifest.digest,
                             overlay=overlay_network(manifest), trusted_sim_roots=roots,
                             services=vendor_services(args),
                             collateral_dir=args.collateral_dir or (config.state_dir() / "collateral" / "broker"))
    from conclave.runtime.manifest.ed25519_keys import load_private_key
    signing_key = load_private_key(args.signing_key) if args.signing_key is not None else None
    return KeyBrokerService(manifest=manifest, secrets_broker=SecretsBroker(secrets_map), verifier=verifier,
                            signing_key=signing_key)


def run_broker(args) -> int:
    from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc

    try:
        if ipaddress.ip_address(args.host).is_unspecified:
            raise ValueError
    except ValueError:
        raise UsageError(f"--host must be a specific IP address, not {args.host!r}", reason="host_invalid") from None
    clog.setup()
    service = build_service(args)
    serve_until_signalled(lambda server: pb_grpc.add_KeyBrokerServicer_to_server(service, server),
                          args.host, args.port, what=f"key broker for {len(service.manifest.stages)} stages",
                          max_request_bytes=rpc.EVIDENCE_REQUEST_BYTES)   # requests carry evidence
    return 0
