"""The local model owner's sealed-shard cache: sealed once per model digest and layer split, reused
only while complete and unchanged, never rewritten in place; what it holds still opens and verifies."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from conclave.runtime.local import sealed_cache
from conclave.runtime.model.manifest import build_manifest
from conclave.runtime.model.shard_source import obtain_stage_shard, stage_shard_location
from conclave.runtime.sealing import read_key_file
from conclave.runtime.sealing.shards import stage_key_path

RANGES = [(0, 2), (2, 4)]


def _tiny_model(folder: Path) -> dict:
    folder.mkdir()
    rng = np.random.default_rng(3)
    t = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    save_file({"model.embed_tokens.weight": t(16, 4), **{f"model.layers.{i}.mlp.w.weight": t(4, 4) for i in range(4)},
               "model.norm.weight": t(4), "lm_head.weight": t(16, 4)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4,
                                                    "tie_word_embeddings": False, "torch_dtype": "float32"}))
    return build_manifest(folder, name="tiny")


def _seal(tmp_path, manifest, ranges=RANGES, **kw):
    said = []
    out = sealed_cache.sealed_shards(tmp_path / "model", manifest, ranges, root=tmp_path / "cache",
                                     progress=said.append, **kw)
    return out, said


def test_sealed_once_then_reused_and_what_it_holds_opens_and_verifies(tmp_path):
    manifest = _tiny_model(tmp_path / "model")
    (sealed, keys, reused), _ = _seal(tmp_path, manifest)
    assert reused is False and (sealed / "stages.json").is_file()
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700 and stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert all(stat.S_IMODE(stage_key_path(keys, i).stat().st_mode) == 0o600 for i in range(2))
    (again, keys2, reused2), said = _seal(tmp_path, manifest)
    assert (again, keys2, reused2) == (sealed, keys, True) and "reusing" in said[0]
    for i, (start, end) in enumerate(RANGES):   # a node's path: unseal with the stage key, verify per layer
        result = obtain_stage_shard(stage_shard_location(str(sealed), i), read_key_file(stage_key_path(keys, i)),
                                    manifest, (start, end), first=i == 0, last=i == 1,
                                    dest=tmp_path / f"shard-{i}", work_dir=tmp_path / f"work-{i}",
                                    require_memory_fs=False, progress=lambda _m: None)
        assert result.to_json()["verified"] is True


def test_another_split_or_model_gets_its_own_sealing(tmp_path):
    manifest = _tiny_model(tmp_path / "model")
    (sealed, _k, _r), _ = _seal(tmp_path, manifest)
    (other, _k2, reused), _ = _seal(tmp_path, manifest, ranges=[(0, 1), (1, 4)])
    assert reused is False and other != sealed
    changed = dict(manifest, digest="cd" * 32)
    assert sealed_cache.cache_id(changed["digest"], RANGES) != sealed_cache.cache_id(manifest["digest"], RANGES)


def test_a_changed_shard_is_never_reused_and_the_old_entry_is_left_for_its_cluster(tmp_path):
    """The tampered-shard fault test edits a blob in place (and restores it): the copy is sealed
    afresh into a new entry, the old one stays (a running cluster may still read it)."""
    manifest = _tiny_model(tmp_path / "model")
    (sealed, _keys, _), _ = _seal(tmp_path, manifest)
    blob = max((sealed / "stage-1" / "blobs").glob("*.cse"), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    (fresh, _k, reused), _ = _seal(tmp_path, manifest)
    assert reused is False and fresh != sealed and sealed.is_dir()


def test_a_missing_or_readable_key_or_a_partial_seal_is_not_reused(tmp_path):
    manifest = _tiny_model(tmp_path / "model")
    (sealed, keys, _), _ = _seal(tmp_path, manifest)
    entry = sealed.parent
    stage_key_path(keys, 1).unlink()
    assert sealed_cache.reusable(entry, manifest["digest"], RANGES) is None
    (sealed2, keys2, reused), _ = _seal(tmp_path, manifest)
    assert reused is False
    os.chmod(keys2, 0o755)
    assert sealed_cache.reusable(sealed2.parent, manifest["digest"], RANGES) is None
    os.chmod(keys2, 0o700)
    assert sealed_cache.reusable(sealed2.parent, manifest["digest"], RANGES) is not None
    (sealed2.parent / sealed_cache.FINGERPRINT).unlink()   # as a seal interrupted before it finished
    assert sealed_cache.reusable(sealed2.parent, manifest["digest"], RANGES) is None
    assert not list((tmp_path / "cache").glob(".*.partial"))


def test_only_unusable_entries_created_long_ago_are_pruned(tmp_path):
    manifest = _tiny_model(tmp_path / "model")
    (sealed, keys, _), _ = _seal(tmp_path, manifest)
    stage_key_path(keys, 0).unlink()                       # unusable now
    (recent, keys_r, _), _ = _seal(tmp_path, manifest)
    assert sealed.parent.is_dir()                          # unusable but recent: kept
    stage_key_path(keys_r, 0).unlink()
    later = lambda: __import__("time").time() + sealed_cache.PRUNE_AFTER_S + 60  # noqa: E731
    (newest, _k, _), _ = _seal(tmp_path, manifest, clock=later)
    assert not sealed.parent.exists() and not recent.parent.exists() and newest.parent.is_dir()
