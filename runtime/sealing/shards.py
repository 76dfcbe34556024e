"""Seal a model into one shard per pipeline stage, each under its own key, with a public layout.

Output of seal_stages (OUT is the layout root):
    OUT/stages.json        canonical JSON, public: per stage its index, layers [start, end),
                           key id, shard digest (what the node verifies and signs; see
                           model.stage_check.shard_digest), the SHA-256 of its sealed index
                           (pins the ciphertext a node downloads), and the model digest
    OUT/stage-K/           a sealed folder (sealing.folder format) holding ONLY stage K's
                           tensors as model.safetensors (plus an index listing just those when
                           the source model had one) and the small files every stage needs
    KEY_DIR/stage-K.key    stage K's fresh 32-byte key, 0600, never printed

Why per stage: the model owner's broker releases stage K's key only to the node admitted as
stage K, so no node can read another stage's weights. Layer ranges are a parameter (the CLI
computes them the way vLLM splits layers), so this module stays below the serving layer.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.canonical import CanonicalError, canonical_json, strict_loads
from conclave.runtime.model.manifest import (SAFETENSORS_INDEX_SUFFIX, check_manifest, group_of, small_files,
                                             stage_groups, tensor_entries, verify_layer_range)
from conclave.runtime.model.reasons import ModelReason
from conclave.runtime.model.safetensors_writer import SafetensorsStream
from conclave.runtime.model.stage_check import shard_digest
from conclave.runtime.keys.broker import stage_key_name
from conclave.runtime.keys.secret import SecretValue
from conclave.runtime.sealing import stream
from conclave.runtime.sealing.folder import INDEX_NAME, seal_sources
from conclave.runtime.sealing.key import KeyFileError, SealingKey, read_key_file, write_key_file

LAYOUT_NAME = "stages.json"
LAYOUT_FORMAT = "conclave-stage-shards"
LAYOUT_VERSION = 1
STAGE_WEIGHTS = "model.safetensors"
STAGE_INDEX = "model.safetensors.index.json"
MAX_LAYOUT_LEN = 1024 * 1024


def stage_dir_name(index: int) -> str:
    return f"stage-{index}"


def stage_key_path(key_dir: Path, index: int) -> Path:
    return Path(key_dir) / f"stage-{index}.key"


@dataclass(frozen=True)
class StageShard:
    index: int
    layers: tuple[int, int]
    key_id: str
    digest: str                 # shard digest over the plaintext the stage verifies
    sealed_index_sha256: str    # SHA-256 of OUT/stage-K/conclave-sealed.json

    @property
    def path(self) -> str:
        return stage_dir_name(self.index)

    def to_json(self) -> dict:
        return {"index": self.index, "layers": list(self.layers), "key_id": self.key_id, "digest": self.digest,
                "sealed_index_sha256": self.sealed_index_sha256, "path": self.path}


@dataclass(frozen=True)
class ShardLayout:
    model_name: str
    model_digest: str
    num_layers: int
    stages: tuple[StageShard, ...]

    def to_json(self) -> dict:
        return {"format": LAYOUT_FORMAT, "version": LAYOUT_VERSION, "model": self.model_name,
                "model_digest": self.model_digest, "num_layers": self.num_layers,
                "stages": [s.to_json() for s in self.stages]}

    def stage(self, index: int) -> StageShard:
        if not 0 <= index < len(self.stages):
            raise _layout_error(f"no stage {index} in a {len(self.stages)}-stage layout")
        return self.stages[index]

    def is_first(self, index: int) -> bool:
        return index == 0

    def is_last(self, index: int) -> bool:
        return index == len(self.stages) - 1


def _layout_error(message: str) -> ConclaveError:
    return ConclaveError(ModelReason.SHARD_LAYOUT_INVALID, message, exit_code=ExitCode.MALFORMED)


def check_ranges(ranges: list[tuple[int, int]], num_layers: int) -> None:
    """Contiguous, non-empty ranges that cover 0..num_layers exactly."""
    expected = 0
    for start, end in ranges:
        if start != expected or end <= start:
            raise _layout_error(f"layer ranges must be contiguous and non-empty, got {ranges}")
        expected = end
    if not ranges or expected != num_layers:
        raise _layout_error(f"layer ranges {ranges} do not cover the model's {num_layers} layers")


def _stage_sources(model_dir: Path, manifest: dict, entries, start: int, end: int, *, first: bool, last: bool):
    """(relative path, opener) of everything stage [start, end) holds, tensors streamed from the source."""
    wanted = set(stage_groups(manifest, start, end, first=first, last=last))
    mine = [e for e in entries if group_of(e.name) in wanted]
    sources = [(STAGE_WEIGHTS, lambda: SafetensorsStream(model_dir, mine))]
    if any(f.endswith(SAFETENSORS_INDEX_SUFFIX) for f in manifest["files"]):
        weights = SafetensorsStream(model_dir, mine)
        index = {"metadata": {"total_size": weights.size - weights.header_size},
                 "weight_map": {e.name: STAGE_WEIGHTS for e in sorted(mine, key=lambda e: e.name)}}
        weights.close()
        data = json.dumps(index, indent=2, sort_keys=True).encode() + b"\n"
        sources.append((STAGE_INDEX, lambda: io.BytesIO(data)))
    for rel in small_files(manifest):
        sources.append((rel, lambda rel=rel: open(model_dir / rel, "rb")))
    return sources


def seal_stages(model_dir: Path, manifest: dict, out_dir: Path, key_dir: Path,
                ranges: list[tuple[int, int]], *, chunk_size: int = stream.DEFAULT_CHUNK_SIZE,
                progress: Callable[[str], None] | None = None) -> ShardLayout:
    """Seal one shard per stage of `ranges` under a fresh key each; write OUT/stages.json last.

    The source folder is verified against the manifest for every stage before that stage is
    sealed (a wrong source model fails here, not on every node later). On failure nothing of
    this run is left: neither shards nor key files.
    """
    model_dir, out_dir, key_dir = Path(model_dir), Path(out_dir), Path(key_dir)
    say = progress or (lambda _m: None)
    check_manifest(manifest)
    check_ranges(ranges, int(manifest["num_layers"]))
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConclaveError(ModelReason.SHARD_OUTPUT_INVALID, f"{out_dir} exists and is not empty",
                            exit_code=ExitCode.USAGE)
    if out_dir.resolve().is_relative_to(model_dir.resolve()):
        raise ConclaveError(ModelReason.SHARD_OUTPUT_INVALID, "the sealed folder cannot be inside the model folder",
                            exit_code=ExitCode.USAGE)
    key_paths = [stage_key_path(key_dir, i) for i in range(len(ranges))]
    for path in key_paths:
        if path.exists() or path.is_symlink():
            raise KeyFileError("key_exists", f"{path} already exists; not overwriting a key")
    entries = tensor_entries(model_dir)
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    shards = []
    try:
        for i, (start, end) in enumerate(ranges):
            first, last = i == 0, i == len(ranges) - 1
            say(f"stage {i}: verifying layers [{start}, {end}) of {model_dir} against the model manifest")
            verify_layer_range(model_dir, manifest, start, end, first=first, last=last)
            say(f"stage {i}: sealing layers [{start}, {end}) into {out_dir / stage_dir_name(i)}")
            key = SealingKey.generate()
            shard_dir = out_dir / stage_dir_name(i)
            seal_sources(_stage_sources(model_dir, manifest, entries, start, end, first=first, last=last),
                         shard_dir, key, chunk_size=chunk_size, progress=say)
            write_key_file(key_paths[i], key)
            written.append(key_paths[i])
            shards.append(StageShard(i, (start, end), key.key_id.hex(),
                                     shard_digest(manifest, start, end, first=first, last=last),
                                     hashlib.sha256((shard_dir / INDEX_NAME).read_bytes()).hexdigest()))
        layout = ShardLayout(str(manifest.get("name", "")), manifest["digest"], int(manifest["num_layers"]),
                             tuple(shards))
        (out_dir / LAYOUT_NAME).write_bytes(canonical_json(layout.to_json()) + b"\n")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for child in out_dir.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise
    say(f"sealed {len(shards)} stage shards into {out_dir}; keys in {key_dir}")
    return layout


def _hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def parse_layout(data: bytes) -> ShardLayout:
    """Strict parse of stages.json (public; a node still verifies everything it unseals)."""
    if len(data) > MAX_LAYOUT_LEN:
        raise _layout_error("stages.json too large")
    try:
        doc = strict_loads(data)
    except CanonicalError as exc:
        raise _layout_error(f"stages.json: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"format", "version", "model", "model_digest", "num_layers",
                                                 "stages"} or doc["format"] != LAYOUT_FORMAT:
        raise _layout_error("not a Conclave stage-shard layout")
    if doc["version"] != LAYOUT_VERSION or not _hex64(doc["model_digest"]) or not isinstance(doc["model"], str) \
            or not isinstance(doc["num_layers"], int) or not isinstance(doc["stages"], list):
        raise _layout_error("stage-shard layout fields have wrong types or version")
    stages = []
    for i, item in enumerate(doc["stages"]):
        if not isinstance(item, dict) or set(item) != {"index", "layers", "key_id", "digest",
                                                       "sealed_index_sha256", "path"}:
            raise _layout_error("stage entry has wrong fields")
        layers = item["layers"]
        if item["index"] != i or item["path"] != stage_dir_name(i) or not isinstance(layers, list) \
                or len(layers) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            raise _layout_error(f"stage entry {i} is inconsistent")
        if not (isinstance(item["key_id"], str) and len(item["key_id"]) == 32) or not _hex64(item["digest"]) \
                or not _hex64(item["sealed_index_sha256"]):
            raise _layout_error(f"stage entry {i} has a malformed key id or digest")
        stages.append(StageShard(i, (layers[0], layers[1]), item["key_id"], item["digest"],
                                 item["sealed_index_sha256"]))
    check_ranges([s.layers for s in stages], doc["num_layers"])
    return ShardLayout(doc["model"], doc["model_digest"], doc["num_layers"], tuple(stages))


def read_layout(out_dir: Path) -> ShardLayout:
    try:
        data = (Path(out_dir) / LAYOUT_NAME).read_bytes()
    except FileNotFoundError:
        raise _layout_error(f"{out_dir} has no {LAYOUT_NAME}") from None
    return parse_layout(data)


def stage_key_secrets(key_dir: Path, stage_names: list[str]) -> dict[str, SecretValue]:
    """The model owner's broker secrets: {"model_key/<stage name>": stage K's key}, K in manifest order."""
    return {stage_key_name(name): SecretValue(read_key_file(stage_key_path(key_dir, i)).to_bytes())
            for i, name in enumerate(stage_names)}


def key_from_secret(secret: SecretValue) -> SealingKey:
    """A stage key received from the broker (32 raw bytes) as a SealingKey."""
    return SealingKey.from_bytes(secret.reveal())


__all__ = ["LAYOUT_NAME", "StageShard", "ShardLayout", "seal_stages", "parse_layout", "read_layout",
           "stage_key_path", "stage_dir_name", "stage_key_secrets", "key_from_secret", "check_ranges"]
