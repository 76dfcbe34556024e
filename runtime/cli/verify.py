"""`conclave verify URL` (check a head before trusting it) and `conclave proxy` (keep checking).

Both take the deployment manifest the client got from the owner out of band and the owner's key
(--owner-fingerprint or --owner-pubkey), the simulated root for local clusters (--sim-root), and
--ca for extra PKI checks. Without an owner pin both refuse at once, before any connection (exit 1,
reason `owner_not_pinned`): a manifest signed by anyone proves nothing. `--unsafe-unpinned` lifts
that refusal for experiments, and `verify --json` then reports `"unsafe_unpinned": true`.
`verify` prints {"ok","tee","reason","claims","violations","steps","nodes",...} with --json and
exits like `conclave attest verify`: 0 ok, 2 verification failed, 4 policy violated, 5 malformed,
3 endpoint unreachable. On success it prints the key pin (curl --pinnedpubkey form).

TDX/SNP evidence is judged with the client's own collateral (CollateralCache under
CACHE_DIR/collateral, from --pcs-url / --kds-url: Intel PCS and AMD KDS by default) and chains to
the vendors' pinned roots, or to the test roots the owner-signed manifest's policy names
(unsafe_test_roots: emulated hardware, never in production). `conclave verify --local` takes
everything from the local cluster's status file: the head's URL, manifest, owner pin, simulated
root, the head's certificate as CA, and the emulated PCS/KDS and NVIDIA RIM service / OCSP responder
as collateral services. GPU evidence is checked against RIMs the client fetches itself (--rim-url,
NVIDIA's by default) with OCSP for the device and RIM chains, built to the roots the verified
manifest's policy names (NVIDIA's pinned ones unless unsafe_test_roots names the emulated GPUs').
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from datetime import timedelta
from pathlib import Path

from conclave.runtime import log as clog
from conclave.runtime.endpoint.client import load_certificates, verify_endpoint
from conclave.runtime.endpoint.proxy import AttestedProxy, parse_listen, serve_forever
from conclave.runtime.errors import ConclaveError, ExitCode, UsageError
from conclave.runtime.manifest import document as mdoc
from conclave.runtime.manifest import ed25519_keys as keys


def _common(p: argparse.ArgumentParser, *, manifest_required: bool = True) -> None:
    p.add_argument("--manifest", type=Path, required=manifest_required, help="signed deployment manifest")
    pin = p.add_mutually_exclusive_group()
    pin.add_argument("--owner-pubkey", type=Path, help="pin the manifest owner (PEM or base64 file)")
    pin.add_argument("--owner-fingerprint", help="pin the manifest owner (SHA-256 hex)")
    pin.add_argument("--unsafe-unpinned", action="store_true",
                     help="UNSAFE: accept a manifest signed by any key (no owner pin)")
    p.add_argument("--sim-root", type=Path, help="simulated TEE root certificate (local clusters)")
    p.add_argument("--ca", type=Path, help="also require the TLS certificate to chain to this CA")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    # the client's own vendor collateral (carried collateral is only ever merged in, never preferred)
    p.add_argument("--pcs-url", default=None, metavar="URL", help="Intel PCS base URL for TDX collateral")
    p.add_argument("--pcs-root-crl-url", default=None, metavar="URL", help="Intel SGX root CA CRL URL")
    p.add_argument("--kds-url", default=None, metavar="URL", help="AMD KDS base URL for SNP collateral")
    p.add_argument("--rim-url", default=None, metavar="URL", help="NVIDIA RIM service base URL for GPU RIMs")
    p.add_argument("--nvidia-ocsp-url", default=None, metavar="URL",
                   help="NVIDIA OCSP responder for GPU device and RIM chains")


def register(subparsers: argparse._SubParsersAction) -> None:
    v = subparsers.add_parser("verify", help="verify a Conclave endpoint's attestation")
    v.add_argument("url", metavar="https://HOST:PORT", nargs="?", default=None)
    v.add_argument("--local", action="store_true",
                   help="verify the local cluster with what its status knows (URL, manifest, owner pin, roots, "
                        "CA, emulated vendor services)")
    _common(v, manifest_required=False)
    v.add_argument("--max-cached-age", type=float, metavar="SECONDS",
                   help="refuse cached worker evidence older than this (when it carries a time)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_verify)

    p = subparsers.add_parser("proxy", help="local OpenAI endpoint that forwards only to a verified head")
    p.add_argument("--upstream", required=True, metavar="https://HOST:PORT")
    _common(p)
    p.add_argument("--listen", default="127.0.0.1:8088", help="HOST:PORT (default 127.0.0.1:8088)")
    p.add_argument("--reverify", type=float, default=60.0, metavar="SECONDS",
                   help="re-verification period (default 60)")
    p.set_defaults(func=_cmd_proxy)


def _manifest(args) -> mdoc.VerifiedManifest:
    """The client's manifest under the owner pin; no pin is refused before anything else happens."""
    if not (args.owner_pubkey or args.owner_fingerprint or args.unsafe_unpinned):
        raise mdoc.ManifestError(mdoc.ManifestReason.OWNER_NOT_PINNED,
                                 "pin the deployment owner with --owner-fingerprint or --owner-pubkey "
                                 "(or pass --unsafe-unpinned to accept a manifest signed by anyone)")
    pin = keys.load_public_key_file(args.owner_pubkey) if args.owner_pubkey else args.owner_fingerprint
    try:
        data = args.manifest.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read manifest {args.manifest}: {exc.strerror}") from None
    manifest = mdoc.verify_bytes(data, trusted_owner=pin, allow_unpinned=args.unsafe_unpinned)
    if not manifest.owner_pinned:
        print(f"conclave: warning: --unsafe-unpinned: manifest owner NOT pinned (fingerprint "
              f"{manifest.owner_fingerprint}); anyone could have signed it", file=sys.stderr)
    return manifest


