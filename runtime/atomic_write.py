"""One atomic file write (base layer): readers see the old file or the new one, never a part.

The data goes to a temp file in the target's own folder (so os.replace stays on one file system),
the temp file gets its mode before any byte is written, and os.replace puts it in place. On any
failure the temp file is removed and the target is left as it was. The caller creates the folder
(each caller has its own folder mode).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int = 0o600, prefix: str | None = None) -> Path:
    """Write `data` to `path` atomically with file mode `mode`; returns the path.

    prefix: the temp file's name prefix (default: ".<name>."), dot-prefixed so a listing hides it.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix if prefix is not None else f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
