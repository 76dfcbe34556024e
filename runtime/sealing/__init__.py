"""Model sealing: AES-256-GCM chunked encryption of a model folder with an authenticated index."""
from conclave.runtime.sealing.errors import SealError, SealReason
from conclave.runtime.sealing.folder import (INDEX_NAME, SealedEntry, SealedIndex, open_index,
                                             read_index, seal_directory, seal_sources, unseal_file, unseal_into,
                                             unseal_to_memory, unsealed_directory, verify_sealed)
from conclave.runtime.sealing.key import SealingKey, read_key_file, write_key_file

__all__ = ["SealError", "SealReason", "INDEX_NAME", "SealedEntry", "SealedIndex", "open_index",
           "read_index", "seal_directory", "seal_sources", "unseal_file", "unseal_into", "unseal_to_memory",
           "unsealed_directory", "verify_sealed", "SealingKey", "read_key_file", "write_key_file"]
