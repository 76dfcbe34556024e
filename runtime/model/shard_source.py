"""A node's own stage shard: fetch it (local path or http(s) URL), unseal it, verify it exactly.

Three steps, one job each:
- fetch_sealed_shard(location): a local sealed folder is used where it lies; an http(s) URL is
  downloaded (its index first, then every blob the index lists, each capped at the size the
  index gives, the total capped by max_bytes, with timeouts and progress lines) into a fresh
  private 0700 folder. Optionally the index must hash to the layout's sealed_index_sha256.
- open_sealed_shard(shard, key, ...): unseal with the stage key (from the broker) into a private
  folder on tmpfs (0700, files 0600), then verify the plaintext against the model manifest's
  per-layer digests for exactly that stage (model.stage_check.verify_stage_shard). A shard that
  does not authenticate or does not match is `model_shard_mismatch` and its plaintext is
  removed; a key that is not the shard's keeps the sealing reason `seal_wrong_key`.
- open_plain_shard(folder, ...): the plain network mode, unsealed weights; still verified.

The shard source is untrusted (a CDN, a shared disk): the key id check, AES-GCM and the manifest
digests decide, never the transport. Nothing here logs or raises key material.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from conclave.runtime import log
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.model.manifest import verify_layer_range
from conclave.runtime.model.reasons import ModelReason
from conclave.runtime.model.stage_check import shard_digest, verify_stage_shard
from conclave.runtime.sealing.errors import SealError, SealReason
from conclave.runtime.sealing.folder import INDEX_NAME, MAX_INDEX_LEN, on_memory_fs, read_index, unseal_into
from conclave.runtime.sealing.key import SealingKey

DEFAULT_MAX_BYTES = 64 * 1024 ** 3      # 64 GiB: far above a stage of the models Conclave serves
DEFAULT_TIMEOUT = 30.0                  # seconds per connect / read
USER_AGENT = "conclave-shard-fetch/1"
_BLOCK = 1024 * 1024
# Sealing reasons that mean "these bytes are not what the model owner sealed" (corruption,
# truncation, swapped or missing blobs, an edited index): for a node, a shard that does not match.
_INTEGRITY_REASONS = frozenset({SealReason.AUTH_FAILED, SealReason.TRUNCATED, SealReason.TRAILING_DATA,
                                SealReason.INDEX_INVALID, SealReason.FILE_MISMATCH, SealReason.FILE_MISSING})


class ShardMismatch(ConclaveError):
    """model_shard_mismatch; `cause` keeps the sealing reason when the shard failed to authenticate."""

    def __init__(self, message: str, cause: str | None = None):
        super().__init__(ModelReason.SHARD_MISMATCH, message, exit_code=ExitCode.VERIFICATION_FAILED)
        self.cause = cause


@dataclass(frozen=True)
class ShardResult:
    """What a node reports about its shard (`conclave status --json` "shard")."""

    sealed: bool
    key_id: str          # the stage key's public id ("" for a plain shard)
    layers: tuple[int, int]
    digest: str          # model.stage_check.shard_digest: what the node signs
    verified: bool
    path: Path           # the plaintext folder the engine loads

    def to_json(self) -> dict:
        return {"sealed": self.sealed, "key_id": self.key_id, "layers": list(self.layers),
                "digest": self.digest, "verified": self.verified}


def _source_error(message: str) -> ConclaveError:
    return ConclaveError(ModelReason.SHARD_SOURCE_INVALID, message, exit_code=ExitCode.USAGE)


def _fetch_error(message: str) -> ConclaveError:
    return ConclaveError(ModelReason.SHARD_FETCH_FAILED, message, exit_code=ExitCode.RUNTIME)


def stage_shard_location(root: str, index: int) -> str:
    """Where stage `index`'s shard lies under a layout root (a folder path or an http(s) URL)."""
    return root.rstrip("/") + f"/stage-{index}"


