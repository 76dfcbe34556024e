"""`conclave report verify`: check a signed run report (signature, pinned key, manifest).

Exit 0 when it checks, 2 when it does not (signature_invalid, report_key_mismatch,
manifest_mismatch), 5 when malformed. Pin the report key with --report-pubkey: take it from the
head entry of an attestation bundle that `conclave verify` accepted (head.report_pubkey).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from conclave.runtime.errors import ConclaveError, UsageError
from conclave.runtime.manifest import document as mdoc
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.report import ReportError, ReportReason, verify_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="verify signed run reports")
    sub = p.add_subparsers(dest="report_command", required=True, metavar="ACTION")
    v = sub.add_parser("verify", help="verify a signed run report")
    v.add_argument("file", type=Path)
    v.add_argument("--manifest", type=Path, help="deployment manifest the report must match")
    pin = v.add_mutually_exclusive_group()
    pin.add_argument("--owner-pubkey", type=Path, help="pin the manifest owner (PEM or base64 file)")
    pin.add_argument("--owner-fingerprint", help="pin the manifest owner (SHA-256 hex)")
    v.add_argument("--report-pubkey", metavar="B64|FILE",
                   help="the head's attested report key (base64, or a file holding it)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_verify)


def report_key_arg(value: str) -> bytes:
    """--report-pubkey: the head's attested report key, base64 or a file holding it."""
    path = Path(value)
    if path.is_file():
        return keys.load_public_key_file(path)
    try:
        return keys.unb64(value.strip(), "report key", length=keys.PUBLIC_KEY_LEN)
    except ValueError:
        raise UsageError("--report-pubkey must be a base64 Ed25519 key or a file holding one") from None


def _cmd_verify(args) -> int:
    manifest = None
    if args.manifest:
        pin = (keys.load_public_key_file(args.owner_pubkey) if args.owner_pubkey
               else args.owner_fingerprint)
        try:
            manifest = mdoc.verify_bytes(args.manifest.read_bytes(), trusted_owner=pin,
                                         allow_unpinned=True)
        except OSError as exc:
            raise UsageError(f"cannot read manifest {args.manifest}: {exc.strerror}") from None
    elif args.owner_pubkey or args.owner_fingerprint:
        raise UsageError("--owner-pubkey/--owner-fingerprint need --manifest")
    pinned_key = report_key_arg(args.report_pubkey) if args.report_pubkey else None
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise ReportError(ReportReason.MALFORMED, f"cannot read {args.file}: {exc.strerror}") from None
    try:
        verified = verify_report(data, report_key=pinned_key, manifest=manifest)
    except ConclaveError as exc:
        if args.json:
            print(json.dumps({"ok": False, "reason": exc.reason, "error": exc.message}))
        else:
            print(f"report INVALID [{exc.reason}]: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    out = {"ok": True, "reason": None,
           "manifest_owner_pinned": manifest.owner_pinned if manifest else None,
           **verified.to_json()}
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        r = verified.report
        print(f"report OK (key {'pinned' if verified.key_pinned else 'NOT pinned'}, "
              f"manifest {'checked' if verified.manifest_checked else 'not checked'})")
        print(f"engine {r.engine_digest}\nmodel  {r.model_digest}\nstarted {r.started_at}")
        for s in r.stages:
            print(f"  {s.node:<16} {s.role:<7} owner={s.owner} layers=[{s.layer_start},{s.layer_end}) "
                  f"tee={s.tee} evidence={s.evidence_sha256[:16]} shard={s.shard_sha256[:16]}"
                  + (f" ON TCB GRACE until {s.tcb_grace_until}" if s.tcb_grace_until else ""))
        for e in r.reattestations:
            print(f"  re-attest {e.at} {e.node}: {e.result}{' (' + e.reason + ')' if e.reason else ''}")
    return 0
