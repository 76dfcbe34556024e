"""Seal a whole model folder; unseal it to memory or into a private tmpfs folder.

Sealed folder layout:
    SEALED/conclave-sealed.json     the index (public, MAC'd with a key derived from the sealing key)
    SEALED/blobs/<file_id hex>.cse  one sealed file per model file (see stream.py)

The index lists, per model file, its relative path, file id, size and sealed size, plus the
sealing key's public id. Its HMAC-SHA256 (key: HKDF(master, "index")) covers the canonical JSON
of everything else, so renaming, adding, dropping or re-pointing files is detected, and each
blob's header must carry the file id the index gives for that path (no whole-blob swaps).
Paths and sizes are visible without the key; file contents are not.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterator

from conclave.runtime.canonical import CanonicalError, canonical_json, strict_loads
from conclave.runtime.sealing import stream
from conclave.runtime.sealing.errors import SealError, SealReason
from conclave.runtime.sealing.key import SealingKey

INDEX_NAME = "conclave-sealed.json"
BLOB_DIR = "blobs"
INDEX_FORMAT = "conclave-sealed-model"
INDEX_VERSION = 1
MAX_INDEX_LEN = 16 * 1024 * 1024
MEMORY_FSTYPES = ("tmpfs", "ramfs")


@dataclass(frozen=True)
class SealedEntry:
    path: str          # relative POSIX path inside the model folder
    file_id: bytes
    size: int
    sealed_size: int

    @property
    def blob(self) -> str:
        return f"{BLOB_DIR}/{self.file_id.hex()}.cse"

    def to_json(self) -> dict:
        return {"path": self.path, "file_id": self.file_id.hex(), "size": self.size,
                "sealed_size": self.sealed_size}


@dataclass(frozen=True)
class SealedIndex:
    chunk_size: int
    key_id: str
    files: tuple[SealedEntry, ...]

    def body(self) -> dict:
        return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "cipher": "AES-256-GCM",
                "chunk_size": self.chunk_size, "key_id": self.key_id,
                "files": [f.to_json() for f in self.files]}

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def _safe_relpath(text: object) -> str:
    if not isinstance(text, str) or not text or "\x00" in text or "\\" in text:
        raise SealError(SealReason.MALFORMED, "index path must be a non-empty POSIX path")
    p = PurePosixPath(text)
    if p.is_absolute() or any(part in ("", ".", "..") for part in p.parts) or str(p) != text:
        raise SealError(SealReason.MALFORMED, f"unsafe path in index: {text!r}")
    return text


def _mac(key: SealingKey, body: dict) -> str:
    return hmac.new(key.index_key(), canonical_json(body), hashlib.sha256).hexdigest()


def _model_files(model_dir: Path) -> list[tuple[str, Path]]:
    out = []
    for root, dirs, files in os.walk(model_dir, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            full = Path(root) / name
            if not full.is_file():  # broken link, socket, ...: refuse rather than silently drop
                raise SealError(SealReason.MALFORMED, f"{full} is not a regular file")
            rel = full.relative_to(model_dir).as_posix()
            out.append((_safe_relpath(rel), full))
    return out


def seal_directory(model_dir: Path, sealed_dir: Path, key: SealingKey, *,
                   chunk_size: int = stream.DEFAULT_CHUNK_SIZE) -> SealedIndex:
    """Encrypt every file under model_dir into a new (or empty) sealed_dir; write the index last."""
    model_dir, sealed_dir = Path(model_dir), Path(sealed_dir)
    if not model_dir.is_dir():
        raise SealError(SealReason.MALFORMED, f"{model_dir} is not a folder")
    if sealed_dir.resolve().is_relative_to(model_dir.resolve()):
        raise SealError(SealReason.MALFORMED, "the sealed folder cannot be inside the model folder")
    files = _model_files(model_dir)
    if not files:
        raise SealError(SealReason.MALFORMED, f"{model_dir} holds no files")
    return seal_sources([(rel, lambda full=full: open(full, "rb")) for rel, full in files], sealed_dir, key,
                        chunk_size=chunk_size)


def seal_sources(sources: list[tuple[str, Callable[[], BinaryIO]]], sealed_dir: Path, key: SealingKey, *,
                 chunk_size: int = stream.DEFAULT_CHUNK_SIZE,
                 progress: Callable[[str], None] | None = None) -> SealedIndex:
    """Encrypt each (relative path, opener) into a new (or empty) sealed_dir; write the index last.

    The openers return readable binary streams (a file, or a stream built on the fly such as a
    stage's safetensors), so plaintext that exists only as a selection never touches a disk.
    """
    sealed_dir = Path(sealed_dir)
    if sealed_dir.exists() and any(sealed_dir.iterdir()):
        raise SealError(SealReason.MALFORMED, f"{sealed_dir} exists and is not empty")
    rels = [_safe_relpath(rel) for rel, _open in sources]
    if not rels or len(set(rels)) != len(rels):
        raise SealError(SealReason.MALFORMED, "nothing to seal, or a path given twice")
    (sealed_dir / BLOB_DIR).mkdir(parents=True, exist_ok=True)
    entries = []
    try:
        for rel, opener in sources:
            file_id = secrets.token_bytes(stream.FILE_ID_LEN)
            blob = sealed_dir / BLOB_DIR / f"{file_id.hex()}.cse"
            with opener() as src, open(blob, "xb") as dst:
                size, sealed_size = stream.seal_stream(key, src, dst, file_id=file_id,
                                                       chunk_size=chunk_size)
            entries.append(SealedEntry(rel, file_id, size, sealed_size))
            if progress:
                progress(f"sealed {rel} ({size / 1e6:.1f} MB)")
    except BaseException:
        shutil.rmtree(sealed_dir / BLOB_DIR, ignore_errors=True)  # no half-sealed folder left
        raise
    index = SealedIndex(chunk_size, key.key_id.hex(), tuple(entries))
    body = index.body()
    doc = {**body, "mac": _mac(key, body)}
    (sealed_dir / INDEX_NAME).write_bytes(canonical_json(doc) + b"\n")
    return index


def read_index(sealed_dir: Path) -> tuple[SealedIndex, dict, str]:
    """Structure-only read of the index (no key needed): (index, signed body, mac hex)."""
    path = Path(sealed_dir) / INDEX_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SealError(SealReason.MALFORMED, f"{sealed_dir} is not a sealed model (no {INDEX_NAME})") from None
    if len(data) > MAX_INDEX_LEN:
        raise SealError(SealReason.MALFORMED, "index too large")
    try:
        doc = strict_loads(data)
    except CanonicalError as exc:
        raise SealError(SealReason.MALFORMED, f"index: {exc}") from None
    expected = {"format", "version", "cipher", "chunk_size", "key_id", "files", "mac"}
    if not isinstance(doc, dict) or set(doc) != expected or doc["format"] != INDEX_FORMAT:
        raise SealError(SealReason.MALFORMED, "not a Conclave sealed-model index")
    if doc["version"] != INDEX_VERSION or doc["cipher"] != "AES-256-GCM":
        raise SealError(SealReason.UNSUPPORTED, "unsupported sealed-model index version or cipher")
    if not isinstance(doc["files"], list) or not isinstance(doc["mac"], str) \
            or not isinstance(doc["key_id"], str) or not isinstance(doc["chunk_size"], int):
        raise SealError(SealReason.MALFORMED, "index fields have wrong types")
    entries, seen = [], set()
    for item in doc["files"]:
        if not isinstance(item, dict) or set(item) != {"path", "file_id", "size", "sealed_size"}:
            raise SealError(SealReason.MALFORMED, "index entry has wrong fields")
        rel = _safe_relpath(item["path"])
        try:
            file_id = bytes.fromhex(item["file_id"])
        except (ValueError, TypeError):
            raise SealError(SealReason.MALFORMED, "index file_id is not hex") from None
        if len(file_id) != stream.FILE_ID_LEN or rel in seen:
            raise SealError(SealReason.MALFORMED, "index file_id length or duplicate path")
        for n in ("size", "sealed_size"):
            if not isinstance(item[n], int) or isinstance(item[n], bool) or item[n] < 0:
                raise SealError(SealReason.MALFORMED, f"index {n} must be a non-negative integer")
        seen.add(rel)
        entries.append(SealedEntry(rel, file_id, item["size"], item["sealed_size"]))
    body = {k: v for k, v in doc.items() if k != "mac"}
    return SealedIndex(doc["chunk_size"], doc["key_id"], tuple(entries)), body, doc["mac"]


def open_index(sealed_dir: Path, key: SealingKey) -> SealedIndex:
    """Read the index and check it was written with this key and not edited since."""
    index, body, mac = read_index(sealed_dir)
    if not key.same_id(index.key_id):
        raise SealError(SealReason.WRONG_KEY, "this key is not the one the model was sealed with")
    if not hmac.compare_digest(_mac(key, body), mac):
        raise SealError(SealReason.INDEX_INVALID, "sealed-model index MAC does not check")
    return index


def _unseal_entry(sealed_dir: Path, key: SealingKey, entry: SealedEntry, sink) -> None:
    blob = Path(sealed_dir) / entry.blob
    try:
        src = open(blob, "rb")
    except FileNotFoundError:
        raise SealError(SealReason.FILE_MISSING, f"sealed blob for {entry.path} is missing") from None
    with src:
        size = stream.unseal_stream(key, src, sink, expected_file_id=entry.file_id)
    if size != entry.size:
        raise SealError(SealReason.AUTH_FAILED, f"{entry.path}: size differs from the index")


def unseal_file(sealed_dir: Path, key: SealingKey, path: str) -> bytes:
    """One model file's plaintext, in memory."""
    index = open_index(sealed_dir, key)
    entry = next((e for e in index.files if e.path == path), None)
    if entry is None:
        raise SealError(SealReason.FILE_MISSING, f"{path} is not in the sealed model")
    buf = io.BytesIO()
    _unseal_entry(sealed_dir, key, entry, buf.write)
    return buf.getvalue()


def unseal_to_memory(sealed_dir: Path, key: SealingKey) -> dict[str, bytes]:
    """Every model file's plaintext, in memory ({relative path: bytes}); all or nothing."""
    index = open_index(sealed_dir, key)
    out: dict[str, bytes] = {}
    for entry in index.files:
        buf = io.BytesIO()
        _unseal_entry(sealed_dir, key, entry, buf.write)
        out[entry.path] = buf.getvalue()
    return out


def verify_sealed(sealed_dir: Path, key: SealingKey) -> SealedIndex:
    """Authenticate every chunk of every file without keeping any plaintext."""
    index = open_index(sealed_dir, key)
    for entry in index.files:
        _unseal_entry(sealed_dir, key, entry, lambda _chunk: None)
    return index


def _fstype(path: Path) -> str | None:
    """The filesystem type of the mount holding `path` (longest /proc/self/mounts prefix)."""
    target = str(Path(path).resolve())
    best, fstype = "", None
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        return None
    return fstype


def on_memory_fs(path: Path) -> bool:
    """Whether `path` lies on tmpfs/ramfs (where plaintext weights may be written)."""
    return _fstype(path) in MEMORY_FSTYPES


def unseal_into(sealed_dir: Path, key: SealingKey, dest: Path) -> SealedIndex:
    """Write the plaintext model into an existing empty folder (files 0600, folders 0700).

    On any failure everything written so far is removed before the error propagates.
    """
    dest = Path(dest)
    index = open_index(sealed_dir, key)
    try:
        for entry in index.files:
            target = dest.joinpath(*PurePosixPath(entry.path).parts)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                _unseal_entry(sealed_dir, key, entry, out.write)
    except BaseException:
        for child in list(dest.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        raise
    return index


@contextlib.contextmanager
def unsealed_directory(sealed_dir: Path, key: SealingKey, *, base: Path | str = "/dev/shm",
                       require_memory_fs: bool = True) -> Iterator[Path]:
    """Unseal into a fresh private folder (base/conclave-XXXX, 0700) and remove it afterwards.

    Plaintext weights must not land on a disk: unless require_memory_fs is False the base must
    be on tmpfs/ramfs (reason seal_not_tmpfs otherwise). The folder is removed on exit, also when
    unsealing or the caller's block fails.
    """
    base = Path(base)
    if require_memory_fs and not on_memory_fs(base):
        raise SealError(SealReason.NOT_TMPFS, f"{base} is not a memory filesystem (tmpfs)")
    folder = Path(tempfile.mkdtemp(prefix="conclave-", dir=base))
    try:
        os.chmod(folder, 0o700)
        unseal_into(sealed_dir, key, folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
