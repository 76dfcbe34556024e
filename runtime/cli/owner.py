"""`conclave owner keygen|enroll`: a node owner's tool, proving which stage its node runs.

The deployment manifest lists each node owner's Ed25519 public key and the stages that owner
may run. `enroll` is how an owner vouches for one boot of its own node:
 1. it asks the node for its per-boot public keys (the node's status socket, `identity`), or
    takes just the node's admission address (--node HOST:PORT);
 2. it attests the node itself: a fresh nonce to the node's Attest RPC, the evidence verified
    under the manifest's policy and checked to bind exactly those keys, that stage name and role;
 3. it signs an enrolment of those keys for that stage and manifest (runtime/manifest/enrolment.py)
    with the owner key and hands it to the node over its status socket (`enroll`), or writes it
    to --out for the node's operator to deliver.
An impostor running the same image cannot do step 3: it has no owner key, and an enrolment of
other keys does not fit its evidence. The owner key file (0600 PEM) never reaches argv or output.
Local mode plays every owner with the same functions (runtime/local/enrol.py).
"""
from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

from cryptography import x509

# attest_node and ATTEST_TIMEOUT stay importable from here (tests and callers of the CLI module)
from conclave.runtime.agent.owner_enrolment import ATTEST_TIMEOUT, attest_node, enroll_node  # noqa: F401
from conclave.runtime.errors import ConclaveError, UsageError
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.manifest import enrolment as enrolment_mod


def register(subparsers) -> None:
    p = subparsers.add_parser("owner", help="node owner: create an owner key, enrol your node for its stage")
    sub = p.add_subparsers(dest="owner_command", required=True, metavar="ACTION")

    k = sub.add_parser("keygen", help="create a node-owner key (PEM, mode 0600); its public key goes in the manifest")
    k.add_argument("key", type=Path)
    k.add_argument("--pubkey-out", type=Path, help="also write the public key (PEM) for the deployment owner")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=_cmd_keygen)

    e = sub.add_parser("enroll", help="attest your node and sign its per-boot keys for its stage")
    e.add_argument("--owner-key", type=Path, required=True, help="your node-owner private key (PEM, 0600)")
    e.add_argument("--manifest", type=Path, required=True, help="the signed deployment manifest")
    e.add_argument("--owner-fingerprint", default=None,
                   help="the deployment owner's key fingerprint (default: CONCLAVE_OWNER_FINGERPRINT)")
    e.add_argument("--stage", required=True, help="the manifest stage your node runs")
    where = e.add_mutually_exclusive_group(required=True)
    where.add_argument("--status-socket", type=Path, help="the node's status socket: read its keys there and hand "
                                                          "the enrolment back over it")
    where.add_argument("--node", metavar="HOST:PORT", help="the node's admission address (attest only; the "
                                                          "enrolment goes to --out)")
    e.add_argument("--sim-root", type=Path, default=None, help="PEM of the trusted simulated root (local mode)")
    e.add_argument("--valid-hours", type=float, default=24.0, help="enrolment validity (default 24, at most 744)")
    e.add_argument("--out", type=Path, default=None, help="also write the enrolment here (JSON, public)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_cmd_enroll)


def _cmd_keygen(args) -> int:
    key = keys.generate_key_file(args.key)
    public = keys.public_key_bytes(key)
    if args.pubkey_out:
        args.pubkey_out.write_bytes(keys.public_key_pem(public))
    out = {"ok": True, "key": str(args.key), "fingerprint": keys.fingerprint(public), "public_key": keys.b64(public)}
    print(json.dumps(out) if args.json else f"owner key: {args.key}\npublic key: {out['public_key']}\n"
                                             f"fingerprint: {out['fingerprint']}")
    return 0


def _cmd_enroll(args) -> int:
    from conclave.runtime.manifest.node import require_manifest
    manifest = require_manifest(args.manifest, trusted_owner=args.owner_fingerprint, node=args.stage)
    owner_key = keys.load_private_key(args.owner_key)
    roots: list[x509.Certificate] = []
    if args.sim_root is not None:
        try:
            roots = x509.load_pem_x509_certificates(args.sim_root.read_bytes())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read --sim-root: {exc}", reason="sim_root_invalid") from None
    if not 0 < args.valid_hours <= enrolment_mod.MAX_VALIDITY / timedelta(hours=1):
        raise UsageError("--valid-hours must be positive and at most 744", reason="validity_invalid")
    try:
        blob, answer = enroll_node(owner_key=owner_key, manifest=manifest, stage=args.stage,
                                   status_socket=args.status_socket, target=args.node, trusted_sim_roots=roots,
                                   validity=timedelta(hours=args.valid_hours))
    except ConclaveError as exc:
        if args.json:
            print(json.dumps({"ok": False, "reason": exc.reason, "error": exc.message}))
        else:
            print(f"enrolment FAILED [{exc.reason}]: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    if args.out is not None:
        args.out.write_bytes(blob + b"\n")
    summary = json.loads(blob)["enrolment"]
    result = {"ok": True, "stage": args.stage, "owner": summary["owner"], "expires": summary["expires"],
              "delivered": args.status_socket is not None, "file": str(args.out) if args.out else None}
    print(json.dumps(result) if args.json else
          f"enrolled stage {args.stage} for owner {summary['owner']} until {summary['expires']}"
          + (" (delivered to the node)" if result["delivered"] else ""))
    return 0
