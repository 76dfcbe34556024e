"""Reasons a sealed model is refused (stable strings for tests, logs and --json)."""
from __future__ import annotations

from conclave.runtime.errors import ConclaveError
from conclave.runtime.reasons import exit_code_for


class SealReason:
    MALFORMED = "malformed"              # not a sealed file/folder, bad magic, bad index structure
    UNSUPPORTED = "unsupported"          # unknown format version or cipher
    WRONG_KEY = "seal_wrong_key"         # the key's id differs from the one the folder was sealed with
    AUTH_FAILED = "seal_auth_failed"     # a chunk did not authenticate: bit flip, reorder, swap, header edit
    TRUNCATED = "seal_truncated"         # the file ends before its final chunk
    TRAILING_DATA = "seal_trailing_data" # bytes after the final chunk
    INDEX_INVALID = "seal_index_invalid" # index MAC does not check (edited listing, renamed files)
    FILE_MISMATCH = "seal_file_mismatch" # a blob's header names another file than the index says
    FILE_MISSING = "seal_file_missing"   # a blob listed in the index is absent
    NOT_TMPFS = "seal_not_tmpfs"         # refusing to write plaintext weights outside memory


class SealError(ConclaveError):
    def __init__(self, reason: str, message: str):
        super().__init__(reason, message, exit_code=exit_code_for(reason))
