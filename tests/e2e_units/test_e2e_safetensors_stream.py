"""The stage safetensors stream (byte-exact selection of tensors) and the hardened header reader."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from safetensors.numpy import load, save_file

from conclave.runtime.errors import ConclaveError
from conclave.runtime.model.safetensors_index import read_index
from conclave.runtime.model.safetensors_writer import SafetensorsStream


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("st")
    rng = np.random.default_rng(3)
    tensors = {"b.weight": rng.standard_normal((3, 5)).astype(np.float32),
               "a.bias": np.arange(7, dtype=np.int64),
               "c.half": rng.standard_normal((2, 2)).astype(np.float16)}
    save_file(tensors, str(folder / "src.safetensors"))
    return folder, tensors


@settings(max_examples=40, deadline=None)
@given(block=st.integers(min_value=1, max_value=97), pick=st.sets(st.sampled_from(["a.bias", "b.weight", "c.half"]),
                                                                   min_size=1))
def test_stream_is_a_valid_file_of_exactly_the_selection(source, block, pick):
    folder, tensors = source
    entries = [e for e in read_index(folder / "src.safetensors") if e.name in pick]
    stream = SafetensorsStream(folder, entries)
    parts = []
    while chunk := stream.read(block):                      # any read size gives the same bytes
        parts.append(chunk)
    stream.close()
    data = b"".join(parts)
    assert len(data) == stream.size and struct.unpack("<Q", data[:8])[0] % 8 == 0
    loaded = load(data)
    assert set(loaded) == pick
    for name in pick:
        assert loaded[name].dtype == tensors[name].dtype and np.array_equal(loaded[name], tensors[name])


def test_duplicate_names_refused(source):
    folder, _ = source
    entries = read_index(folder / "src.safetensors")
    with pytest.raises(ValueError):
        SafetensorsStream(folder, entries + entries[:1])


@pytest.mark.parametrize("meta", [{"dtype": "F32", "shape": [1]},                       # no offsets
                                  {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]},  # end before start
                                  {"dtype": 5, "shape": [1], "data_offsets": [0, 4]},
                                  {"dtype": "F32", "shape": ["x"], "data_offsets": [0, 4]}])
def test_malformed_header_entries_are_model_malformed(tmp_path, meta):
    header = json.dumps({"t": meta}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(ConclaveError) as exc:
        read_index(path)
    assert exc.value.reason == "model_malformed"
