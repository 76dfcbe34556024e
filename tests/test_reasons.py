"""The reason vocabularies: a value defined in two vocabularies must be declared shared (one
meaning, runtime/reasons.py SHARED_REASONS), and every refused document takes its exit code from
the one table (runtime/reasons.py EXIT_CODE_BY_REASON)."""
from __future__ import annotations

import collections
import importlib

import pytest

from conclave.runtime import reasons
from conclave.runtime.errors import ExitCode

VOCABULARIES = {
    "attestation": ("conclave.runtime.reasons", "Reason"),
    "overlay": ("conclave.runtime.reasons", "OverlayReason"),
    "device": ("conclave.runtime.reasons", "DeviceReason"),
    "lifecycle": ("conclave.runtime.reasons", "LifecycleReason"),
    "manifest": ("conclave.runtime.reasons", "ManifestReason"),
    "model": ("conclave.runtime.reasons", "ModelReason"),
    "report": ("conclave.runtime.reasons", "ReportReason"),
    "sealing": ("conclave.runtime.reasons", "SealReason"),
    "broker": ("conclave.runtime.reasons", "BrokerReason"),
    "endpoint": ("conclave.runtime.reasons", "EndpointReason"),
    "usage": ("conclave.runtime.reasons", "UsageReason"),
    "host": ("conclave.runtime.reasons", "HostReason"),
    "model_store": ("conclave.runtime.reasons", "ModelStoreReason"),
    "cluster": ("conclave.runtime.reasons", "ClusterReason"),
}


def _members(cls) -> list[tuple[str, str]]:
    if hasattr(cls, "__members__"):                      # enums (aliases included)
        return [(name, str(value)) for name, value in cls.__members__.items()]
    return [(name, value) for name, value in vars(cls).items() if name.isupper() and isinstance(value, str)]


def _defined() -> dict[str, list[str]]:
    by_value: dict[str, list[str]] = collections.defaultdict(list)
    for domain, (module, name) in VOCABULARIES.items():
        for member, value in _members(getattr(importlib.import_module(module), name)):
            by_value[value].append(f"{domain}.{member}")
    return by_value


def test_every_vocabulary_has_members():
    for domain, (module, name) in VOCABULARIES.items():
        assert _members(getattr(importlib.import_module(module), name)), domain


def test_a_value_in_two_vocabularies_is_declared_shared():
    twice = {value: where for value, where in _defined().items()
             if len({w.split(".")[0] for w in where}) > 1 and value not in reasons.SHARED_REASONS}
    assert not twice, ("reason values defined in more than one vocabulary without one declared meaning "
                       f"(runtime/reasons.py SHARED_REASONS): {twice}")


def test_shared_declarations_are_live():
    defined = _defined()
    stale = [v for v in reasons.SHARED_REASONS if len({w.split(".")[0] for w in defined.get(v, [])}) < 2]
    assert not stale, f"SHARED_REASONS entries no longer defined in two vocabularies: {stale}"


def test_no_vocabulary_gives_one_value_two_names():
    for domain, (module, name) in VOCABULARIES.items():
        cls = getattr(importlib.import_module(module), name)
        values = [v for _, v in _members(cls)]
        dup = [v for v, n in collections.Counter(values).items() if n > 1]
        assert not dup, f"{domain}: {dup} named twice"


def test_exit_table_names_only_defined_reasons():
    defined = _defined()
    assert set(reasons.EXIT_CODE_BY_REASON) <= set(defined), set(reasons.EXIT_CODE_BY_REASON) - set(defined)


