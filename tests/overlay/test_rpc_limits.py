"""gRPC size limits: ordinary requests stay small, a request that carries evidence (a node proving its
stage to the key broker, its evidence shipping the node's vendor-signed collateral) is sized like a reply.
Regression: peer-shared collateral made the broker refuse every node with RESOURCE_EXHAUSTED."""
from __future__ import annotations

import grpc
import pytest

from conclave.overlay import rpc

from conclave.runtime.cli import broker as broker_cli


def _echo_server(max_request_bytes: int):
    server = rpc.server(workers=2, max_request_bytes=max_request_bytes)
    handler = grpc.method_handlers_generic_handler("t.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req[:8])})
    server.add_generic_rpc_handlers((handler,))
    port = rpc.bind(server, "127.0.0.1", 0)
    server.start()
    return server, port


def _call(port: int, payload: bytes, max_request_bytes: int) -> bytes:
    ch = rpc.channel(f"127.0.0.1:{port}", max_request_bytes=max_request_bytes)
    try:
        return ch.unary_unary("/t.Echo/Echo")(payload, timeout=10)
    finally:
        ch.close()


EVIDENCE_WITH_COLLATERAL = b"e" * (64 * 1024)   # larger than an ordinary request may be


def test_an_ordinary_server_refuses_a_large_request():
    server, port = _echo_server(rpc.MAX_REQUEST_BYTES)
    try:
        with pytest.raises(grpc.RpcError) as exc:
            _call(port, EVIDENCE_WITH_COLLATERAL, rpc.EVIDENCE_REQUEST_BYTES)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop(0)


def test_an_evidence_server_takes_evidence_with_collateral():
    server, port = _echo_server(rpc.EVIDENCE_REQUEST_BYTES)
    try:
        assert _call(port, EVIDENCE_WITH_COLLATERAL, rpc.EVIDENCE_REQUEST_BYTES) == b"e" * 8
        with pytest.raises(grpc.RpcError):   # still bounded
            _call(port, b"x" * (rpc.EVIDENCE_REQUEST_BYTES + 1), rpc.EVIDENCE_REQUEST_BYTES + 1024)
    finally:
        server.stop(0)


def test_the_broker_and_its_client_use_the_evidence_limit():
    import inspect
    from conclave.runtime.node import stage_key
    assert "EVIDENCE_REQUEST_BYTES" in inspect.getsource(stage_key.fetch_stage_key)
    assert "EVIDENCE_REQUEST_BYTES" in inspect.getsource(broker_cli)
