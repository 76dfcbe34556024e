"""Model manifest hashing: per-layer digests, layer-range verification, tamper detection."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from conclave.runtime.errors import ConclaveError
from conclave.runtime.model import manifest as mf
from conclave.runtime.model.safetensors_index import read_index

LAYERS = 4


def _write_model(folder: Path) -> None:
    rng = np.random.default_rng(7)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((32, 8), dtype=np.float32),
               "model.norm.weight": np.ones(8, dtype=np.float32)}
    for i in range(LAYERS):
        tensors[f"model.layers.{i}.self_attn.q_proj.weight"] = rng.standard_normal((8, 8), dtype=np.float32)
        tensors[f"model.layers.{i}.input_layernorm.weight"] = rng.standard_normal(8, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": LAYERS,
                                                    "torch_dtype": "float32", "tie_word_embeddings": True}))


@pytest.fixture()
def model(tmp_path) -> tuple[Path, dict]:
    folder = tmp_path / "m"
    _write_model(folder)
    return folder, mf.build_manifest(folder, name="tiny")


def _flip_byte_in(folder: Path, tensor: str) -> None:
    entry = next(e for e in read_index(folder / "model.safetensors") if e.name == tensor)
    with open(folder / "model.safetensors", "r+b") as fh:
        fh.seek(entry.start + 5)
        byte = fh.read(1)
        fh.seek(entry.start + 5)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_groups_cover_layers_embeddings_and_norm(model):
    _, manifest = model
    assert manifest["num_layers"] == LAYERS
    assert set(manifest["groups"]) == {"embeddings", "final_norm"} | {f"layer.{i}" for i in range(LAYERS)}
    assert manifest["groups"]["layer.2"]["tensors"] == ["model.layers.2.input_layernorm.weight",
                                                       "model.layers.2.self_attn.q_proj.weight"]
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    assert manifest["digest"] == mf.overall_digest(manifest)


def test_group_of_names():
    assert mf.group_of("model.layers.17.mlp.up_proj.weight") == "layer.17"
    assert mf.group_of("model.embed_tokens.weight") == "embeddings"
    assert mf.group_of("model.norm.weight") == "final_norm"
    assert mf.group_of("lm_head.weight") == "lm_head"


def test_manifest_is_deterministic(model, tmp_path):
    folder, manifest = model
    assert mf.build_manifest(folder, name="tiny")["digest"] == manifest["digest"]
    assert mf.build_manifest(folder, name="other")["digest"] != manifest["digest"]


def test_clean_folder_verifies_every_range(model):
    folder, manifest = model
    assert mf.verify_layer_range(folder, manifest, 0, LAYERS, first=True, last=True).ok
    assert mf.verify_layer_range(folder, manifest, 1, 3, first=False, last=False).ok


def test_flipped_byte_is_detected_in_that_layer_only(model):
    folder, manifest = model
    _flip_byte_in(folder, "model.layers.2.self_attn.q_proj.weight")
    every = ["embeddings", "final_norm"] + [f"layer.{i}" for i in range(LAYERS)]
    result = mf.verify_groups(folder, manifest, every)
    assert result.mismatched == ["layer.2"]
    # Stages that do not hold layer 2 still verify.
    assert mf.verify_layer_range(folder, manifest, 0, 2, first=True, last=False).ok
    assert mf.verify_layer_range(folder, manifest, 3, 4, first=False, last=True).ok
    with pytest.raises(ConclaveError) as info:
        mf.verify_layer_range(folder, manifest, 2, 4, first=False, last=True)
    assert info.value.reason == "model_shard_mismatch"
    assert info.value.exit_code == 2


def test_flipped_embedding_byte_fails_first_and_tied_last_stage(model):
    folder, manifest = model
    _flip_byte_in(folder, "model.embed_tokens.weight")
    assert mf.verify_layer_range(folder, manifest, 1, 3, first=False, last=False).ok
    for first, last, start, end in ((True, False, 0, 1), (False, True, 3, 4)):
        with pytest.raises(ConclaveError) as info:
            mf.verify_layer_range(folder, manifest, start, end, first=first, last=last)
        assert info.value.reason == "model_shard_mismatch"


def test_changed_config_fails_every_stage(model):
    folder, manifest = model
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    with pytest.raises(ConclaveError) as info:
        mf.verify_layer_range(folder, manifest, 1, 2, first=False, last=False)
    assert info.value.reason == "model_shard_mismatch"


def test_tampered_manifest_is_refused(model):
    folder, manifest = model
    manifest["groups"]["layer.1"]["digest"] = "00" * 32
    with pytest.raises(ConclaveError) as info:
        mf.verify_layer_range(folder, manifest, 0, 1, first=True, last=False)
    assert info.value.reason == "manifest_digest_mismatch"


def test_layer_range_outside_model_is_refused(model):
    folder, manifest = model
    with pytest.raises(ConclaveError) as info:
        mf.verify_layer_range(folder, manifest, 2, LAYERS + 1, first=False, last=True)
    assert info.value.reason == "bad_layer_range"


def test_truncated_header_is_malformed(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ConclaveError) as info:
        read_index(tmp_path / "model.safetensors")
    assert info.value.reason == "model_malformed"
