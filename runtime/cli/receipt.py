"""`conclave receipt verify`: check offline that one exact response came from the attested cluster.

    conclave receipt verify --request REQ --response RESP [--receipt FILE] [--report FILE]
        (--local | --url https://HOST:PORT --manifest M [--owner-fingerprint F] [--sim-root R] [--ca C]
         | --report-pubkey B64|FILE [--manifest M ...]) [--json]

--request/--response are the exact bodies sent and received; --receipt is the `Conclave-Receipt`
header value or the stream's `{"conclave_receipt": ...}` object (default: the receipt event inside a
saved stream). The head's attested report key comes from a fresh verification of the endpoint
(--url, or --local for the local cluster: manifest, owner pin and simulated root from its status
file) or from a pin (--report-pubkey, e.g. head.report_pubkey of a bundle `conclave verify`
accepted). The run report the receipt names is --report, or fetched from /v1/report/<sha256>.
Without a key source the command refuses (receipt_key_unknown): a receipt is only as good as the
key it is checked against. Exit 0 valid; 2 invalid (receipt_* reasons, see endpoint/receipt.py);
5 malformed; an endpoint that does not verify exits with `conclave verify`'s code.
"""
from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
from pathlib import Path

from conclave.runtime.cli.env import local_cluster
from conclave.runtime.cli.report import report_key_arg
from conclave.runtime.endpoint.client import Upstream, load_certificates, tls_context, verify_endpoint
from conclave.runtime.endpoint.receipt import (ReceiptError, parse_receipt, receipt_in_stream,
                                               verify_receipt)
from conclave.runtime.endpoint.verify import EndpointReason
from conclave.runtime.errors import ConclaveError, ExitCode, UsageError
from conclave.runtime.manifest import document as mdoc
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.report.document import MAX_REPORT_LEN

REPORT_PATH = "/v1/report/"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("receipt", help="verify per-response receipts")
    sub = p.add_subparsers(dest="receipt_command", required=True, metavar="ACTION")
    v = sub.add_parser("verify", help="check a response's receipt against the attested head")
    v.add_argument("--request", type=Path, required=True, help="the exact request body sent")
    v.add_argument("--response", type=Path, required=True, help="the exact response body received")
    v.add_argument("--receipt", type=Path, help="Conclave-Receipt header value or the SSE receipt object "
                                                "(default: the receipt event in a saved stream)")
    v.add_argument("--report", type=Path, help="the signed run report the receipt names "
                                               "(default: fetched from the endpoint)")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--local", action="store_true", help="the local cluster (trust from its status file)")
    src.add_argument("--url", metavar="https://HOST:PORT", help="verify this endpoint for the head's key")
    src.add_argument("--report-pubkey", metavar="B64|FILE", help="the head's attested report key (pin)")
    v.add_argument("--manifest", type=Path, help="signed deployment manifest")
    pin = v.add_mutually_exclusive_group()
    pin.add_argument("--owner-pubkey", type=Path, help="pin the manifest owner (PEM or base64 file)")
    pin.add_argument("--owner-fingerprint", help="pin the manifest owner (SHA-256 hex)")
    v.add_argument("--sim-root", type=Path, help="simulated TEE root certificate (local clusters)")
    v.add_argument("--ca", type=Path, help="also require the TLS certificate to chain to this CA")
    v.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_verify)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}", reason="unreadable_file") from None


def _local_collateral(manifest=None):
    """The client's own collateral for the local cluster, from its emulated vendor services (the same
    resolution `conclave verify --local` does)."""
    from types import SimpleNamespace
    from conclave.runtime.cli.verify import client_collateral, resolve_local
    local = SimpleNamespace(url=None, manifest=None, owner_pubkey=None, owner_fingerprint=None, sim_root=None,
                            ca=None, pcs_url=None, pcs_root_crl_url=None, kds_url=None, unsafe_unpinned=False)
    resolve_local(local)
    return client_collateral(local, manifest)


def _manifest(path: Path | None, owner_pubkey: Path | None, fingerprint: str | None):
    if path is None:
        if owner_pubkey or fingerprint:
            raise UsageError("--owner-pubkey/--owner-fingerprint need --manifest")
        return None
    pin = keys.load_public_key_file(owner_pubkey) if owner_pubkey else fingerprint
    manifest = mdoc.verify_bytes(_read(path, "manifest"), trusted_owner=pin, allow_unpinned=True)
    if not manifest.owner_pinned:
        print(f"conclave: note: manifest owner not pinned (fingerprint {manifest.owner_fingerprint})",
              file=sys.stderr)
    return manifest


