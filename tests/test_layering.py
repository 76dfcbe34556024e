"""Import layering: every import in runtime/ and overlay/ points down (or sideways), never up.

Layers, bottom to top (README "Layout" draws the same table):
  0 base           runtime (package, errors, config, log, metrics, netns, canonical, atomic_write, reasons)
  1 trust core     runtime.attestation, runtime.keys, runtime.manifest, runtime.measure
  2 overlay        overlay (with overlay.proto), runtime.model, runtime.sealing
  3 node lifecycle runtime.node, runtime.agent, runtime.broker
  4 serving        runtime.serving, runtime.endpoint, runtime.report
  5 local cluster  runtime.local
  6 CLI            runtime.cli, runtime.__main__

Every import counts, module level or inside a function (a lazy import that hides a cycle is
still an edge). Imports of `conclave.x.y` also load the packages above it, so `from
conclave.runtime.attestation import core` is an edge to runtime.attestation itself.

The pure core (parsers, verifiers, policy, binding, the overlay's desired configuration, the
admission decision) must not reach an I/O module, directly or through what it imports.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOPS = {"runtime": REPO / "runtime", "overlay": REPO / "overlay"}

# module or package (dotted, without the `conclave.` prefix) -> layer; the longest prefix wins
LAYERS: dict[str, int] = {
    "runtime": 0,                     # runtime/__init__ and the flat base modules below
    "runtime.errors": 0, "runtime.config": 0, "runtime.log": 0, "runtime.metrics": 0,
    "runtime.netns": 0, "runtime.canonical": 0, "runtime.atomic_write": 0, "runtime.reasons": 0,
    "runtime.attestation": 1, "runtime.keys": 1, "runtime.manifest": 1, "runtime.measure": 1,
    "overlay": 2, "runtime.model": 2, "runtime.sealing": 2,
    "runtime.node": 3, "runtime.agent": 3, "runtime.broker": 3,
    "runtime.serving": 4, "runtime.endpoint": 4, "runtime.report": 4,
    "runtime.local": 5,
    "runtime.cli": 6, "runtime.__main__": 6,
}
LAYER_NAMES = ["base", "trust core", "overlay", "node lifecycle", "serving", "local cluster", "CLI"]

# Upward edges that stay for now, each with its reason: (importer, imported). Aim: empty.
ALLOWED_UPWARD: set[tuple[str, str]] = set()

# I/O modules the pure core must not reach (top-level names, and project modules that do I/O)
IO_MODULES = ("subprocess", "socket", "grpc", "aiohttp", "ctypes", "fcntl", "requests", "urllib.request",
              "http.client", "conclave.overlay.proto", "conclave.runtime.attestation.collect")
PURE_CORE = (
    "runtime.attestation.core", "runtime.attestation.der", "runtime.attestation.binding",
    "runtime.attestation.policy", "runtime.attestation.policy.schema", "runtime.attestation.policy.load",
    "runtime.attestation.policy.validate", "runtime.attestation.collateral_merge",
    "runtime.attestation.snp_report", "runtime.attestation.snp_certs", "runtime.attestation.snp_der",
    "runtime.attestation.tdx_quote", "runtime.attestation.tdx_pck", "runtime.attestation.tdx_tcb",
    "runtime.attestation.nvgpu_chain", "runtime.attestation.nvgpu_rim", "runtime.attestation.nvgpu_spdm",
    "runtime.attestation.nvgpu_requirement",
    "runtime.canonical", "runtime.manifest.document", "runtime.manifest.enrolment",
    "overlay.desired", "overlay.admission", "overlay.identity", "overlay.nonces",
)
# I/O that a pure-core module still reaches, each with its reason: (module, I/O name). Aim: empty.
ALLOWED_IO: dict[tuple[str, str], str] = {}


def _module_files() -> dict[str, Path]:
    out = {}
    for top, folder in TOPS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join((top,) + rel)] = path
    return out


MODULES = _module_files()


def _targets(module: str, path: Path, node: ast.AST) -> list[str]:
    """Dotted names (with `conclave.` for ours) an import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = "conclave." + module
        if path.name != "__init__.py":
            base = base.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            base = base.rsplit(".", 1)[0]
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    names = [target]
    if target.startswith("conclave."):
        for alias in node.names:     # `from pkg import submodule`
            if f"{target}.{alias.name}"[len("conclave."):] in MODULES:
                names.append(f"{target}.{alias.name}")
    return names


