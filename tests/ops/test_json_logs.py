"""CONCLAVE_LOG_FORMAT=json: one parseable JSON object per line with level/msg/reason fields.

Runs a fresh interpreter (log setup is process-wide and reads the environment through
runtime.config), so the test covers the real switch, not a formatter called by hand.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import logging
from conclave.runtime import log
log.setup()
lg = logging.getLogger("conclave.test")
lg.info("peer admitted", extra={"peer": "node-b", "reason": "ok"})
lg.warning("peer rejected:\nsecond line of message", extra={"reason": "measurement_mismatch"})
try:
    raise RuntimeError("boom")
except RuntimeError:
    lg.error("step failed", exc_info=True, extra={"reason": "runtime_error", "step": "verify"})
lg.debug("not shown at INFO")
"""


def _run(fmt: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCLAVE_LOG")}
    env.update(CONCLAVE_LOG_FORMAT=fmt, CONCLAVE_LOG_LEVEL="INFO")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.splitlines()


def test_json_logs_one_object_per_line():
    lines = _run("json")
    records = [json.loads(line) for line in lines]  # every line parses on its own
    assert len(records) == 3
    assert [r["level"] for r in records] == ["info", "warning", "error"]
    assert [r["reason"] for r in records] == ["ok", "measurement_mismatch", "runtime_error"]
    assert records[0]["msg"] == "peer admitted" and records[0]["peer"] == "node-b"
    assert "\n" in records[1]["msg"]  # a multi-line message stays inside one JSON line
    assert records[2]["step"] == "verify" and "RuntimeError: boom" in records[2]["exc"]
    assert all(r["logger"] == "conclave.test" and r["ts"].endswith("Z") for r in records)


def test_text_logs_are_not_json():
    lines = _run("text")
    assert lines and not lines[0].lstrip().startswith("{")
    assert any("peer admitted" in line for line in lines)
