"""`conclave model seal|unseal`: encrypt a model for untrusted storage, whole or one shard per stage.

Whole folder: `seal MODEL_DIR -o OUT --key-file K` seals every file under one key (K, 0600,
created when absent). Per stage: `seal MODEL_DIR --stages N [--partition a,b,c] -o OUT --key-dir D`
writes OUT/stage-K (only stage K's tensors) under a fresh key D/stage-K.key each, and the public
layout OUT/stages.json (sealing.shards). MODEL_DIR is an imported model's folder or its registry
name: the model manifest (per-layer digests) comes from the registry. Keys are never printed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from conclave.runtime.errors import ConclaveError, ExitCode, UsageError
from conclave.runtime.log import progress
from conclave.runtime.model import registry
from conclave.runtime.model.manifest import check_manifest
from conclave.runtime.model.reasons import ModelReason
from conclave.runtime.sealing import (SealingKey, read_key_file, seal_directory, unseal_into,
                                      verify_sealed, write_key_file)
from conclave.runtime.sealing.shards import seal_stages, stage_key_path
from conclave.runtime.sealing.stream import DEFAULT_CHUNK_SIZE


def add_seal_parser(model_subparsers: argparse._SubParsersAction) -> None:
    s = model_subparsers.add_parser("seal", help="encrypt a model folder (AES-256-GCM), whole or per stage")
    s.add_argument("model_dir", metavar="MODEL_DIR", help="model folder (per stage: an imported one, or its name)")
    s.add_argument("-o", "--output", type=Path, required=True, metavar="SEALED_DIR")
    s.add_argument("--key-file", type=Path,
                   help="whole-folder mode: 32-byte key file (0600); created with a fresh random key when absent")
    s.add_argument("--stages", type=int, help="seal one shard per pipeline stage, each under its own key")
    s.add_argument("--partition", help="layers per stage, e.g. 8,12,10 (default: vLLM's split)")
    s.add_argument("--key-dir", type=Path, help="per-stage mode: folder for the new stage-K.key files (0600)")
    s.add_argument("--manifest", type=Path, help="per-stage mode: the model manifest (default: the registry's)")
    s.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help=argparse.SUPPRESS)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_seal)

    u = model_subparsers.add_parser("unseal", help="decrypt and authenticate a sealed model folder")
    u.add_argument("sealed_dir", type=Path, metavar="SEALED_DIR")
    u.add_argument("--key-file", type=Path, required=True)
    dest = u.add_mutually_exclusive_group(required=True)
    dest.add_argument("-o", "--output", type=Path, help="new folder for the plaintext (prefer tmpfs)")
    dest.add_argument("--verify-only", action="store_true", help="authenticate every chunk, write nothing")
    u.add_argument("--json", action="store_true")
    u.set_defaults(func=_cmd_unseal)


def _key_for_sealing(path: Path) -> tuple[SealingKey, bool]:
    if path.exists():
        return read_key_file(path), False
    key = SealingKey.generate()
    write_key_file(path, key)
    return key, True


def _model_and_manifest(model_arg: str, manifest_path: Path | None) -> tuple[Path, dict]:
    """The folder to seal and its model manifest (given, or the registry entry of that folder/name)."""
    if manifest_path is not None:
        manifest = json.loads(manifest_path.read_text())
        check_manifest(manifest)
        return Path(model_arg), manifest
    entries = registry.load_registry()
    if model_arg in entries and not Path(model_arg).is_dir():
        return registry.lookup(model_arg)
    folder = Path(model_arg).resolve()
    for name, entry in sorted(entries.items()):
        if Path(entry["path"]).resolve() == folder:
            return registry.lookup(name)
    raise ConclaveError(ModelReason.NOT_IMPORTED, f"{model_arg} is not an imported model; run "
                        f"`conclave model import {model_arg}` first or pass --manifest", exit_code=ExitCode.USAGE)


def _cmd_seal_stages(args) -> int:
    from conclave.runtime.node.engine import parse_partition, stage_layer_ranges

    if args.key_file is not None or args.key_dir is None:
        raise UsageError("--stages takes --key-dir (one key per stage), not --key-file", reason="bad_key_option")
    if args.stages < 1:
        raise UsageError("--stages must be at least 1", reason="bad_stages")
    folder, manifest = _model_and_manifest(args.model_dir, args.manifest)
    num_layers = int(manifest["num_layers"])
    if args.stages > num_layers:
        raise UsageError(f"--stages {args.stages} exceeds the model's {num_layers} layers", reason="bad_stages")
    partition = parse_partition(args.partition, args.stages, num_layers)
    ranges = stage_layer_ranges(num_layers, args.stages, partition)
    layout = seal_stages(folder, manifest, args.output, args.key_dir, ranges, chunk_size=args.chunk_size,
                         progress=progress)
    stages = [{**s.to_json(), "key_file": str(stage_key_path(args.key_dir, s.index))} for s in layout.stages]
    summary = {"ok": True, "sealed_dir": str(args.output), "layout": str(args.output / "stages.json"),
               "model_digest": layout.model_digest, "stages": stages}
    if args.json:
        print(json.dumps(summary))
    else:
        for s in stages:
            print(f"stage {s['index']}: layers [{s['layers'][0]}, {s['layers'][1]}) key id {s['key_id']} "
                  f"digest {s['digest']} -> {args.output / s['path']}")
    return 0


def _cmd_seal(args) -> int:
    if args.stages is not None:
        return _cmd_seal_stages(args)
    if args.key_file is None or args.key_dir is not None or args.partition is not None:
        raise UsageError("whole-folder sealing takes --key-file (per stage: --stages N --key-dir DIR)",
                         reason="bad_key_option")
    args.model_dir = Path(args.model_dir)
    key, created = _key_for_sealing(args.key_file)
    if created:
        progress(f"wrote a new sealing key to {args.key_file} (0600)")
    progress(f"sealing {args.model_dir} -> {args.output}")
    index = seal_directory(args.model_dir, args.output, key, chunk_size=args.chunk_size)
    summary = {"ok": True, "sealed_dir": str(args.output), "files": len(index.files),
               "bytes": index.total_size, "key_id": index.key_id, "key_created": created}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"sealed {len(index.files)} files ({index.total_size} bytes) into {args.output}; "
              f"key id {index.key_id}")
    return 0


def _cmd_unseal(args) -> int:
    key = read_key_file(args.key_file)
    if args.verify_only:
        index = verify_sealed(args.sealed_dir, key)
    else:
        out: Path = args.output
        if out.exists() and any(out.iterdir()):
            raise UsageError(f"{out} exists and is not empty")
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        index = unseal_into(args.sealed_dir, key, out)
    summary = {"ok": True, "reason": None, "files": len(index.files), "bytes": index.total_size,
               "output": None if args.verify_only else str(args.output)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"authenticated {len(index.files)} files ({index.total_size} bytes)"
              + ("" if args.verify_only else f" into {args.output}"))
    return 0
