"""`conclave mesh status [--json]` and `conclave mesh reattest`: ask node agents over their
local status sockets (one per node under the state dir, or --socket)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from conclave.runtime.errors import ConclaveError


def register(subparsers) -> None:
    p = subparsers.add_parser("mesh", help="overlay status of local node agents")
    sub = p.add_subparsers(dest="mesh_command", required=True, metavar="SUBCOMMAND")
    s = sub.add_parser("status", help="peers, admission state, handshakes, evidence age, reasons")
    s.add_argument("--node", default=None, help="only this node (default: every node in the state dir)")
    s.add_argument("--socket", type=Path, default=None, help="an agent's status socket")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=status)
    r = sub.add_parser("reattest", help="re-attest every admitted peer now")
    r.add_argument("--node", default=None)
    r.add_argument("--socket", type=Path, default=None)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=reattest)


def _sockets(args) -> list[Path]:
    from conclave.runtime.agent.config import default_status_socket, nodes_dir
    if args.socket:
        return [args.socket]
    if args.node:
        return [default_status_socket(args.node)]
    found = sorted(nodes_dir().glob("*.sock")) if nodes_dir().is_dir() else []
    if not found:
        raise ConclaveError("agent_unreachable", f"no node agents found under {nodes_dir()}")
    return found


def _age(ts: float | None) -> str:
    return "never" if not ts else f"{max(0, time.time() - ts):.0f}s ago"


def status(args) -> int:
    from conclave.runtime.agent.status import query
    reports = [query(path) for path in _sockets(args)]
    if args.json:
        print(json.dumps({"ok": True, "nodes": reports}, indent=2))
        return 0
    for rep in reports:
        life = rep.get("lifecycle") or {}
        stage = f"  stage {life['state']}" if life.get("state") else ""
        reasons = ", ".join(r["reason"] for r in life.get("reasons") or [])
        print(f"{rep['node']} ({rep['role']}) {rep['state']}{stage}{f' [{reasons}]' if reasons else ''}  "
              f"overlay {rep['overlay_address']}  "
              f"{rep['interface']} [{rep['device']}]  wg {rep['wg_public_key']}")
        if not rep["peers"]:
            print("  (no peers)")
        for p in rep["peers"]:
            ev = "-" if p["evidence_age_s"] is None else f"{p['evidence_age_s']:.0f}s"
            reason = f"  reason={p['reason']}" if p["reason"] else ""
            print(f"  {p['node_id']:<20} {p['state']:<10} {p['overlay_address']:<15} "
                  f"us->them={'yes' if p['admitted_by_us'] else 'no'} them->us={'yes' if p['admitted_us'] else 'no'} "
                  f"handshake={_age(p['latest_handshake'])} evidence_age={ev}{reason}")
    return 0


def reattest(args) -> int:
    from conclave.runtime.agent.status import query
    results = {str(path): query(path, "reattest") for path in _sockets(args)}
    if args.json:
        print(json.dumps({"ok": all(r.get("ok") for r in results.values()), "nodes": results}))
    return 0 if all(r.get("ok") for r in results.values()) else 3
