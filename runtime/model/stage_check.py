"""What one pipeline stage holds, checked exactly: its shard digest and the strict shard check.

A stage's shard folder must hold exactly the tensors of its groups (model.manifest.stage_groups:
layers [start, end), embeddings on the first stage and on a tied last stage, final norm and
lm_head on the last), the small files every stage needs, and nothing else: a tensor of another
stage, an extra file vLLM might read (tokenizer, processor config) or an index that names other
tensors is a mismatch, so what a node verified is exactly what its engine loads.

The shard digest is what a node signs after the check: SHA-256 over a canonical encoding of the
model-manifest group digests and small-file hashes the stage verifies (the same selection as
verify_layer_range), so anyone holding the public model manifest can recompute it.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from conclave.runtime import canonical
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.model.manifest import (SAFETENSORS_INDEX_SUFFIX, VerifyResult, group_of, small_files,
                                             stage_groups, tensor_entries, verify_layer_range)
from conclave.runtime.model.reasons import ModelReason

SHARD_DIGEST_CONTEXT = "conclave/stage-shard/v1"
_MAX_INDEX_LEN = 64 * 1024 * 1024


def shard_digest(model_manifest: Mapping, start: int, end: int, *, first: bool, last: bool) -> str:
    """SHA-256 hex of what a stage holding layers [start, end) verifies before loading."""
    groups = stage_groups(dict(model_manifest), start, end, first=first, last=last)
    missing = [g for g in groups if g not in model_manifest["groups"]]
    if missing:
        raise ConclaveError("model_manifest_incomplete", f"model manifest lacks groups {', '.join(missing)}",
                            exit_code=ExitCode.MALFORMED)
    doc = {"context": SHARD_DIGEST_CONTEXT, "model_digest": model_manifest["digest"], "layers": [start, end],
           "groups": {g: model_manifest["groups"][g]["digest"] for g in groups},
           "files": {f: model_manifest["files"][f] for f in small_files(dict(model_manifest))}}
    return hashlib.sha256(canonical.canonical_json(doc, strict=False, ensure_ascii=True,
                                                   allow_nan=True)).hexdigest()


def _mismatch(detail: str) -> ConclaveError:
    return ConclaveError(ModelReason.SHARD_MISMATCH, f"model shard does not match the manifest: {detail}",
                         exit_code=ExitCode.VERIFICATION_FAILED)


def _check_index(index_path: Path, names: dict[str, str]) -> None:
    """A shard's safetensors index must map exactly the shard's tensors to the files holding them."""
    try:
        if index_path.stat().st_size > _MAX_INDEX_LEN:
            raise _mismatch(f"{index_path.name} is implausibly large")
        weight_map = json.loads(index_path.read_bytes())["weight_map"]
    except (ValueError, KeyError, TypeError):
        raise _mismatch(f"{index_path.name} is not a safetensors index") from None
    if not isinstance(weight_map, dict) or weight_map != names:
        raise _mismatch(f"{index_path.name} lists other tensors or files than the shard holds")


def verify_stage_shard(folder: Path, manifest: dict, start: int, end: int, *, first: bool,
                       last: bool) -> VerifyResult:
    """Verify a stage's shard folder exactly; raises model_shard_mismatch on any difference."""
    folder = Path(folder)
    wanted = set(stage_groups(manifest, start, end, first=first, last=last))
    try:
        entries = tensor_entries(folder)
    except ConclaveError as exc:
        raise _mismatch(exc.message) from None
    extra = sorted({group_of(e.name) for e in entries} - wanted)
    if extra:
        raise _mismatch(f"tensors of groups this stage does not hold: {', '.join(extra)}")
    names = {e.name: e.file for e in entries}
    if len(names) != len(entries):
        raise _mismatch("a tensor name appears in more than one weight file")
    allowed_small = set(small_files(manifest))
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise _mismatch(f"{rel} is not a regular file")
        if path.is_dir() or rel in allowed_small:
            continue
        if "/" in rel or not (rel.endswith(".safetensors") or rel.endswith(SAFETENSORS_INDEX_SUFFIX)):
            raise _mismatch(f"{rel} is not part of the model")
        if rel.endswith(SAFETENSORS_INDEX_SUFFIX):
            _check_index(path, names)
    try:
        return verify_layer_range(folder, manifest, start, end, first=first, last=last)
    except ConclaveError as exc:
        if exc.reason == "model_malformed":   # e.g. a tensor's offsets point past the end of its file
            raise _mismatch(exc.message) from None
        raise