def _redact(url: str) -> str:
    """The URL without credentials or query (logs and errors must not carry tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _download(url: str, dest: Path, *, limit: int, timeout: float,
              on_bytes: Callable[[int], None]) -> int:
    """GET url into a new 0600 file, refusing more than `limit` bytes. Returns the byte count."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    total = 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise ConclaveError(ModelReason.SHARD_TOO_LARGE,
                                    f"{_redact(url)}: {length} bytes exceed the cap of {limit}")
            while block := resp.read(_BLOCK):
                total += len(block)
                if total > limit:
                    raise ConclaveError(ModelReason.SHARD_TOO_LARGE, f"{_redact(url)}: more than {limit} bytes")
                out.write(block)
                on_bytes(len(block))
    except urllib.error.HTTPError as exc:
        raise _fetch_error(f"{_redact(url)}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise _fetch_error(f"{_redact(url)}: {getattr(exc, 'reason', None) or type(exc).__name__}") from None
    return total


def _download_shard(url: str, work_dir: Path | None, *, max_bytes: int, timeout: float,
                    progress: Callable[[str], None]) -> Path:
    base = url.rstrip("/") + "/"
    if work_dir is not None:
        Path(work_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix="conclave-shard-", dir=work_dir))
    try:
        os.chmod(dest, 0o700)
        progress(f"downloading shard index from {_redact(base)}")
        _download(base + INDEX_NAME, dest / INDEX_NAME, limit=MAX_INDEX_LEN, timeout=timeout, on_bytes=lambda n: None)
        index, _body, _mac = read_index(dest)
        total = sum(e.sealed_size for e in index.files)
        if total > max_bytes:
            raise ConclaveError(ModelReason.SHARD_TOO_LARGE, f"shard is {total} bytes, the cap is {max_bytes}")
        (dest / "blobs").mkdir(mode=0o700)
        done, step, next_report = 0, max(total // 10, 1), 0

        def count(n: int) -> None:
            nonlocal done, next_report
            done += n
            if done >= next_report:
                progress(f"downloaded {done / 1e6:.1f} of {total / 1e6:.1f} MB of the shard")
                next_report = done + step

        for entry in index.files:
            got = _download(base + entry.blob, dest / PurePosixPath(entry.blob), limit=entry.sealed_size,
                            timeout=timeout, on_bytes=count)
            if got != entry.sealed_size:
                raise _fetch_error(f"{entry.blob}: got {got} bytes, the index says {entry.sealed_size}")
        progress(f"downloaded the shard ({total / 1e6:.1f} MB) into {dest}")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def fetch_sealed_shard(location: str, *, work_dir: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                       timeout: float = DEFAULT_TIMEOUT, expected_index_sha256: str | None = None,
                       progress: Callable[[str], None] = log.progress) -> Path:
    """The sealed shard folder for `location` (local folder, file:// or http(s):// URL).

    A downloaded shard lands in a fresh private folder under work_dir (the caller removes it).
    expected_index_sha256 (stages.json's sealed_index_sha256) pins the exact sealed shard.
    """
    if not isinstance(location, str) or not location:
        raise _source_error("shard location must be a path or an http(s) URL")
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme in ("http", "https"):
        folder = _download_shard(location, work_dir, max_bytes=max_bytes, timeout=timeout, progress=progress)
    elif scheme in ("", "file"):
        folder = Path(urllib.parse.urlsplit(location).path if scheme == "file" else location)
        if not (folder / INDEX_NAME).is_file():
            raise _source_error(f"{folder} is not a sealed shard (no {INDEX_NAME})")
    else:
        raise _source_error(f"unsupported shard location scheme {scheme!r}")
    if expected_index_sha256 is not None:
        digest = hashlib.sha256((folder / INDEX_NAME).read_bytes()).hexdigest()
        if digest != expected_index_sha256:
            if scheme in ("http", "https"):
                shutil.rmtree(folder, ignore_errors=True)
            raise ShardMismatch("the sealed shard's index is not the one the layout names")
    return folder


def _prepare_dest(dest: Path, require_memory_fs: bool) -> Path:
    dest = Path(dest)
    if dest.exists() and (dest.is_symlink() or not dest.is_dir() or any(dest.iterdir())):
        raise ConclaveError(ModelReason.SHARD_DEST_NOT_EMPTY, f"{dest} exists and is not an empty folder",
                            exit_code=ExitCode.USAGE)
    parent = dest.parent
    if require_memory_fs and not on_memory_fs(parent):
        raise SealError(SealReason.NOT_TMPFS, f"{parent} is not a memory filesystem (tmpfs)")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    return dest


def _clear(folder: Path) -> None:
    for child in list(folder.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _verify(folder: Path, manifest: dict, layers: tuple[int, int], *, first: bool, last: bool) -> str:
    start, end = layers
    verify_stage_shard(folder, manifest, start, end, first=first, last=last)
    return shard_digest(manifest, start, end, first=first, last=last)


def open_sealed_shard(shard_dir: Path, key: SealingKey, manifest: dict, layers: tuple[int, int], *,
                      first: bool, last: bool, dest: Path, require_memory_fs: bool = True,
                      progress: Callable[[str], None] = log.progress) -> ShardResult:
    """Unseal stage [start, end)'s shard into `dest` (new or empty, on tmpfs) and verify it exactly.

    `dest` is a path the caller chooses because the engine loads it by path on every rank (vLLM
    passes one model path to all stages). On any failure nothing of the plaintext is left.
    """
    dest = _prepare_dest(dest, require_memory_fs)
    start, end = layers
    progress(f"unsealing the shard of layers [{start}, {end}) into {dest}")
    try:
        try:
            unseal_into(shard_dir, key, dest)
        except SealError as exc:
            if exc.reason in _INTEGRITY_REASONS:
                raise ShardMismatch(f"the sealed shard failed to authenticate: {exc.message}",
                                    cause=exc.reason) from None
            raise
        progress(f"verifying layers [{start}, {end}) against the model manifest")
        digest = _verify(dest, manifest, layers, first=first, last=last)
    except BaseException:
        _clear(dest)
        raise
    progress(f"shard verified: layers [{start}, {end}), digest {digest}")
    return ShardResult(True, key.key_id.hex(), (start, end), digest, True, dest)


def open_plain_shard(folder: Path, manifest: dict, layers: tuple[int, int], *, first: bool, last: bool,
                     exact: bool = True) -> ShardResult:
    """Verify an unsealed folder for stage [start, end) (plain network mode).

    exact=True: the folder must hold only this stage's tensors (a per-stage plain shard);
    exact=False: a whole-model folder, of which only this stage's groups are checked.
    """
    start, end = layers
    if exact:
        digest = _verify(Path(folder), manifest, layers, first=first, last=last)
    else:
        verify_layer_range(Path(folder), manifest, start, end, first=first, last=last)
        digest = shard_digest(manifest, start, end, first=first, last=last)
    return ShardResult(False, "", (start, end), digest, True, Path(folder))


def obtain_stage_shard(location: str, key: SealingKey, manifest: dict, layers: tuple[int, int], *, first: bool,
                       last: bool, dest: Path, work_dir: Path | None = None,
                       expected_index_sha256: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                       timeout: float = DEFAULT_TIMEOUT, require_memory_fs: bool = True,
                       progress: Callable[[str], None] = log.progress) -> ShardResult:
    """A node's whole shard step: fetch its sealed shard, unseal into `dest`, verify; a downloaded
    copy of the ciphertext is removed afterwards (the plaintext in `dest` is what the engine loads)."""
    shard = fetch_sealed_shard(location, work_dir=work_dir, max_bytes=max_bytes, timeout=timeout,
                               expected_index_sha256=expected_index_sha256, progress=progress)
    downloaded = urllib.parse.urlsplit(location).scheme in ("http", "https")
    try:
        return open_sealed_shard(shard, key, manifest, layers, first=first, last=last, dest=dest,
                                 require_memory_fs=require_memory_fs, progress=progress)
    finally:
        if downloaded:
            shutil.rmtree(shard, ignore_errors=True)
