"""The local model owner's sealed shards, kept between `conclave up`s.

Local mode plays the model owner: it seals the imported model into one shard per stage, each under
its own key, for the broker to release stage by stage. That is about 650 MB of reading and AES-GCM
for the default model on every `up`, and its result depends only on the model (the manifest
digest), the layer split and the keys. So the owner keeps one sealed copy per (model digest,
layer ranges) under CACHE/sealed/ID/: `sealed/` (the layout a node reads, public) and `keys/`
(stage-K.key, 0600 in a 0700 folder, read by the local broker). The keys sit on the same disk as
the plaintext model they protect, in the same user's cache, so keeping them exposes nothing that
the imported model's folder does not already hold.

A copy is reused only when it is complete, unchanged and consistent: stages.json parses, names
this model digest and exactly these ranges, each stage's sealed index has the SHA-256 the layout
pins, each key file exists, is private and has the key id the layout names, and every file of the
sealed folder has the size and modification time recorded when it was sealed (a shard changed on
disk, e.g. by the tampered-shard fault test, is never reused). Anything else is sealed afresh into
a new entry (renamed into place when done, so an interrupted seal is never used). Old entries are
never rewritten, since a running cluster may still read them; one is removed only when it is
unusable and was created more than PRUNE_AFTER_S ago.
Every node still verifies its unsealed shard against the model manifest (model_shard_mismatch).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from conclave.runtime import config
from conclave.runtime.errors import ConclaveError
from conclave.runtime.sealing.folder import INDEX_NAME
from conclave.runtime.sealing.key import read_key_file
from conclave.runtime.sealing.shards import (LAYOUT_NAME, LAYOUT_VERSION, ShardLayout, parse_layout, seal_stages,
                                             stage_dir_name, stage_key_path)

CACHE_FORMAT = 1
FINGERPRINT = "files.json"
PRUNE_AFTER_S = 3600.0


def cache_id(model_digest: str, ranges: list[tuple[int, int]]) -> str:
    material = json.dumps({"format": CACHE_FORMAT, "layout": LAYOUT_VERSION, "model_digest": model_digest,
                           "ranges": [list(r) for r in ranges]}, sort_keys=True).encode()
    return hashlib.sha256(b"conclave/sealed-cache\x00" + material).hexdigest()[:24]


def cache_root() -> Path:
    return config.cache_dir() / "sealed"


def _fingerprint(sealed: Path) -> dict:
    out = {}
    for path in sorted(sealed.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(sealed))] = [st.st_size, st.st_mtime_ns]
    return out


def reusable(entry: Path, model_digest: str, ranges: list[tuple[int, int]]) -> ShardLayout | None:
    """The cached layout when the entry is complete, unchanged and matches; None otherwise (never raises)."""
    sealed, keys = entry / "sealed", entry / "keys"
    try:
        layout = parse_layout((sealed / LAYOUT_NAME).read_bytes())
        if layout.model_digest != model_digest or [s.layers for s in layout.stages] != [tuple(r) for r in ranges]:
            return None
        if keys.stat().st_mode & 0o077:
            return None
        if json.loads((entry / FINGERPRINT).read_text()) != _fingerprint(sealed):
            return None
        for shard in layout.stages:
            index = sealed / stage_dir_name(shard.index) / INDEX_NAME
            if hashlib.sha256(index.read_bytes()).hexdigest() != shard.sealed_index_sha256:
                return None
            if not read_key_file(stage_key_path(keys, shard.index)).same_id(shard.key_id):
                return None
    except (OSError, ConclaveError, ValueError):
        return None
    return layout


def _entries(root: Path, ident: str) -> list[Path]:
    """This id's entries, newest first."""
    try:
        found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(ident + "-")]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.name, reverse=True)


def sealed_shards(model_dir: Path, manifest: dict, ranges: list[tuple[int, int]], *,
                  root: Path | None = None, progress: Callable[[str], None] | None = None,
                  clock: Callable[[], float] = time.time) -> tuple[Path, Path, bool]:
    """(sealed folder, key folder, reused): this model's stage shards for `ranges`, sealed now
    unless a complete, unchanged, matching copy is cached."""
    say = progress or (lambda _m: None)
    root = Path(root) if root is not None else cache_root()
    ident = cache_id(manifest["digest"], ranges)
    for entry in _entries(root, ident):
        if reusable(entry, manifest["digest"], ranges) is not None:
            say(f"model owner: reusing the sealed stage shards in {entry} (same model digest and layer split)")
            return entry / "sealed", entry / "keys", True
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    entry = root / f"{ident}-{time.time_ns():x}"
    work = root / f".{entry.name}.partial"
    work.mkdir(mode=0o700)
    try:
        seal_stages(Path(model_dir), manifest, work / "sealed", work / "keys", list(ranges), progress=say)
        (work / FINGERPRINT).write_text(json.dumps(_fingerprint(work / "sealed"), sort_keys=True))
        os.rename(work, entry)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for old in _entries(root, ident):
        if old != entry and clock() - old.stat().st_mtime > PRUNE_AFTER_S:
            shutil.rmtree(old, ignore_errors=True)   # unusable (checked above) and long unused
    return entry / "sealed", entry / "keys", False
