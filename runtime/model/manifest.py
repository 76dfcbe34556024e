"""The model manifest: per-file SHA-256, per-layer tensor digests, one overall digest.

Groups: `layer.<i>` for every transformer layer (tensors named `...layers.<i>....`),
`embeddings`, `final_norm`, `lm_head`, and `other` for anything else. A group digest is the
SHA-256 over a canonical encoding of its sorted (name, dtype, shape, bytes) tuples, so a
pipeline stage can verify only its own layers (plus embeddings on the first stage and the
final norm / lm_head on the last) before loading. The overall digest is SHA-256 over the
canonical JSON of the manifest without the `digest` field.

Pure core (`group_of`, `group_digest`, `canonical_json`) + the I/O edge (`build_manifest`,
`verify_groups`, `verify_layer_range`).
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from conclave.runtime import canonical as _canonical
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.model.reasons import ModelReason
from conclave.runtime.model.safetensors_index import TensorEntry, read_index

SCHEMA = "conclave/model-manifest/v1"
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_CHUNK = 4 * 1024 * 1024


def group_of(tensor_name: str) -> str:
    """The manifest group a tensor belongs to (layer index, embeddings, final norm, lm_head)."""
    match = _LAYER_RE.search(tensor_name)
    if match:
        return f"layer.{int(match.group(1))}"
    if "embed_tokens" in tensor_name or tensor_name.endswith("wte.weight"):
        return "embeddings"
    if tensor_name.startswith("lm_head."):
        return "lm_head"
    if re.search(r"(?:^|\.)(norm|final_layernorm|ln_f)\.", tensor_name):
        return "final_norm"
    return "other"


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def _lp(data: bytes) -> bytes:
    return _u64(len(data)) + data


def group_digest(entries: Iterable[TensorEntry], read_bytes: Callable[[TensorEntry], Iterable[bytes]]) -> str:
    """SHA-256 over the canonical encoding of (name, dtype, shape, bytes), tensors sorted by name.

    Encoding per tensor: len-prefixed UTF-8 name, len-prefixed dtype, rank then each dim as
    big-endian u64, byte length as u64 then the raw bytes. Domain-separated by SCHEMA.
    """
    h = hashlib.sha256(_lp(SCHEMA.encode()))
    for entry in sorted(entries, key=lambda e: e.name):
        h.update(_lp(entry.name.encode()))
        h.update(_lp(entry.dtype.encode()))
        h.update(_u64(len(entry.shape)))
        for dim in entry.shape:
            h.update(_u64(dim))
        h.update(_u64(entry.end - entry.start))
        for chunk in read_bytes(entry):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: dict) -> bytes:
    """The model manifest's digest encoding (fixed before runtime/canonical.py's strict rule)."""
    return _canonical.canonical_json(obj, strict=False, ensure_ascii=True, allow_nan=True)


def overall_digest(manifest: dict) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in manifest.items() if k != "digest"})).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _byte_reader(folder: Path):
    handles: dict[str, object] = {}

    def read(entry: TensorEntry):
        fh = handles.get(entry.file)
        if fh is None:
            fh = handles[entry.file] = open(folder / entry.file, "rb")
        fh.seek(entry.start)
        remaining = entry.end - entry.start
        while remaining > 0:
            chunk = fh.read(min(_CHUNK, remaining))
            if not chunk:
                raise ConclaveError("model_malformed", f"{entry.file}: truncated inside tensor {entry.name}",
                                    exit_code=ExitCode.MALFORMED)
            remaining -= len(chunk)
            yield chunk

    def close():
        for fh in handles.values():
            fh.close()  # type: ignore[attr-defined]

    return read, close


def tensor_entries(folder: Path) -> list[TensorEntry]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConclaveError("model_malformed", f"{folder}: no .safetensors files (only safetensors models are supported)",
                            exit_code=ExitCode.MALFORMED)
    out: list[TensorEntry] = []
    for path in files:
        out.extend(read_index(path))
    return out


def _group(entries: list[TensorEntry]) -> dict[str, list[TensorEntry]]:
    groups: dict[str, list[TensorEntry]] = {}
    for entry in entries:
        groups.setdefault(group_of(entry.name), []).append(entry)
    return groups


def build_manifest(folder: Path, *, name: str, source: dict | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Hash a Hugging Face folder into a manifest dict (with its overall digest)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    file_hashes = {}
    for path in files:
        if progress:
            progress(f"hashing {path.relative_to(folder)} ({path.stat().st_size / 1e6:.1f} MB)")
        file_hashes[str(path.relative_to(folder))] = sha256_file(path)
    groups = _group(tensor_entries(folder))
    read, close = _byte_reader(folder)
    try:
        group_out = {}
        for gname in sorted(groups):
            entries = groups[gname]
            group_out[gname] = {
                "digest": group_digest(entries, read),
                "tensors": sorted(e.name for e in entries),
            }
    finally:
        close()
    if progress:
        progress(f"hashed {len(group_out)} tensor groups")
    layer_ids = [int(g.split(".")[1]) for g in group_out if g.startswith("layer.")]
    config = {}
    if (folder / "config.json").exists():
        config = json.loads((folder / "config.json").read_text())
    manifest = {
        "schema": SCHEMA,
        "name": name,
        "source": source or {},
        "dtype": str(config.get("torch_dtype") or config.get("dtype") or "unknown"),
        "architecture": (config.get("architectures") or ["unknown"])[0],
        "num_layers": (max(layer_ids) + 1) if layer_ids else 0,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "files": file_hashes,
        "groups": group_out,
    }
    manifest["digest"] = overall_digest(manifest)
    return manifest


def check_manifest(manifest: dict) -> None:
    """Structural and self-digest check of a loaded manifest (fails closed)."""
    if manifest.get("schema") != SCHEMA:
        raise ConclaveError("manifest_malformed", f"unknown manifest schema {manifest.get('schema')!r}",
                            exit_code=ExitCode.MALFORMED)
    for key in ("files", "groups", "digest", "num_layers"):
        if key not in manifest:
            raise ConclaveError("manifest_malformed", f"manifest lacks {key!r}", exit_code=ExitCode.MALFORMED)
    if overall_digest(manifest) != manifest["digest"]:
        raise ConclaveError("manifest_digest_mismatch", "manifest content does not match its digest",
                            exit_code=ExitCode.VERIFICATION_FAILED)


def stage_groups(manifest: dict, start: int, end: int, *, first: bool, last: bool) -> list[str]:
    """Groups a pipeline stage holding layers [start, end) must verify."""
    n = int(manifest["num_layers"])
    if not (0 <= start < end <= n):
        raise ConclaveError("bad_layer_range", f"layer range [{start}, {end}) outside 0..{n}",
                            exit_code=ExitCode.USAGE)
    wanted = [f"layer.{i}" for i in range(start, end)]
    present = manifest["groups"]
    if first or (last and manifest.get("tie_word_embeddings")):
        wanted.append("embeddings")
    if last:
        wanted += ["final_norm", "lm_head"]
    wanted += ["other"]
    return [g for g in wanted if g in present or g.startswith("layer.")]


@dataclass(frozen=True)
class VerifyResult:
    checked: list[str]
    mismatched: list[str]

    @property
    def ok(self) -> bool:
        return not self.mismatched


def verify_groups(folder: Path, manifest: dict, groups: list[str], *, files: Iterable[str] = ()) -> VerifyResult:
    """Recompute the given group digests (and whole-file hashes for `files`) from `folder`.

    Cryptographic checks stop at nothing here on purpose: the result lists every mismatched
    group so an operator sees which shard is bad; callers treat any mismatch as failure.
    """
    folder = Path(folder)
    check_manifest(manifest)
    by_group = _group(tensor_entries(folder))
    read, close = _byte_reader(folder)
    mismatched, checked = [], []
    try:
        for gname in groups:
            expected = manifest["groups"].get(gname)
            actual_entries = by_group.get(gname, [])
            checked.append(gname)
            if expected is None:
                mismatched.append(gname)
                continue
            if sorted(e.name for e in actual_entries) != expected["tensors"]:
                mismatched.append(gname)
                continue
            if group_digest(actual_entries, read) != expected["digest"]:
                mismatched.append(gname)
    finally:
        close()
    for rel in files:
        checked.append(f"file:{rel}")
        expected = manifest["files"].get(rel)
        if expected is None or not (folder / rel).is_file() or sha256_file(folder / rel) != expected:
            mismatched.append(f"file:{rel}")
    return VerifyResult(checked, mismatched)


SAFETENSORS_INDEX_SUFFIX = ".safetensors.index.json"


def small_files(manifest: dict) -> list[str]:
    """Files every stage needs besides its tensors (config, tokenizer), checked by whole-file hash.

    Weight files and the safetensors index are not in it: a stage's shard holds its own weight
    file(s) and an index listing only its tensors, so neither can match the whole model's hash;
    the tensors are covered by the group digests and a shard's index by verify_stage_shard.
    """
    return sorted(f for f in manifest["files"]
                  if not f.endswith(".safetensors") and not f.endswith(SAFETENSORS_INDEX_SUFFIX))


def verify_layer_range(folder: Path, manifest: dict, start: int, end: int, *, first: bool, last: bool) -> VerifyResult:
    """Verify the shard of a stage holding layers [start, end); raises model_shard_mismatch on failure."""
    groups = stage_groups(manifest, start, end, first=first, last=last)
    result = verify_groups(folder, manifest, groups, files=small_files(manifest))
    if not result.ok:
        raise ConclaveError(ModelReason.SHARD_MISMATCH,
                            f"model shard does not match the manifest: {', '.join(result.mismatched)}",
                            exit_code=ExitCode.VERIFICATION_FAILED)
    return result
