"""gRPC plumbing shared by the node service and the rendezvous: size limits, servers, channels.

Limits are explicit so a malformed or oversized message is refused by gRPC before our code
sees it: requests to a node are small (nonces, keys, sealed 32-byte secrets); replies may carry
evidence with certificate chains and collateral.
"""
from __future__ import annotations

from concurrent import futures

import grpc

from conclave.runtime.errors import ConclaveError

MAX_REQUEST_BYTES = 16 * 1024          # anything a node or the rendezvous receives as a server
MAX_REPLY_BYTES = 2 * 1024 * 1024       # evidence + chains + collateral
# a request that itself carries evidence (a node proving its stage to the key broker): the evidence
# may ship the node's vendor-signed collateral, so it is sized like a reply
EVIDENCE_REQUEST_BYTES = MAX_REPLY_BYTES
RPC_TIMEOUT = 5.0
# gRPC's default reconnect backoff grows to 120 s: after a partition heals, a peer would stay
# unreachable that long. Cap it so recovery takes seconds (a handful of peers, cheap retries).
RECONNECT_BACKOFF_MS = (500, 5000)   # initial, max


def server(workers: int = 8, max_request_bytes: int = MAX_REQUEST_BYTES) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="conclave-rpc"),
        options=[("grpc.max_receive_message_length", max_request_bytes),
                 ("grpc.max_send_message_length", MAX_REPLY_BYTES),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=64)


def channel(target: str, max_request_bytes: int = MAX_REQUEST_BYTES) -> grpc.Channel:
    """A plaintext channel: everything on it is public or HPKE-sealed, and believed only via evidence."""
    return grpc.insecure_channel(target, options=[
        ("grpc.max_receive_message_length", MAX_REPLY_BYTES),
        ("grpc.max_send_message_length", max_request_bytes),
        ("grpc.enable_http_proxy", 0),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1])])


def bind(srv: grpc.Server, host: str, port: int) -> int:
    """Listen on host:port. grpcio reports a busy (or unusable) address either by returning 0 or
    by raising RuntimeError, depending on version and cause: both become ConclaveError(port_in_use)
    so the CLI funnel prints one clear reason instead of a traceback."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = srv.add_insecure_port(target)
    except RuntimeError as exc:
        raise ConclaveError("port_in_use", f"cannot listen on {target} (in use or unavailable): {exc}") from None
    if bound == 0:
        raise ConclaveError("port_in_use", f"cannot listen on {target} (in use or unavailable)")
    return bound
