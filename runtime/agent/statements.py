"""Stage statements: this node's own signed statement (Ping replies) and its peers' verified ones.

A mixin of NodeAgent (runtime/agent/agent.py): it uses the agent's peer table, lock, config and pool."""
from __future__ import annotations

import logging

from conclave.overlay import stage_statement
from conclave.runtime.agent.peers import PeerRecord, PeerState

log = logging.getLogger("conclave.agent")


class StageStatements:
    def publish_statement(self, statement: dict) -> None:
        """Sign our stage statement (shard verified, Ray state) with the key our evidence binds;
        every Ping reply carries the latest one."""
        signed = stage_statement.sign(self.identity.statement_private,
                                      {**statement, "node_id": self.cfg.node_name,
                                       "wg_public_key": self.identity.wg_public.to_base64()})
        with self._lock:
            self._statement = signed
        self._statement_hooks(self.cfg.node_name, *signed)

    def _statement_hooks(self, node_id: str, body: bytes, signature: bytes) -> None:
        for hook in list(self.admission_hooks):
            if hasattr(hook, "on_statement"):
                try:
                    hook.on_statement(node_id, body, signature)
                except Exception:   # a hook never breaks the agent
                    log.exception("statement hook failed")

    def own_statement(self) -> tuple[bytes, bytes] | None:
        with self._lock:
            return self._statement

    def _record_statement(self, rec: PeerRecord, body: bytes, signature: bytes) -> None:
        try:
            value = stage_statement.verify(rec.announcement.statement_key, body, signature)
        except stage_statement.StatementInvalid as exc:
            with self._lock:
                rec.stage_statement, rec.stage_statement_error = None, str(exc)
            return
        if value.get("node_id") != rec.node_id or value.get("wg_public_key") != rec.key.to_base64():
            with self._lock:
                rec.stage_statement, rec.stage_statement_error = None, "statement names another node"
            return
        with self._lock:
            changed = rec.stage_statement_signed != (body, signature)
            rec.stage_statement, rec.stage_statement_error = value, None
            rec.stage_statement_signed = (body, signature)
        if changed:
            self._statement_hooks(rec.node_id, body, signature)

    def peer_statements(self) -> dict[str, dict]:
        """node id -> the latest verified stage statement of each MESHED peer."""
        with self._lock:
            return {rec.node_id: dict(rec.stage_statement) for rec in self.peers.values()
                    if rec.state == PeerState.MESHED and rec.stage_statement is not None}
