"""One canonical JSON encoder (runtime/canonical.py) and one atomic write (runtime/atomic_write.py).

Every format that is signed or hashed keeps its bytes: each caller's setting is compared here with
the json.dumps call it replaced, over values that tell the settings apart (non-ASCII text, floats,
NaN, nesting), and pinned to literal bytes.
"""
from __future__ import annotations

import json
import math
import os
import stat

import pytest

from conclave.runtime import canonical
from conclave.runtime.atomic_write import write_atomic
from conclave.runtime.attestation import policy, sim
from conclave.runtime.model import manifest as model_manifest

SAMPLES = [
    {"b": 1, "a": [True, None, "x"], "c": {"z": "", "y": -3}},
    {"name": "caf\u00e9 \u2603", "emoji": "\U0001f600"},
    {"nested": [[{"k": "v"}]], "n": 10 ** 30},
    {"float": 1.5, "neg": -0.25},
]


def _legacy_signed(v):       # manifest/canonical.py before the move
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _legacy_sim(v):          # attestation/sim.py
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _legacy_digest(v):       # attestation/policy.py, model/manifest.py, model/stage_check.py
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@pytest.mark.parametrize("value", SAMPLES[:3])
def test_signed_default_is_the_old_manifest_encoding(value):
    assert canonical.canonical_json(value) == _legacy_signed(value)


@pytest.mark.parametrize("value", SAMPLES)
def test_each_older_format_keeps_its_bytes(value):
    assert sim.canonical_json(value) == _legacy_sim(value)
    assert policy._canonical(value) == _legacy_digest(value)
    assert model_manifest.canonical_json(value) == _legacy_digest(value)


def test_literal_bytes_per_setting():
    value = {"b": "\u00e9", "a": 1}
    assert canonical.canonical_json(value) == b'{"a":1,"b":"\xc3\xa9"}'
    assert sim.canonical_json(value) == b'{"a":1,"b":"\\u00e9"}'
    assert model_manifest.canonical_json(value) == b'{"a":1,"b":"\\u00e9"}'
    assert model_manifest.canonical_json({"x": math.nan}) == b'{"x":NaN}'
    with pytest.raises(ValueError):
        sim.canonical_json({"x": math.nan})


def test_strict_refuses_what_a_signature_cannot_pin():
    for bad in ({"x": 1.0}, {1: "int key"}, {"x": math.inf}):
        with pytest.raises(canonical.CanonicalError):
            canonical.canonical_json(bad)
    deep: list = []
    for _ in range(canonical.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(canonical.CanonicalError):
        canonical.canonical_json(deep)


def test_stage_shard_digest_unchanged():
    import hashlib
    from conclave.runtime.model import stage_check
    mm = {"digest": "d" * 64, "num_layers": 2, "groups": {"layer.0": {"digest": "a" * 64},
          "other": {"digest": "\u00e9"}}, "files": {"config.json": "c" * 64, "w.safetensors": "e" * 64}}
    doc = {"context": stage_check.SHARD_DIGEST_CONTEXT, "model_digest": mm["digest"], "layers": [0, 1],
           "groups": {"layer.0": "a" * 64, "other": "\u00e9"}, "files": {"config.json": "c" * 64}}
    want = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert stage_check.shard_digest(mm, 0, 1, first=False, last=False) == want


def test_write_atomic_mode_content_and_no_leftovers(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, b"one")
    assert target.read_bytes() == b"one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_atomic(target, b"two", mode=0o644, prefix=".x-")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_write_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep"
    target.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("replace failed")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["keep"]
