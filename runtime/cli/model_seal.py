"""`conclave model seal|unseal`: encrypt a model folder for untrusted storage, and back.

Wired by the serving engineer's runtime/cli/model.py, which calls add_seal_parser(model_subparsers).
The 32-byte key lives only in the 0600 file named by --key-file (created when absent); it is
never printed. In production the model owner's key broker releases it to admitted nodes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from conclave.runtime.errors import UsageError
from conclave.runtime.log import progress
from conclave.runtime.sealing import (SealingKey, read_key_file, seal_directory, unseal_into,
                                      verify_sealed, write_key_file)
from conclave.runtime.sealing.stream import DEFAULT_CHUNK_SIZE


def add_seal_parser(model_subparsers: argparse._SubParsersAction) -> None:
    s = model_subparsers.add_parser("seal", help="encrypt every file of a model folder (AES-256-GCM)")
    s.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    s.add_argument("-o", "--output", type=Path, required=True, metavar="SEALED_DIR")
    s.add_argument("--key-file", type=Path, required=True,
                   help="32-byte key file (0600); created with a fresh random key when absent")
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


def _cmd_seal(args) -> int:
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
