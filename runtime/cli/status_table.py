"""The readable `conclave status`: a header about the cluster and one table row per node.

Why a module of its own: the status dict (serving/state.py public_view, plus what the supervisor
and the network layer add per node) grows as features land; this renders whatever is there and
shows "-" for any field a node does not have yet, instead of failing or printing Python reprs.

Columns: NODE, ROLE, OWNER, TEE, GPUS, LAYERS ([start, end) as start-end), EVIDENCE (age of the
node's latest admitted evidence), TCB (tcb_status of that evidence), HEALTH (the node's own health,
else its Ray process up/down). Never prints the API key.
"""
from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any, Mapping, Sequence

COLUMNS = ("NODE", "ROLE", "OWNER", "TEE", "GPUS", "LAYERS", "EVIDENCE", "TCB", "HEALTH")
UNKNOWN = "-"


def _text(value: Any) -> str:
    if value is None or value == "" or value == []:
        return UNKNOWN
    return str(value)


def age(seconds: float | None) -> str:
    """12s, 4m, 3h, 2d: the evidence age at a glance."""
    if seconds is None or seconds < 0:
        return UNKNOWN
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _epoch(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _gpus(node: Mapping) -> str:
    gpus = node.get("gpus")
    if isinstance(gpus, (list, tuple)):
        return str(len(gpus)) if gpus else "0"
    return _text(gpus)


def _layers(node: Mapping) -> str:
    layers = node.get("layers")
    if isinstance(layers, (list, tuple)) and len(layers) == 2:
        return f"{layers[0]}-{layers[1]}"
    return _text(layers)


def _evidence_age(node: Mapping, now: float) -> str:
    if node.get("evidence_age_s") is not None:
        return age(float(node["evidence_age_s"]))
    at = _epoch(node.get("evidence_at"))
    return age(now - at) if at is not None else UNKNOWN


def _health(node: Mapping) -> str:
    health = node.get("health")
    if isinstance(health, Mapping):
        health = health.get("status")
    if not health and isinstance(node.get("lifecycle"), Mapping):
        health = node["lifecycle"].get("state")      # the node agent's own view (serving, ...)
    if health:
        return str(health)
    if "ray_alive" in node:
        return "up" if node["ray_alive"] else "down"
    return UNKNOWN


def manifest_owners(path: str | None) -> dict[str, str]:
    """{node: owner} from the deployment manifest file, for display only (no trust decision)."""
    try:
        with open(path or "", "rb") as fh:
            stages = json.load(fh)["manifest"]["stages"]
        return {str(s["node"]): str(s["owner"]) for s in stages}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def node_row(node: Mapping, now: float) -> list[str]:
    evidence = node.get("evidence") if isinstance(node.get("evidence"), Mapping) else {}
    tee = node.get("tee") or evidence.get("tee")
    return [_text(node.get("name")), _text(node.get("role")), _text(node.get("owner")), _text(tee),
            _gpus(node), _layers(node), _evidence_age(node, now), _text(node.get("tcb_status")),
            _health(node)]


def table(rows: Sequence[Sequence[str]], header: Sequence[str] = COLUMNS) -> str:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in (header, *rows)]
    return "\n".join(lines)


def render(view: Mapping, now: float | None = None) -> str:
    """The whole `conclave status` text for a status view (conclave status --json's dict)."""
    now = time.time() if now is None else now
    model = view.get("model") if isinstance(view.get("model"), Mapping) else {}
    running = view.get("running")
    out = [f"cluster {_text(view.get('cluster_id'))}: {_text(view.get('phase'))}"
           + ("" if running is None else f" ({'running' if running else 'not running'})"),
           f"endpoint  {_text(view.get('endpoint'))}",
           f"model     {_text(model.get('name'))}  stages: {_text(view.get('stages'))}",
           f"network   {_text(view.get('network_kind'))}  api key: {'set (see --json)' if view.get('api_key') else 'none'}"]
    if view.get("manifest"):
        out.append(f"manifest  {view['manifest']}")
    if view.get("ca_cert"):
        out.append(f"ca cert   {view['ca_cert']}")
    owners = manifest_owners(view.get("manifest"))
    nodes = [{"owner": owners.get(str(n.get("name"))), **{k: v for k, v in n.items() if v is not None}}
             for n in (view.get("nodes") or []) if isinstance(n, Mapping)]
    out.append("")
    out.append(table([node_row(n, now) for n in nodes]) if nodes else "no nodes yet")
    health = view.get("health") if isinstance(view.get("health"), Mapping) else {}
    if health.get("status") == "degraded":
        for problem in health.get("problems") or []:
            out.append(f"degraded [{problem.get('reason')}]: {problem.get('detail')}")
    if health.get("recoveries"):
        out.append(f"recovered without an operator {health['recoveries']} time(s)")
    error = view.get("error")
    if isinstance(error, Mapping):
        out.append(f"error [{error.get('reason')}]: {error.get('message')}")
    return "\n".join(out)
