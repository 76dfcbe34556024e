"""`conclave manifest keygen|new|sign|show|verify`: the deployment owner's signed manifest.

The owner key is a PEM file (0600) named by --owner-key; its bytes never reach argv or output.
`verify` exits 0 when the signature (and pin, when given) check, 2 otherwise, 5 when malformed.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from conclave.runtime.atomic_write import write_atomic
from conclave.runtime.errors import ConclaveError, ExitCode, UsageError
from conclave.runtime.manifest import document as doc
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.canonical import CanonicalError, strict_loads


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("manifest", help="create, sign, show and verify deployment manifests")
    sub = p.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")

    k = sub.add_parser("keygen", help="create a deployment-owner key (PEM, mode 0600)")
    k.add_argument("key", type=Path, help="path of the new private key file")
    k.add_argument("--pubkey-out", type=Path, help="also write the public key (PEM) here, to hand out")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=_cmd_keygen)

    n = sub.add_parser("new", help="assemble and sign a manifest (creates --owner-key if absent)")
    n.add_argument("--owner-key", type=Path, required=True, help="owner private key (PEM, 0600)")
    n.add_argument("--from", dest="template", type=Path,
                   help="JSON/YAML template with manifest fields; flags override it")
    n.add_argument("--policy", type=Path, help="attestation policy file (YAML or JSON)")
    n.add_argument("--model-digest", help="model manifest digest (hex SHA-256)")
    n.add_argument("--engine-digest", help="engine/image digest (hex SHA-256, sha256: prefix ok)")
    n.add_argument("--owner", action="append", dest="owners", metavar="NAME=PUBKEY_FILE",
                   help="a node owner (GPU provider) and its Ed25519 public key (PEM or base64 file, e.g. "
                        "`conclave owner keygen --pubkey-out`); it signs the enrolments of its stages (repeat)")
    n.add_argument("--stage", action="append", dest="stages", metavar="NODE:OWNER:ROLE:START-END",
                   help="one pipeline stage (repeat in pipeline order; END exclusive; OWNER one of --owner)")
    n.add_argument("--overlay-cidr", help=f"overlay network (default {doc.DEFAULT_OVERLAY_CIDR})")
    n.add_argument("--rendezvous", action="append", metavar="ENDPOINT",
                   help="rendezvous endpoint (repeatable)")
    n.add_argument("--model-shards", metavar="PATH|URL",
                   help="where the sealed stage shards are (`conclave model seal --stages` output: a folder or an "
                        "http(s) URL root; stage K at ROOT/stage-K); needs --model-broker")
    n.add_argument("--model-broker", metavar="HOST:PORT", help="the model owner's key broker (`conclave broker`)")
    n.add_argument("-o", "--output", type=Path, required=True)
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=_cmd_new)

    s = sub.add_parser("sign", help="(re)sign a manifest file or an unsigned content template")
    s.add_argument("file", type=Path)
    s.add_argument("--owner-key", type=Path, required=True)
    s.add_argument("-o", "--output", type=Path, help="default: rewrite FILE")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_sign)

    sh = sub.add_parser("show", help="print a manifest (signature checked, owner not pinned)")
    sh.add_argument("file", type=Path)
    sh.add_argument("--json", action="store_true")
    sh.add_argument("--owner-fingerprint", action="store_true", dest="print_fingerprint",
                    help="print only the owner key's fingerprint (what nodes and clients pin)")
    sh.set_defaults(func=_cmd_show)

    v = sub.add_parser("verify", help="verify signature and (optionally pinned) owner")
    v.add_argument("file", type=Path)
    pin = v.add_mutually_exclusive_group()
    pin.add_argument("--owner-pubkey", type=Path, help="owner public key (PEM or base64)")
    pin.add_argument("--owner-fingerprint", help="owner key SHA-256 fingerprint (hex)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_verify)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    write_atomic(path, data, mode=mode, prefix=".conclave-")


def _read_structured(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from None
    try:
        return strict_loads(text)
    except CanonicalError:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConclaveError("malformed", f"{what} {path} is not JSON or YAML",
                                exit_code=ExitCode.MALFORMED) from None


def _owner_key(path: Path, *, create: bool):
    if create and not path.exists():
        key = keys.generate_key_file(path)
        print(f"conclave: created owner key {path} (fingerprint {keys.fingerprint(key.public_key())})",
              file=sys.stderr)
        return key
    return keys.load_private_key(path)


def _cmd_keygen(args) -> int:
    key = keys.generate_key_file(args.key)
    fp = keys.fingerprint(key.public_key())
    if args.pubkey_out:
        _write_atomic(args.pubkey_out, keys.public_key_pem(keys.public_key_bytes(key)))
    if args.json:
        print(json.dumps({"ok": True, "key": str(args.key), "fingerprint": fp,
                          "public_key": keys.b64(keys.public_key_bytes(key))}))
    else:
        print(f"owner key: {args.key}\nfingerprint: {fp}")
    return 0


def _check_policy(policy: Any) -> None:
    from conclave.runtime.attestation.policy import Policy
    Policy.from_dict(policy)  # PolicyError (policy_empty / policy_invalid) stops here


def _cmd_new(args) -> int:
    fields: dict[str, Any] = {}
    if args.template:
        tpl = _read_structured(args.template, "template")
        if isinstance(tpl, dict) and "manifest" in tpl:
            tpl = tpl["manifest"]
        if not isinstance(tpl, dict):
            raise ConclaveError("malformed", "template must be an object", exit_code=ExitCode.MALFORMED)
        fields.update(tpl)
    if args.policy:
        fields["policy"] = _read_structured(args.policy, "policy")
    if args.model_digest:
        fields["model_digest"] = args.model_digest
    if args.engine_digest:
        fields["engine_digest"] = args.engine_digest
    if args.stages:
        fields["stages"] = [doc.Stage.parse_spec(s).to_json() for s in args.stages]
    if args.owners:
        fields["owners"] = _owner_specs(args.owners)
    if args.overlay_cidr:
        fields["overlay_cidr"] = args.overlay_cidr
    if args.rendezvous:
        fields["rendezvous"] = args.rendezvous
    if bool(args.model_shards) != bool(args.model_broker):
        raise UsageError("--model-shards and --model-broker go together", reason="model_source_invalid")
    if args.model_shards:
        fields["model_source"] = {"shards": args.model_shards, "broker": args.model_broker}
    for required in ("policy", "model_digest", "engine_digest", "owners", "stages"):
        if required not in fields:
            raise UsageError(f"--{required.replace('_', '-')} (or the template field {required}) is required")
    _check_policy(fields["policy"])
    try:
        stages = [doc.Stage.from_json(s, i) for i, s in enumerate(fields["stages"])]
    except TypeError:
        raise ConclaveError("malformed", "stages must be a list", exit_code=ExitCode.MALFORMED) from None
    owners = _owners_from_json(fields["owners"])
    key = _owner_key(args.owner_key, create=True)
    content = doc.build_content(
        owner_public_key=keys.public_key_bytes(key), policy=fields["policy"],
        model_digest=str(fields["model_digest"]), engine_digest=str(fields["engine_digest"]),
        owners=owners, stages=stages, overlay_cidr=fields.get("overlay_cidr", doc.DEFAULT_OVERLAY_CIDR),
        rendezvous=fields.get("rendezvous", []), model_source=fields.get("model_source"))
    data = doc.sign_content(content, key)
    _write_atomic(args.output, data)
    return _report_written(args, data)


def _owner_specs(specs: list[str]) -> list[dict]:
    """--owner NAME=PUBKEY_FILE entries as the manifest's owners list."""
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--owner {spec!r} must look like NAME=PUBKEY_FILE", reason="owner_invalid")
        out.append({"name": name, "key": keys.b64(keys.load_public_key_file(Path(path)))})
    return out


