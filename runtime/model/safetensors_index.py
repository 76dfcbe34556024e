"""Read the header of a .safetensors file without torch: tensor names, dtypes, shapes, byte ranges.

The format is an 8-byte little-endian header length, a JSON header, then the raw tensor bytes.
Hashing straight from the byte ranges means a stage can check exactly its own tensors (no
framework, no dequantization, no copy of the whole file).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from conclave.runtime.errors import ConclaveError, ExitCode

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str          # file name inside the model folder
    start: int         # absolute byte offset in the file
    end: int           # absolute end offset (exclusive)


def read_index(path: Path) -> list[TensorEntry]:
    """Every tensor entry of one safetensors file; a malformed header is MALFORMED, not a crash."""
    with open(path, "rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise ConclaveError("model_malformed", f"{path.name}: too short for a safetensors header",
                                exit_code=ExitCode.MALFORMED)
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > _MAX_HEADER:
            raise ConclaveError("model_malformed", f"{path.name}: header length {header_len} is implausible",
                                exit_code=ExitCode.MALFORMED)
        try:
            header = json.loads(fh.read(header_len))
        except ValueError as exc:
            raise ConclaveError("model_malformed", f"{path.name}: header is not JSON ({exc})",
                                exit_code=ExitCode.MALFORMED) from None
    base = 8 + header_len
    if not isinstance(header, dict):
        raise ConclaveError("model_malformed", f"{path.name}: header is not a JSON object",
                            exit_code=ExitCode.MALFORMED)
    entries = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in meta["data_offsets"])
            shape = tuple(int(d) for d in meta["shape"])
            dtype = meta["dtype"]
        except (KeyError, TypeError, ValueError):
            raise ConclaveError("model_malformed", f"{path.name}: tensor {name!r} has a malformed entry",
                                exit_code=ExitCode.MALFORMED) from None
        if not isinstance(dtype, str) or not 0 <= start <= end:
            raise ConclaveError("model_malformed", f"{path.name}: tensor {name!r} has a malformed entry",
                                exit_code=ExitCode.MALFORMED)
        entries.append(TensorEntry(name, dtype, shape, path.name, base + start, base + end))
    return entries