def fetch_report(url: str, digest: str, *, ca: Path | None, timeout: float) -> bytes | None:
    """GET /v1/report/<digest> (authenticity comes from the report's signature, checked later)."""
    upstream = Upstream.parse(url)
    conn = http.client.HTTPSConnection(upstream.host, upstream.port, context=tls_context(ca), timeout=timeout)
    try:
        conn.request("GET", f"{upstream.prefix}{REPORT_PATH}{digest}")
        resp = conn.getresponse()
        body = resp.read(MAX_REPORT_LEN + 1)
        return body if resp.status == 200 else None
    except (OSError, http.client.HTTPException, ssl.SSLError):
        return None
    finally:
        conn.close()


def _key_source(args):
    """(manifest, attested report key, endpoint URL or None, CA or None)."""
    if args.local:
        cluster = local_cluster(require_running=False)
        if not (cluster.manifest and cluster.sim_root and cluster.ca_cert):
            raise ConclaveError("cluster_not_attested", "the local cluster has no attested endpoint "
                                "(started with --network plain?)", exit_code=ExitCode.USAGE)
        manifest = _manifest(Path(cluster.manifest), None, cluster.owner_fingerprint)
        url, roots, ca = cluster.front_url, load_certificates(Path(cluster.sim_root)), None
        collateral_for = _local_collateral(manifest)
    elif args.url:
        manifest = _manifest(args.manifest, args.owner_pubkey, args.owner_fingerprint)
        if manifest is None:
            raise UsageError("--url needs --manifest (the deployment the endpoint must prove)")
        url, roots, ca = args.url, (load_certificates(args.sim_root) if args.sim_root else None), args.ca
        from conclave.runtime.cli.verify import client_collateral
        collateral_for = client_collateral(args, manifest)   # the vendors' services: the client's own collateral
    elif args.report_pubkey:
        manifest = _manifest(args.manifest, args.owner_pubkey, args.owner_fingerprint)
        return manifest, report_key_arg(args.report_pubkey), None, None
    else:
        raise UsageError("say which head to check against: --local, --url with --manifest, or "
                         "--report-pubkey", reason="receipt_key_unknown")
    outcome = verify_endpoint(url, manifest=manifest, trusted_roots=roots, ca=ca, timeout=args.timeout,
                              collateral_for=collateral_for)
    if not outcome.ok:
        raise ConclaveError(outcome.result.reason or "verification_failed",
                            f"the endpoint does not verify: {outcome.result.message}",
                            exit_code=ExitCode(outcome.result.exit_code or ExitCode.VERIFICATION_FAILED))
    key = keys.unb64(outcome.result.head["report_pubkey"], "report key", length=keys.PUBLIC_KEY_LEN)
    return manifest, key, url, ca


def _cmd_verify(args) -> int:
    request = _read(args.request, "request")
    response = _read(args.response, "response")
    try:
        if args.receipt is not None:
            doc = parse_receipt(_read(args.receipt, "receipt"))
        else:
            doc = receipt_in_stream(response)
            if doc is None:
                raise ReceiptError(EndpointReason.RECEIPT_MISSING,
                                   "no --receipt given and the response holds no receipt event")
        manifest, attested, url, ca = _key_source(args)
        report = _read(args.report, "report") if args.report else None
        if report is None and url is not None and isinstance(doc.get("receipt"), dict):
            report = fetch_report(url, str(doc["receipt"].get("report_sha256")), ca=ca, timeout=args.timeout)
            if report is None:
                raise ReceiptError(EndpointReason.RECEIPT_REPORT_MISMATCH,
                                   "the endpoint no longer serves the run report this receipt names")
        verified = verify_receipt(doc, request=request, response=response, report=report,
                                  manifest=manifest, attested_key=attested)
    except ConclaveError as exc:
        if args.json:
            print(json.dumps(exc.to_json()))
        else:
            print(f"receipt INVALID [{exc.reason}]: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    out = verified.to_json()
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        r = verified.receipt
        print(f"receipt OK: served {r.time} by head key {keys.fingerprint(verified.receipt_key)[:16]} "
              f"(attested)")
        print(f"model {r.model_digest}\nreport {r.report_sha256}"
              + ("" if verified.report else " (not checked: no report)"))
        if verified.report:
            for s in verified.report.report.stages:
                print(f"  {s.node:<16} {s.role:<7} owner={s.owner} layers=[{s.layer_start},{s.layer_end}) "
                      f"tee={s.tee} evidence={s.evidence_sha256[:16]}")
    return 0
