"""The local cluster's state file: everything `conclave status` shows and `conclave down` removes.

One cluster per state directory: config.state_dir()/cluster.json, mode 0600 (it holds the API
key; the Ray token is never written anywhere). Written atomically.
"""
from __future__ import annotations

import json
from pathlib import Path

from conclave.runtime import config
from conclave.runtime.atomic_write import write_atomic
from conclave.runtime.errors import ConclaveError, ExitCode


def state_path() -> Path:
    return config.state_dir() / "cluster.json"


def write(state: dict, path: Path | None = None) -> None:
    path = path or state_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, json.dumps(state, indent=2, sort_keys=True).encode(), mode=0o600, prefix=".cluster.")


def read(path: Path | None = None) -> dict | None:
    path = path or state_path()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ConclaveError("state_malformed", f"{path} is not valid JSON; remove it by hand after checking "
                            "`ip netns list`", exit_code=ExitCode.MALFORMED) from None


def remove(path: Path | None = None) -> None:
    try:
        (path or state_path()).unlink()
    except FileNotFoundError:
        pass


def public_view(state: dict) -> dict:
    """What `conclave status --json` prints."""
    keys = ("cluster_id", "phase", "endpoint", "api_key", "model", "stages", "partition", "network",
            "network_kind", "underlay", "nodes", "supervisor_pid", "engine_pid", "error", "run_dir",
            "manifest", "ca_cert", "health")
    return {k: state.get(k) for k in keys}