def _is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` blocks never run; their imports are for annotations only (no else allowed)."""
    return (isinstance(node, ast.If) and not node.orelse
            and ((isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                 or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")))


@lru_cache(maxsize=None)
def imports_of(module: str) -> tuple[tuple[str, int], ...]:
    """(imported dotted name, line) for every import anywhere in `module`, parents included."""
    path = MODULES[module]
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                 for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(module, path, node):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):      # importing a.b.c runs a and a.b first
                    found.append((".".join(parts[:i]), node.lineno))
    return tuple(dict.fromkeys(found))


def layer_of(module: str) -> int:
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    if best is None:
        raise KeyError(module)
    return LAYERS[best]


def _ours(name: str) -> str | None:
    if name.startswith("conclave."):
        inner = name[len("conclave."):]
        return inner if inner in MODULES else None
    return None


def test_every_module_has_a_layer():
    missing = []
    for module in MODULES:
        try:
            layer_of(module)
        except KeyError:
            missing.append(module)
    assert not missing, f"map these in LAYERS: {missing}"


def test_allow_lists_hold_only_live_entries():
    # an entry that no longer matches anything must go, so the lists only shrink
    for module, name in ALLOWED_IO:
        assert name in _reaches(module), f"ALLOWED_IO entry {(module, name)} is stale: remove it"
    for module, target in ALLOWED_UPWARD:
        assert any(_ours(n) == target for n, _ in imports_of(module)), f"stale ALLOWED_UPWARD {(module, target)}"


def test_type_checking_imports_are_not_edges_but_lazy_ones_are():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import socket\n")
    assert _is_type_checking(tree.body[1])
    tree = ast.parse("if TYPE_CHECKING:\n    import socket\nelse:\n    import socket\n")
    assert not _is_type_checking(tree.body[0])


def test_the_walk_sees_lazy_imports():
    # sanity: the walk must see an import inside a function body, or the layering check proves nothing
    tree = ast.parse("def f():\n    from conclave.runtime import cli\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))
    assert ("conclave.runtime.cli", 2) in [(t, 2) for t in _targets("runtime.x", REPO / "runtime/x.py",
                                                                     tree.body[0].body[0])]
    assert len(MODULES) > 100


def test_no_upward_import():
    upward = []
    for module in sorted(MODULES):
        mine = layer_of(module)
        for name, line in imports_of(module):
            target = _ours(name)
            if target is None or target == module:
                continue
            theirs = layer_of(target)
            if theirs > mine and (module, target) not in ALLOWED_UPWARD:
                upward.append(f"{MODULES[module].relative_to(REPO)}:{line} ({LAYER_NAMES[mine]}) imports "
                              f"{target} ({LAYER_NAMES[theirs]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def _reaches(start: str) -> dict[str, list[str]]:
    """Every name `start` imports, directly or through our modules, with one path to it."""
    seen: dict[str, list[str]] = {}
    todo = [(start, [start])]
    while todo:
        module, trail = todo.pop()
        for name, _line in imports_of(module):
            if name in seen:
                continue
            seen[name] = trail + [name]
            target = _ours(name)
            if target is not None and target not in seen:
                seen[target] = trail + [name]
                todo.append((target, trail + [target]))
    return seen


@pytest.mark.parametrize("module", PURE_CORE)
def test_pure_core_reaches_no_io(module):
    assert module in MODULES, f"{module} is gone: update PURE_CORE"
    reached = _reaches(module)
    bad = {name: trail for name, trail in reached.items()
           if any(name == io or name.startswith(io + ".") for io in IO_MODULES)
           and (module, name) not in ALLOWED_IO}
    assert not bad, "\n".join(f"{name}: via {' -> '.join(trail)}" for name, trail in sorted(bad.items()))
