"""Canonical JSON: the one byte encoding of everything signed or hashed (base layer).

Why: a signature covers bytes, not objects. Sorted keys, no whitespace, UTF-8, integers only
(no floats: their text form is not unique), and a strict reader that refuses duplicate keys,
so two parties always agree on what was signed and a duplicate key cannot smuggle a second value.

The default (`canonical_json(value)`) is the signed-document encoding (manifest, enrolment, run
report, receipt, sealed-shard index). Formats that were fixed before it keep their exact bytes
through the keyword arguments, each named at its format:
- simulated attestation evidence (attestation/sim.py): `strict=False, ensure_ascii=True`
- policy digest (attestation/policy/load.py), model manifest digest (model/manifest.py) and the
  stage shard digest (model/stage_check.py): `strict=False, ensure_ascii=True, allow_nan=True`
tests/test_canonical.py pins each setting's bytes.
"""
from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32


class CanonicalError(ValueError):
    """The value cannot be encoded canonically, or the text is not strict JSON."""


def _check(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise CanonicalError("nesting too deep")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        raise CanonicalError("floats are not allowed in signed documents")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError("object keys must be strings")
            _check(item, depth + 1)
        return
    raise CanonicalError(f"type {type(value).__name__} is not allowed in signed documents")


def canonical_json(value: Any, *, strict: bool = True, ensure_ascii: bool = False,
                   allow_nan: bool = False) -> bytes:
    """Sorted keys, no whitespace, UTF-8.

    strict (the signed-document rule): no floats, string keys only, nesting at most MAX_DEPTH.
    ensure_ascii: escape non-ASCII characters as \\uXXXX (older formats); allow_nan: let json
    write NaN/Infinity for floats instead of raising (older formats that never checked).
    """
    if strict:
        _check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=ensure_ascii,
                      allow_nan=allow_nan).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise CanonicalError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_float(text: str) -> Any:
    raise CanonicalError("floats are not allowed in signed documents")


def _no_constant(text: str) -> Any:
    raise CanonicalError(f"{text} is not JSON")


def strict_loads(data: bytes | str) -> Any:
    """Parse JSON refusing duplicate keys, floats, NaN/Infinity and non-UTF-8 bytes."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_no_float,
                          parse_constant=_no_constant)
    except CanonicalError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CanonicalError(f"not valid JSON: {type(exc).__name__}") from None
