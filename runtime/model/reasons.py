"""Stable reasons for model and model-shard refusals (tests, logs, `--json`, node state)."""
from __future__ import annotations

from enum import StrEnum


class ModelReason(StrEnum):
    SHARD_MISMATCH = "model_shard_mismatch"            # a stage's shard is not what the model manifest says
    SHARD_SOURCE_INVALID = "model_shard_source_invalid"  # not a path or an http(s) URL, or nothing there
    SHARD_FETCH_FAILED = "model_shard_fetch_failed"    # download failed (HTTP error, timeout, short body)
    SHARD_TOO_LARGE = "model_shard_too_large"          # the shard exceeds the download size cap
    SHARD_LAYOUT_INVALID = "model_shard_layout_invalid"  # stages.json malformed or inconsistent
    NOT_IMPORTED = "model_not_imported"                # sealing needs the folder's model manifest
    SHARD_DEST_NOT_EMPTY = "model_shard_dest_not_empty"  # a shard is unsealed only into a new/empty folder
    SHARD_OUTPUT_INVALID = "model_shard_output_invalid"  # seal output not empty, or inside the model folder
