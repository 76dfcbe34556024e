"""The local model registry: name -> folder + manifest, under config.cache_dir()/models.

Layout: models/<name>/ (converted folders), models/<name>.manifest.json, models/registry.json
({name: {"path": ..., "manifest": ...}}). Folders imported by path stay where they are.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from conclave.runtime import config, log
from conclave.runtime.atomic_write import write_atomic
from conclave.runtime.errors import ConclaveError, ExitCode, UsageError
from conclave.runtime.model import convert
from conclave.runtime.model.manifest import build_manifest, check_manifest, sha256_file

DEFAULT_MODEL = "smollm2"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def models_dir() -> Path:
    return config.cache_dir() / "models"


def _registry_path() -> Path:
    return models_dir() / "registry.json"


def _write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UsageError(f"model name {name!r} must match {_NAME_RE.pattern}", reason="bad_model_name")
    return name


def load_registry() -> dict:
    path = _registry_path()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ConclaveError("registry_malformed", f"{path} is not valid JSON", exit_code=ExitCode.MALFORMED) from None


def lookup(name: str) -> tuple[Path, dict]:
    """(folder, manifest) of a registered model; the manifest is self-checked."""
    entry = load_registry().get(name)
    if entry is None:
        raise ConclaveError("model_not_found", f"model {name!r} is not imported; run `conclave model import {name}`",
                            exit_code=ExitCode.USAGE)
    manifest = json.loads(Path(entry["manifest"]).read_text())
    check_manifest(manifest)
    return Path(entry["path"]), manifest


def manifest_path(name: str) -> str:
    entry = load_registry().get(name)
    if entry is None:
        raise ConclaveError("model_not_found", f"model {name!r} is not imported", exit_code=ExitCode.USAGE)
    return entry["manifest"]


def _register(name: str, folder: Path, manifest: dict) -> dict:
    manifest_path = models_dir() / f"{name}.manifest.json"
    _write_json_atomic(manifest_path, manifest)
    registry = load_registry()
    registry[name] = {"path": str(folder), "manifest": str(manifest_path)}
    _write_json_atomic(_registry_path(), registry)
    return {"name": name, "path": str(folder), "manifest": str(manifest_path), "digest": manifest["digest"]}


DEFAULT_DTYPE = "float32"  # token-identical greedy output across stage counts (see README-serving)


def import_default(name: str = DEFAULT_MODEL, *, dtype: str | None = None, force: bool = False) -> dict:
    """Convert the wheel's GGUF once into models/<name>; a no-op when done unless force.

    dtype None means "whatever is there" for an existing import and DEFAULT_DTYPE for a new one.
    """
    validate_name(name)
    if dtype is not None and dtype not in convert.DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(convert.DTYPES)}", reason="bad_dtype")
    folder = models_dir() / name
    existing = load_registry().get(name)
    if existing and not force and Path(existing["path"]).is_dir() and Path(existing["manifest"]).is_file():
        manifest = json.loads(Path(existing["manifest"]).read_text())
        if dtype is None or manifest.get("dtype") == dtype:
            log.progress(f"model {name} already imported ({existing['path']}); use --force to redo it")
            return {"name": name, "path": existing["path"], "manifest": existing["manifest"],
                    "digest": manifest["digest"], "unchanged": True}
        raise ConclaveError("model_exists", f"model {name} is imported as {manifest.get('dtype')}; "
                            "use --force to convert it again", exit_code=ExitCode.USAGE)
    dtype = dtype or DEFAULT_DTYPE
    gguf = convert.locate_smollm2_gguf()
    log.progress(f"converting {gguf.name} to a Hugging Face folder ({dtype})")
    convert.convert_gguf(gguf, folder, dtype, log.progress)
    log.progress("hashing the model into its manifest")
    manifest = build_manifest(folder, name=name, progress=log.progress,
                              source={"kind": "gguf", "file": gguf.name, "sha256": sha256_file(gguf)})
    out = _register(name, folder, manifest)
    log.progress(f"imported {name}: digest {manifest['digest']}")
    return out


def import_folder(path: Path, name: str | None = None, *, force: bool = False) -> dict:
    """Hash a local Hugging Face folder, write its manifest and register it under `name`."""
    path = Path(path).resolve()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UsageError(f"{path} is not a Hugging Face model folder (no config.json)", reason="bad_model_folder")
    name = validate_name(name or path.name.lower())
    existing = load_registry().get(name)
    if existing and not force:
        if Path(existing["path"]) == path:
            manifest = json.loads(Path(existing["manifest"]).read_text())
            log.progress(f"model {name} already imported from {path}; use --force to hash it again")
            return {"name": name, "path": str(path), "manifest": existing["manifest"],
                    "digest": manifest["digest"], "unchanged": True}
        raise ConclaveError("model_exists", f"a model named {name!r} is already registered ({existing['path']})",
                            exit_code=ExitCode.USAGE)
    log.progress(f"hashing {path}")
    manifest = build_manifest(path, name=name, progress=log.progress, source={"kind": "folder", "path": str(path)})
    out = _register(name, path, manifest)
    log.progress(f"imported {name}: digest {manifest['digest']}")
    return out


def list_models() -> list[dict]:
    out = []
    for name, entry in sorted(load_registry().items()):
        try:
            manifest = json.loads(Path(entry["manifest"]).read_text())
        except (OSError, ValueError):
            manifest = {}
        out.append({"name": name, "path": entry["path"], "dtype": manifest.get("dtype"),
                    "num_layers": manifest.get("num_layers"), "digest": manifest.get("digest")})
    return out
