"""Authenticated chunked encryption of one file (AES-256-GCM), the unit of model sealing.

Why chunks: model files are hundreds of MB to hundreds of GB; each chunk authenticates on its
own so a reader never holds more than one chunk, and the layout makes every edit detectable:

    header  = magic "CNCLSEAL" | version u8 (1) | cipher u8 (1 = AES-256-GCM) | reserved u16 (0)
              | chunk_size u32 | file_id 16 bytes (random per file)                  (32 bytes)
    chunk_i = AES-256-GCM(file_key, nonce_i, plaintext_i, aad_i)   (plaintext_i || 16-byte tag)
    file_key = HKDF-SHA256(master, salt=file_id, info="conclave/seal/v1/file")
    nonce_i  = file_id[0:4] || u64_be(i)
    aad_i    = header || u64_be(i) || u8(final)

Every chunk but the last holds exactly chunk_size plaintext bytes; the last holds fewer (possibly
zero), so a file always ends with a chunk marked final. Consequences: a bit flip or header edit
fails authentication (the header is in every chunk's AAD); reordering fails (index in nonce and
AAD); a chunk from another file fails (another file key); cutting the file at a chunk boundary
leaves no final chunk (truncated); appended bytes after the final chunk are refused.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conclave.runtime.sealing.errors import SealError, SealReason
from conclave.runtime.sealing.key import SealingKey

MAGIC = b"CNCLSEAL"
VERSION = 1
CIPHER_AES256GCM = 1
HEADER = struct.Struct(">8sBBHI16s")
HEADER_LEN = HEADER.size  # 32
TAG_LEN = 16
FILE_ID_LEN = 16
DEFAULT_CHUNK_SIZE = 1024 * 1024
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Header:
    chunk_size: int
    file_id: bytes

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, CIPHER_AES256GCM, 0, self.chunk_size, self.file_id)


def decode_header(data: bytes) -> Header:
    if len(data) != HEADER_LEN:
        raise SealError(SealReason.MALFORMED, "sealed file shorter than its header")
    magic, version, cipher, reserved, chunk_size, file_id = HEADER.unpack(data)
    if magic != MAGIC:
        raise SealError(SealReason.MALFORMED, "not a Conclave sealed file (magic)")
    if version != VERSION or cipher != CIPHER_AES256GCM:
        raise SealError(SealReason.UNSUPPORTED, f"sealed format version {version}/cipher {cipher} unsupported")
    if reserved != 0:
        raise SealError(SealReason.MALFORMED, "reserved header bits set")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise SealError(SealReason.MALFORMED, f"chunk size {chunk_size} out of range")
    return Header(chunk_size, file_id)


def _nonce(file_id: bytes, index: int) -> bytes:
    return file_id[:4] + struct.pack(">Q", index)


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">QB", index, 1 if final else 0)


def _read_full(src: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left:
        block = src.read(left)
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def seal_stream(key: SealingKey, src: BinaryIO, dst: BinaryIO, *, file_id: bytes,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[int, int]:
    """Encrypt src into dst. Returns (plaintext bytes, sealed bytes)."""
    if len(file_id) != FILE_ID_LEN:
        raise ValueError("file_id must be 16 bytes")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError("chunk size out of range")
    header = Header(chunk_size, file_id).encode()
    aead = AESGCM(key.file_key(file_id))
    dst.write(header)
    plain = sealed = 0
    sealed += len(header)
    index = 0
    while True:
        block = _read_full(src, chunk_size)
        final = len(block) < chunk_size
        ct = aead.encrypt(_nonce(file_id, index), block, _aad(header, index, final))
        dst.write(ct)
        plain += len(block)
        sealed += len(ct)
        index += 1
        if final:
            return plain, sealed


def unseal_stream(key: SealingKey, src: BinaryIO, sink: Callable[[bytes], object], *,
                  expected_file_id: bytes | None = None) -> int:
    """Decrypt and authenticate src chunk by chunk, handing plaintext to sink. Returns its size.

    A chunk reaches `sink` only after it authenticated; a caller that must not keep a partial
    plaintext (a later chunk may still fail) discards what it received when this raises.
    """
    raw_header = _read_full(src, HEADER_LEN)
    header = decode_header(raw_header)
    if expected_file_id is not None and header.file_id != expected_file_id:
        raise SealError(SealReason.FILE_MISMATCH, "sealed file belongs to another index entry")
    aead = AESGCM(key.file_key(header.file_id))
    full = header.chunk_size + TAG_LEN
    index = total = 0
    while True:
        block = _read_full(src, full)
        final = len(block) < full
        if final and len(block) < TAG_LEN:
            raise SealError(SealReason.TRUNCATED, f"sealed file ends before its final chunk (chunk {index})")
        try:
            plain = aead.decrypt(_nonce(header.file_id, index), block, _aad(raw_header, index, final))
        except InvalidTag:
            raise SealError(SealReason.AUTH_FAILED, f"chunk {index} failed authentication") from None
        sink(plain)
        total += len(plain)
        index += 1
        if final:
            if src.read(1):
                raise SealError(SealReason.TRAILING_DATA, "data after the final chunk")
            return total