def _owners_from_json(raw: Any) -> dict[str, bytes]:
    """The owners list (template or --owner) as name -> raw public key; malformed when it is not one."""
    if not isinstance(raw, list) or not all(isinstance(o, dict) and set(o) == {"name", "key"} for o in raw):
        raise ConclaveError("malformed", "owners must be a list of {name, key}", exit_code=ExitCode.MALFORMED)
    try:
        return {str(o["name"]): keys.unb64(o["key"], f"owner {o['name']} key", length=keys.PUBLIC_KEY_LEN)
                for o in raw}
    except ValueError as exc:
        raise ConclaveError("malformed", str(exc), exit_code=ExitCode.MALFORMED) from None


def _report_written(args, data: bytes) -> int:
    verified = doc.verify_bytes(data, trusted_owner=None, allow_unpinned=True)
    if args.json:
        print(json.dumps({"ok": True, "file": str(args.output or args.file),
                          "digest": verified.digest.hex(),
                          "owner_fingerprint": verified.owner_fingerprint}))
    else:
        print(f"manifest: {args.output or args.file}\ndigest: {verified.digest.hex()}\n"
              f"owner fingerprint: {verified.owner_fingerprint}")
    return 0


def _cmd_sign(args) -> int:
    obj = _read_structured(args.file, "manifest")
    content = obj.get("manifest") if isinstance(obj, dict) and "manifest" in obj else obj
    if not isinstance(content, dict):
        raise ConclaveError("malformed", "manifest content must be an object", exit_code=ExitCode.MALFORMED)
    content = dict(content)
    if "policy" in content:
        _check_policy(content["policy"])
    key = _owner_key(args.owner_key, create=False)
    content.setdefault("version", doc.MANIFEST_VERSION)
    content.setdefault("created", doc.rfc3339(datetime.now(timezone.utc)))
    content.setdefault("overlay_cidr", doc.DEFAULT_OVERLAY_CIDR)
    content.setdefault("rendezvous", [])
    for name in ("model_digest", "engine_digest"):
        if isinstance(content.get(name), str):
            try:
                content[name] = doc.normalize_digest(content[name])
            except ConclaveError:
                pass  # check_content reports it
    data = doc.sign_content(content, key)
    args.output = args.output or args.file
    _write_atomic(args.output, data)
    return _report_written(args, data)


