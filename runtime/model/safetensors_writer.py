"""Build one .safetensors file from selected tensors of a model folder, as a stream, without torch.

Why a stream: a stage's shard is sealed straight from the source model's bytes, so the plaintext
of a stage never has to be written to disk first, and tensors are copied byte for byte (the
manifest's group digests, computed over the raw bytes, then match the shard exactly).

Layout written (the safetensors format): u64 little-endian header length, a JSON header
({name: {dtype, shape, data_offsets}}, "__metadata__": {"format": "pt"}) padded with spaces to a
multiple of 8 bytes, then the tensors' bytes back to back in name order.
"""
from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable
from pathlib import Path

from conclave.runtime.model.safetensors_index import TensorEntry


def _header(entries: list[TensorEntry]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        size = e.end - e.start
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class SafetensorsStream(io.RawIOBase):
    """A read-only stream of the safetensors file holding `entries` (read from `folder`)."""

    def __init__(self, folder: Path, entries: Iterable[TensorEntry]):
        super().__init__()
        self._folder = Path(folder)
        self._entries = sorted(entries, key=lambda e: e.name)
        if len({e.name for e in self._entries}) != len(self._entries):
            raise ValueError("duplicate tensor names")
        self._segments: list[tuple[str | None, int, int]] = []   # (file or None for header, start, end)
        self._head = _header(self._entries)
        self.header_size = len(self._head)
        self._segments.append((None, 0, len(self._head)))
        self._segments += [(e.file, e.start, e.end) for e in self._entries]
        self.size = sum(end - start for _f, start, end in self._segments)
        self._seg = 0
        self._pos = self._segments[0][1]
        self._handles: dict[str, object] = {}

    def readable(self) -> bool:
        return True

    def _source(self, name: str):
        fh = self._handles.get(name)
        if fh is None:
            fh = self._handles[name] = open(self._folder / name, "rb")
        return fh

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        while self._seg < len(self._segments):
            file, _start, end = self._segments[self._seg]
            if self._pos >= end:
                self._seg += 1
                if self._seg < len(self._segments):
                    self._pos = self._segments[self._seg][1]
                continue
            n = min(len(view), end - self._pos)
            if file is None:
                view[:n] = self._head[self._pos:self._pos + n]
            else:
                fh = self._source(file)
                fh.seek(self._pos)
                got = fh.readinto(view[:n])
                if not got:
                    raise OSError(f"{file}: ends inside a tensor")
                n = got
            self._pos += n
            return n
        return 0

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()  # type: ignore[attr-defined]
        self._handles.clear()
        super().close()
