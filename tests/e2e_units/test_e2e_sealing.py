"""Model sealing: roundtrip, and every tamper rejected with its reason."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conclave.runtime.cli import _Parser
from conclave.runtime.cli.model_seal import add_seal_parser
from conclave.runtime.errors import ConclaveError
from conclave.runtime.sealing import (INDEX_NAME, SealError, SealingKey, open_index, read_key_file,
                                      seal_directory, unseal_file, unseal_into, unseal_to_memory,
                                      unsealed_directory, verify_sealed, write_key_file)
from conclave.runtime.sealing import stream

CHUNK = 64  # small chunks so a few hundred bytes span many chunks


@pytest.fixture
def model(tmp_path) -> Path:
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_bytes(b'{"num_hidden_layers": 30}')
    (d / "model.safetensors").write_bytes(os.urandom(CHUNK * 7 + 13))
    (d / "exact.bin").write_bytes(os.urandom(CHUNK * 3))   # exact multiple: empty final chunk
    (d / "sub" / "empty.txt").write_bytes(b"")
    return d


@pytest.fixture
def sealed(tmp_path, model):
    key = SealingKey.generate()
    out = tmp_path / "sealed"
    index = seal_directory(model, out, key, chunk_size=CHUNK)
    return out, key, index


def _blob(sealed_dir: Path, key: SealingKey, rel: str) -> Path:
    entry = next(e for e in open_index(sealed_dir, key).files if e.path == rel)
    return sealed_dir / entry.blob


def _expect(reason: str, fn, *args):
    with pytest.raises(SealError) as exc:
        fn(*args)
    assert exc.value.reason == reason, exc.value
    return exc.value


def _all_files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def test_roundtrip_memory_and_tmpfs(sealed, model):
    sealed_dir, key, index = sealed
    original = _all_files(model)
    assert {e.path for e in index.files} == set(original)
    assert unseal_to_memory(sealed_dir, key) == original
    assert unseal_file(sealed_dir, key, "config.json") == original["config.json"]
    for blob in (sealed_dir / "blobs").iterdir():  # no plaintext on the sealed side
        assert original["model.safetensors"][:32] not in blob.read_bytes()
    with unsealed_directory(sealed_dir, key) as plain:
        assert str(plain).startswith("/dev/shm/conclave-")
        assert stat.S_IMODE(plain.stat().st_mode) == 0o700
        assert stat.S_IMODE((plain / "config.json").stat().st_mode) == 0o600
        assert _all_files(plain) == original
    assert not plain.exists()


def test_tmpfs_folder_removed_when_caller_fails(sealed):
    sealed_dir, key, _ = sealed
    with pytest.raises(RuntimeError):
        with unsealed_directory(sealed_dir, key) as plain:
            raise RuntimeError("boom")
    assert not plain.exists()


def test_refuses_plaintext_on_disk(sealed, tmp_path):
    sealed_dir, key, _ = sealed
    disk = tmp_path / "disk"
    disk.mkdir()
    if open("/proc/self/mounts").read().find(" /tmp tmpfs ") >= 0:
        pytest.fail("test assumes tmp_path is not on tmpfs")
    _expect("seal_not_tmpfs", lambda: unsealed_directory(sealed_dir, key, base=disk).__enter__())
    assert list(disk.iterdir()) == []


def test_wrong_key(sealed):
    sealed_dir, _, _ = sealed
    _expect("seal_wrong_key", unseal_to_memory, sealed_dir, SealingKey.generate())


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_bit_flip_in_ciphertext(sealed):
    sealed_dir, key, _ = sealed
    blob = _blob(sealed_dir, key, "model.safetensors")
    _flip(blob, stream.HEADER_LEN + 2 * (CHUNK + 16) + 5)
    _expect("seal_auth_failed", unseal_to_memory, sealed_dir, key)


def test_bit_flip_in_tag(sealed):
    sealed_dir, key, _ = sealed
    blob = _blob(sealed_dir, key, "model.safetensors")
    _flip(blob, stream.HEADER_LEN + CHUNK + 3)  # inside chunk 0's tag
    _expect("seal_auth_failed", verify_sealed, sealed_dir, key)


def test_truncation_at_chunk_boundary(sealed):
    sealed_dir, key, _ = sealed
    for rel in ("model.safetensors", "exact.bin"):
        blob = _blob(sealed_dir, key, rel)
        data = blob.read_bytes()
        blob.write_bytes(data[:stream.HEADER_LEN + 3 * (CHUNK + 16)])  # final chunk dropped
        _expect("seal_truncated", unseal_file, sealed_dir, key, rel)
        blob.write_bytes(data)


def test_truncation_inside_a_chunk(sealed):
    sealed_dir, key, _ = sealed
    blob = _blob(sealed_dir, key, "model.safetensors")
    blob.write_bytes(blob.read_bytes()[:stream.HEADER_LEN + 2 * (CHUNK + 16) + 40])
    _expect("seal_auth_failed", unseal_file, sealed_dir, key, "model.safetensors")


def test_truncated_to_header_only(sealed):
    sealed_dir, key, _ = sealed
    blob = _blob(sealed_dir, key, "model.safetensors")
    blob.write_bytes(blob.read_bytes()[:stream.HEADER_LEN])
    _expect("seal_truncated", unseal_file, sealed_dir, key, "model.safetensors")


def test_chunk_reorder(sealed):
    sealed_dir, key, _ = sealed
    blob = _blob(sealed_dir, key, "model.safetensors")
    data = blob.read_bytes()
    h, n = stream.HEADER_LEN, CHUNK + 16
    c0, c1 = data[h:h + n], data[h + n:h + 2 * n]
    blob.write_bytes(data[:h] + c1 + c0 + data[h + 2 * n:])
    _expect("seal_auth_failed", unseal_file, sealed_dir, key, "model.safetensors")


def test_chunk_swap_across_files(sealed):
    sealed_dir, key, _ = sealed
    a, b = _blob(sealed_dir, key, "model.safetensors"), _blob(sealed_dir, key, "exact.bin")
    h, n = stream.HEADER_LEN, CHUNK + 16
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(da[:h + n] + db[h + n:h + 2 * n] + da[h + 2 * n:])  # chunk 1 from the other file
    _expect("seal_auth_failed", unseal_file, sealed_dir, key, "model.safetensors")


def test_header_edit_chunk_size(sealed):
    sealed_dir, key, _ = sealed
    blob = _blob(sealed_dir, key, "model.safetensors")
    data = bytearray(blob.read_bytes())
    data[12:16] = (CHUNK * 2).to_bytes(4, "big")
    blob.write_bytes(bytes(data))
    _expect("seal_auth_failed", unseal_file, sealed_dir, key, "model.safetensors")


def test_header_edit_file_id_and_whole_blob_swap(sealed):
    sealed_dir, key, _ = sealed
    a, b = _blob(sealed_dir, key, "model.safetensors"), _blob(sealed_dir, key, "exact.bin")
    da, db = a.read_bytes(), b.read_bytes()
    _flip(a, 20)  # inside the file id
    _expect("seal_file_mismatch", unseal_file, sealed_dir, key, "model.safetensors")
    a.write_bytes(db)  # another file's intact blob under this name
    _expect("seal_file_mismatch", unseal_file, sealed_dir, key, "model.safetensors")
    a.write_bytes(da)
    assert unseal_file(sealed_dir, key, "model.safetensors")


def test_header_edit_magic_and_reserved(sealed):
    sealed_dir, key, _ = sealed
    blob = _blob(sealed_dir, key, "config.json")
    data = blob.read_bytes()
    _flip(blob, 0)
    _expect("malformed", unseal_file, sealed_dir, key, "config.json")
    blob.write_bytes(data)
    _flip(blob, 11)  # reserved field
    _expect("malformed", unseal_file, sealed_dir, key, "config.json")


def test_header_edit_without_index_is_auth_failure(sealed):
    """Even a reader that does not check the file id notices a header edit (header is in the AAD)."""
    sealed_dir, key, _ = sealed
    blob = _blob(sealed_dir, key, "model.safetensors")
    import io
    data = bytearray(blob.read_bytes())
    data[20] ^= 1
    with pytest.raises(SealError) as exc:
        stream.unseal_stream(key, io.BytesIO(bytes(data)), lambda _c: None)
    assert exc.value.reason == "seal_auth_failed"


def test_trailing_data(sealed):
    sealed_dir, key, _ = sealed
    blob = _blob(sealed_dir, key, "exact.bin")
    blob.write_bytes(blob.read_bytes() + os.urandom(CHUNK + 16 + 16))
    with pytest.raises(SealError) as exc:
        unseal_file(sealed_dir, key, "exact.bin")
    assert exc.value.reason in ("seal_auth_failed", "seal_trailing_data")


def test_index_edits(sealed):
    sealed_dir, key, _ = sealed
    path = sealed_dir / INDEX_NAME
    original = path.read_text()
    doc = json.loads(original)
    doc["files"][0]["path"] = "renamed.json"
    path.write_text(json.dumps(doc))
    _expect("seal_index_invalid", unseal_to_memory, sealed_dir, key)
    doc = json.loads(original)
    doc["files"].pop()
    path.write_text(json.dumps(doc))
    _expect("seal_index_invalid", unseal_to_memory, sealed_dir, key)
    doc = json.loads(original)
    doc["files"][0]["path"] = "../escape"
    path.write_text(json.dumps(doc))
    _expect("malformed", unseal_to_memory, sealed_dir, key)
    path.write_text(original)
    assert unseal_to_memory(sealed_dir, key)


def test_missing_blob(sealed):
    sealed_dir, key, _ = sealed
    _blob(sealed_dir, key, "config.json").unlink()
    _expect("seal_file_missing", unseal_to_memory, sealed_dir, key)


def test_failed_unseal_leaves_no_plaintext(sealed, tmp_path):
    sealed_dir, key, _ = sealed
    _flip(_blob(sealed_dir, key, "model.safetensors"), stream.HEADER_LEN + 5 * (CHUNK + 16) + 1)
    dest = tmp_path / "dest"
    dest.mkdir()
    _expect("seal_auth_failed", unseal_into, sealed_dir, key, dest)
    assert list(dest.iterdir()) == []


def test_key_file_rules(tmp_path):
    path = tmp_path / "k"
    key = SealingKey.generate()
    write_key_file(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path).key_id == key.key_id
    assert key.to_bytes().hex() not in repr(key)
    with pytest.raises(ConclaveError) as exc:
        write_key_file(path, key)
    assert exc.value.reason == "key_exists"
    os.chmod(path, 0o640)
    with pytest.raises(ConclaveError) as exc:
        read_key_file(path)
    assert exc.value.reason == "key_permissions"


def _cli(argv: list[str]) -> int:
    parser = _Parser(prog="conclave")
    sub = parser.add_subparsers(dest="command", required=True)
    model = sub.add_parser("model").add_subparsers(dest="model_command", required=True)
    add_seal_parser(model)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConclaveError as exc:
        return int(exc.exit_code)


def test_cli_seal_and_unseal(model, tmp_path, capsys):
    key_file, sealed_dir, out = tmp_path / "model.key", tmp_path / "sealed", tmp_path / "out"
    assert _cli(["model", "seal", str(model), "-o", str(sealed_dir), "--key-file", str(key_file),
                 "--json"]) == 0
    captured = capsys.readouterr()
    key = read_key_file(key_file)
    assert key.to_bytes().hex() not in captured.out + captured.err
    summary = json.loads(captured.out)
    assert summary["files"] == 4 and summary["key_created"] is True
    assert _cli(["model", "unseal", str(sealed_dir), "--key-file", str(key_file), "--verify-only"]) == 0
    assert _cli(["model", "unseal", str(sealed_dir), "--key-file", str(key_file), "-o", str(out)]) == 0
    assert _all_files(out) == _all_files(model)
    other = tmp_path / "other.key"
    write_key_file(other, SealingKey.generate())
    assert _cli(["model", "unseal", str(sealed_dir), "--key-file", str(other), "--verify-only"]) == 2


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=700), chunk=st.integers(min_value=16, max_value=200),
       cut=st.integers(min_value=0, max_value=10_000))
def test_stream_roundtrip_and_any_truncation_detected(data, chunk, cut):
    import io
    key = SealingKey(b"\x01" * 32)
    out = io.BytesIO()
    stream.seal_stream(key, io.BytesIO(data), out, file_id=b"\x02" * 16, chunk_size=chunk)
    sealed_bytes = out.getvalue()
    got = bytearray()
    stream.unseal_stream(key, io.BytesIO(sealed_bytes), got.extend)
    assert bytes(got) == data
    cut %= len(sealed_bytes)  # every strict prefix is refused
    with pytest.raises(SealError) as exc:
        stream.unseal_stream(key, io.BytesIO(sealed_bytes[:cut]), lambda _c: None)
    assert exc.value.reason in ("seal_truncated", "seal_auth_failed", "malformed")
    if cut >= stream.HEADER_LEN and (cut - stream.HEADER_LEN) % (chunk + 16) == 0:
        assert exc.value.reason == "seal_truncated"
