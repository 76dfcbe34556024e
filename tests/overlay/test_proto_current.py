"""The committed generated modules are exactly what generate.sh produces from conclave.proto."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parents[2] / "overlay" / "proto"


def test_generated_code_is_current(tmp_path):
    res = subprocess.run(["sh", str(PROTO_DIR / "generate.sh"), str(tmp_path)], capture_output=True, text=True,
                         env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in ("conclave_pb2.py", "conclave_pb2_grpc.py"):
        assert (tmp_path / name).read_text() == (PROTO_DIR / name).read_text(), \
            f"{name} is stale: run overlay/proto/generate.sh"


def test_one_proto_defines_every_node_boundary_service():
    from conclave.overlay.proto import conclave_pb2 as pb
    services = set(pb.DESCRIPTOR.services_by_name)
    assert services == {"Rendezvous", "Node", "KeyBroker"}
    assert {m.name for m in pb.DESCRIPTOR.services_by_name["KeyBroker"].methods} == {"Challenge", "ReleaseStageKey"}
    assert {m.name for m in pb.DESCRIPTOR.services_by_name["Node"].methods} == \
        {"Attest", "ReleaseKey", "ConfirmKey", "GetSecret", "Ping"}
    assert list(PROTO_DIR.glob("*.proto")) == [PROTO_DIR / "conclave.proto"]
