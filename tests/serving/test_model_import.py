"""`conclave model import smollm2`: the real GGUF conversion into a temporary cache (about 30 s)."""
from __future__ import annotations

import json

import pytest

from conclave.runtime import cli
from conclave.runtime.model import registry
from conclave.runtime.model.manifest import check_manifest, verify_layer_range


@pytest.mark.timeout(600)
def test_import_default_model_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONCLAVE_CACHE_DIR", str(tmp_path))
    assert cli.main(["model", "import", "smollm2", "--json"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folder, manifest = registry.lookup("smollm2")
    assert folder == tmp_path / "models" / "smollm2"
    check_manifest(manifest)
    assert manifest["dtype"] == "float32" and manifest["num_layers"] == 30
    assert manifest["tie_word_embeddings"] is True
    assert set(manifest["groups"]) == {"embeddings", "final_norm"} | {f"layer.{i}" for i in range(30)}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["source"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    # A middle stage verifies only its own layers (and the small files).
    result = verify_layer_range(folder, manifest, 10, 20, first=False, last=False)
    assert result.checked[:10] == [f"layer.{i}" for i in range(10, 20)] and "embeddings" not in result.checked
    # Idempotent: nothing is converted again.
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert cli.main(["model", "import", "smollm2", "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["unchanged"] is True and again["digest"] == first["digest"]
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    # Asking for another dtype without --force is refused rather than silently ignored.
    assert cli.main(["model", "import", "smollm2", "--dtype", "bfloat16", "--json"]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reason"] == "model_exists"