def _roots(args):
    return load_certificates(args.sim_root) if args.sim_root else None


def resolve_local(args) -> None:
    """--local: fill url, manifest, owner pin, simulated root, CA and collateral URLs from the local
    cluster's status; giving any of them as well is a usage error (one source of truth)."""
    from conclave.runtime.attestation.emulated.pcs_server import ROOT_CRL_PATH
    from conclave.runtime.cli.env import local_cluster
    from conclave.runtime.local import state as state_mod
    given = [name for name in ("url", "manifest", "owner_pubkey", "owner_fingerprint", "sim_root", "ca",
                               "pcs_url", "pcs_root_crl_url", "kds_url", "rim_url", "nvidia_ocsp_url")
             if getattr(args, name, None)]
    if given or args.unsafe_unpinned:
        raise UsageError(f"--local takes the endpoint and its trust inputs from the local cluster; drop "
                         f"{', '.join(given) or '--unsafe-unpinned'}", reason="verify_local_conflict")
    cluster = local_cluster(require_running=False)
    if not (cluster.manifest and cluster.ca_cert and cluster.owner_fingerprint):
        raise ConclaveError("cluster_not_attested", "the local cluster has no attested endpoint "
                            "(started with --network plain?)", exit_code=ExitCode.USAGE)
    net = (state_mod.read() or {}).get("network") or {}
    args.url, args.manifest, args.owner_fingerprint = cluster.front_url, Path(cluster.manifest), cluster.owner_fingerprint
    args.sim_root = Path(cluster.sim_root) if cluster.sim_root else None
    args.ca = Path(cluster.ca_cert)
    emulators = net.get("emulators") or {}
    if "pcs" in emulators:
        args.pcs_url = emulators["pcs"]["url"]
        args.pcs_root_crl_url = emulators["pcs"]["url"] + ROOT_CRL_PATH
    if "kds" in emulators:
        args.kds_url = emulators["kds"]["url"]
    if "nvidia" in emulators:
        args.rim_url = emulators["nvidia"]["url"]
        args.nvidia_ocsp_url = emulators["nvidia"]["ocsp_url"]


def client_collateral(args, manifest: mdoc.VerifiedManifest | None = None):
    """The client's own collateral source (CollateralCache.collateral_for): TDX/SNP collateral, and
    for GPU evidence RIMs and OCSP answers, the OCSP paths built to the roots of the (verified)
    manifest's policy (NVIDIA's pinned roots without one)."""
    from conclave.runtime import config
    from conclave.runtime.agent.verifier import VendorServices, collateral_cache, gpu_collateral_source
    from conclave.runtime.cli.node import vendor_services
    services = vendor_services(args)
    # a client verifies now: a copy older than a minute is fetched again (the cache still bridges outages)
    services = VendorServices(pcs=services.pcs, pcs_root_crl=services.pcs_root_crl, kds=services.kds,
                              refresh_after_s=60.0, rim=services.rim, nvidia_ocsp=services.nvidia_ocsp)
    folder = config.cache_dir() / "collateral"
    cache = collateral_cache(folder, services)
    cache.gpu_source = gpu_collateral_source(folder, services,   # GPU evidence: RIMs and OCSP too
                                             manifest.policy if manifest is not None else None)
    return cache.collateral_for


def _cmd_verify(args) -> int:
    if args.local:
        resolve_local(args)
    elif not args.url or not args.manifest:
        raise UsageError("conclave verify needs URL and --manifest (or --local)", reason="verify_target_missing")
    manifest = _manifest(args)
    outcome = verify_endpoint(args.url, manifest=manifest, trusted_roots=_roots(args), ca=args.ca,
                              timeout=args.timeout, unsafe_unpinned=args.unsafe_unpinned,
                              max_cached_age=(timedelta(seconds=args.max_cached_age)
                                              if args.max_cached_age is not None else None),
                              collateral_for=client_collateral(args, manifest))
    out = outcome.to_json()
    out["owner_pinned"] = manifest.owner_pinned
    if not manifest.owner_pinned:
        out["unsafe_unpinned"] = True
    if args.json:
        print(json.dumps(out, sort_keys=True))
    elif outcome.ok:
        pin = base64.b64encode(outcome.fetched.tls_spki_sha256).decode()
        print(f"endpoint OK: {args.url}")
        print(f"manifest {out['manifest_digest']}")
        for n in out["nodes"]:
            print(f"  {n['name']:<16} {n['role']:<7} owner={n['owner']} tee={n['tee']} "
                  f"{n['freshness']}{' SIMULATED' if n['simulated'] else ''}")
        print(f"pin: sha256//{pin}")
    else:
        print(f"endpoint NOT verified [{out['reason']}]: {out['error']}", file=sys.stderr)
        for n in out["nodes"]:
            if not n["ok"]:
                print(f"  {n['name']}: [{n['reason']}] {n['error']}", file=sys.stderr)
    return 0 if outcome.ok else int(outcome.result.exit_code)


def _cmd_proxy(args) -> int:
    clog.setup()
    manifest = _manifest(args)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"conclave: warning: proxy listens on {host}; anyone who reaches it uses your "
              "verified upstream", file=sys.stderr)
    proxy = AttestedProxy(args.upstream, manifest, trusted_roots=_roots(args), ca=args.ca,
                          reverify_interval=args.reverify, timeout=args.timeout,
                          unsafe_unpinned=args.unsafe_unpinned, collateral_for=client_collateral(args, manifest))
    asyncio.run(serve_forever(proxy, host, port))
    return 0