@pytest.mark.parametrize("make, reason, code", [
    ("conclave.runtime.manifest.document:ManifestError", "malformed", ExitCode.MALFORMED),
    ("conclave.runtime.manifest.document:ManifestError", "owner_not_pinned", ExitCode.USAGE),
    ("conclave.runtime.manifest.document:ManifestError", "signature_invalid", ExitCode.VERIFICATION_FAILED),
    ("conclave.runtime.report.document:ReportError", "malformed", ExitCode.MALFORMED),
    ("conclave.runtime.report.document:ReportError", "report_key_mismatch", ExitCode.VERIFICATION_FAILED),
    ("conclave.runtime.endpoint.receipt:ReceiptError", "malformed", ExitCode.MALFORMED),
    ("conclave.runtime.endpoint.receipt:ReceiptError", "receipt_foreign_cluster", ExitCode.VERIFICATION_FAILED),
    ("conclave.runtime.sealing.errors:SealError", "unsupported", ExitCode.MALFORMED),
    ("conclave.runtime.sealing.errors:SealError", "seal_not_tmpfs", ExitCode.RUNTIME),
    ("conclave.runtime.sealing.errors:SealError", "seal_auth_failed", ExitCode.VERIFICATION_FAILED),
])
def test_document_errors_take_the_tables_exit_code(make, reason, code):
    module, name = make.split(":")
    err = getattr(importlib.import_module(module), name)(reason, "x")
    assert err.exit_code == code == reasons.exit_code_for(reason)


def test_endpoint_results_take_the_tables_exit_code():
    from conclave.runtime.endpoint.verify import NodeResult
    r = NodeResult(name="node-1", role="worker", owner="bob", tee="sim", freshness=None)
    assert r.fail("x", "malformed", "m").exit_code == ExitCode.MALFORMED
    assert r.fail("x", "stage_unknown", "m").exit_code == ExitCode.VERIFICATION_FAILED


def test_every_reason_vocabulary_lives_in_the_one_registry():
    """No module but runtime/reasons.py defines a reason vocabulary (a class named *Reason), and
    every vocabulary the registry defines is a StrEnum listed above."""
    import ast
    from enum import StrEnum
    from pathlib import Path
    root = Path(reasons.__file__).resolve().parents[1]
    elsewhere = []
    for path in sorted(list((root / "runtime").rglob("*.py")) + list((root / "overlay").rglob("*.py"))):
        if path == Path(reasons.__file__).resolve() or "proto" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Reason"):
                elsewhere.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    assert not elsewhere, f"reason vocabularies outside runtime/reasons.py: {elsewhere}"
    defined = {name for name, value in vars(reasons).items()
               if isinstance(value, type) and issubclass(value, StrEnum) and name.endswith("Reason")}
    assert defined == {name for _, name in VOCABULARIES.values()}


_ERROR_CALL_SUFFIXES = ("Error", "Rejected", "_Fail")


def _literal_reasons(tree):
    """(reason, line) of every string literal given as the reason of an error: the first positional
    argument of a call to *Error / *Rejected / _Fail with two or more arguments, or reason=..."""
    import ast
    import re
    word = re.compile(r"^[a-z][a-z0-9_]*$")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if not name.endswith(_ERROR_CALL_SUFFIXES):
            continue
        cands = []
        if len(node.args) > 1 and isinstance(node.args[0], ast.Constant):
            cands.append(node.args[0].value)
        cands += [k.value.value for k in node.keywords if k.arg == "reason" and isinstance(k.value, ast.Constant)]
        for value in cands:
            if isinstance(value, str) and word.match(value):
                yield value, node.lineno


def test_every_literal_reason_is_in_the_registry():
    """A reason written inline (ConclaveError("ray_failed", ...), UsageError(..., reason="bad_port"))
    must still be a value of the one registry, so no module invents a reason of its own."""
    import ast
    from pathlib import Path
    known = {str(value) for _, name in VOCABULARIES.values() for value in getattr(reasons, name)}
    root = Path(reasons.__file__).resolve().parents[1]
    unknown = []
    for path in sorted(list((root / "runtime").rglob("*.py")) + list((root / "overlay").rglob("*.py"))):
        if "proto" in path.parts:
            continue
        for value, line in _literal_reasons(ast.parse(path.read_text())):
            if value not in known:
                unknown.append(f"{path.relative_to(root)}:{line} {value}")
    assert not unknown, f"reasons not in runtime/reasons.py: {unknown}"


def test_the_literal_scan_finds_inline_reasons():
    import ast
    src = 'raise ConclaveError("ray_failed", "x")\nraise UsageError("msg", reason="bad_port")\nValueError("no reason")'
    assert sorted(v for v, _ in _literal_reasons(ast.parse(src))) == ["bad_port", "ray_failed"]