def _load(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise doc.ManifestError(doc.ManifestReason.MALFORMED, f"cannot read {path}: {exc.strerror}") from None


def _human(verified: doc.VerifiedManifest) -> str:
    lines = [f"digest:            {verified.digest.hex()}",
             f"owner fingerprint: {verified.owner_fingerprint} "
             f"({'pinned' if verified.owner_pinned else 'NOT pinned'})",
             f"created:           {verified.content['created']}",
             f"model digest:      {verified.model_digest}",
             f"engine digest:     {verified.engine_digest}",
             f"overlay CIDR:      {verified.overlay_cidr}",
             f"rendezvous:        {', '.join(verified.rendezvous) or '(none)'}",
             f"policy:            {json.dumps(verified.policy_dict, sort_keys=True)}",
             "stages:"]
    for s in verified.stages:
        lines.append(f"  {s.node:<20} {s.role:<7} owner={s.owner} layers=[{s.layer_start}, {s.layer_end})")
    lines.append("owners:")
    for name, key in verified.owners.items():
        lines.append(f"  {name:<20} fingerprint {keys.fingerprint(key)}")
    return "\n".join(lines)


def _cmd_show(args) -> int:
    verified = doc.verify_bytes(_load(args.file), trusted_owner=None, allow_unpinned=True)
    if getattr(args, "print_fingerprint", False):
        print(verified.owner_fingerprint)
        return 0
    if args.json:
        print(json.dumps({"ok": True, **verified.summary_json()}, sort_keys=True))
    else:
        print(_human(verified))
    return 0


def _cmd_verify(args) -> int:
    pin: Any = None
    if args.owner_pubkey:
        pin = keys.load_public_key_file(args.owner_pubkey)
    elif args.owner_fingerprint:
        pin = args.owner_fingerprint
    data = _load(args.file)
    try:
        verified = doc.verify_bytes(data, trusted_owner=pin, allow_unpinned=True)
    except doc.ManifestError as exc:
        if args.json:
            print(json.dumps({"ok": False, "reason": exc.reason, "error": exc.message}))
        else:
            print(f"manifest INVALID [{exc.reason}]: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    if args.json:
        print(json.dumps({"ok": True, "reason": None, "digest": verified.digest.hex(),
                          "owner_fingerprint": verified.owner_fingerprint,
                          "owner_pinned": verified.owner_pinned}))
    else:
        print(f"manifest OK: signature valid, owner {verified.owner_fingerprint} "
              f"{'matches the pin' if verified.owner_pinned else '(NOT pinned: pass --owner-pubkey or --owner-fingerprint)'}\n"
              f"digest: {verified.digest.hex()}")
    return 0
