"""The gRPC Node service: strict structural checks, then the agent decides.

Every request field is size-checked here (gRPC already caps the whole message); a malformed
request gets INVALID_ARGUMENT or Status MALFORMED and changes no state.
"""
from __future__ import annotations

import re
import threading
import time

import grpc

from conclave.overlay.keys import WgPublicKey
from conclave.overlay.liveness import PROOF_LEN, TOKEN_LEN
from conclave.overlay.nonces import NONCE_LEN
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc

SECRET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def _key(raw: bytes) -> WgPublicKey | None:
    try:
        return WgPublicKey(raw)
    except (ValueError, TypeError):
        return None


class RateLimit:
    """Token bucket: evidence generation costs the TEE real work, so challenges are rationed."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.last = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


class NodeService(pb_grpc.NodeServicer):
    def __init__(self, agent, *, attest_rate: float = 50.0, attest_burst: int = 100):
        self.agent = agent
        self.attest_limit = RateLimit(attest_rate, attest_burst)

    def Attest(self, request: pb.AttestRequest, context) -> pb.AttestReply:
        if len(request.nonce) != NONCE_LEN:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nonce must be 32 bytes")
        if not self.attest_limit.allow():
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many challenges; retry later")
        return self.agent.handle_attest(bytes(request.nonce))

    def ReleaseKey(self, request: pb.KeyReleaseRequest, context) -> pb.KeyReleaseReply:
        requester, leader = _key(request.requester_wg_public_key), _key(request.leader_wg_public_key)
        if requester is None or leader is None:
            return pb.KeyReleaseReply(status=pb.MALFORMED, reason="malformed_message")
        status, sealed, reason = self.agent.handle_release_key(requester, leader)
        signature = self.agent.sign_psk_release(requester, sealed) if sealed else b""
        return pb.KeyReleaseReply(status=status, sealed_psk=sealed, reason=reason, sender_signature=signature)

    def ConfirmKey(self, request: pb.KeyConfirmRequest, context) -> pb.KeyConfirmReply:
        requester, leader = _key(request.requester_wg_public_key), _key(request.leader_wg_public_key)
        if requester is None or leader is None or len(request.confirmation) != 32:
            return pb.KeyConfirmReply(status=pb.MALFORMED, reason="malformed_message")
        status, reason = self.agent.handle_confirm_key(requester, leader, bytes(request.confirmation))
        return pb.KeyConfirmReply(status=status, reason=reason)

    def GetSecret(self, request: pb.SecretRequest, context) -> pb.SecretReply:
        requester = _key(request.requester_wg_public_key)
        if requester is None or not SECRET_NAME_RE.match(request.name):
            return pb.SecretReply(status=pb.MALFORMED, reason="malformed_message")
        status, sealed, reason = self.agent.handle_get_secret(requester, request.name)
        signature = self.agent.sign_secret_release(requester, request.name, sealed) if sealed else b""
        return pb.SecretReply(status=status, sealed_secret=sealed, reason=reason, sender_signature=signature)

    def Ping(self, request: pb.PingRequest, context) -> pb.PingReply:
        """Cheap liveness probe: no evidence, no state change. Answers anyone with public content
        only: `meshed` is true only for a caller proving the pair's PSK (handle_ping)."""
        caller = _key(request.verifier_wg_public_key)
        if caller is None or len(request.token) != TOKEN_LEN or len(request.proof) not in (0, PROOF_LEN):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "ping needs a 32-byte key, a 16-byte token and an empty or 32-byte proof")
        wg_public, meshed = self.agent.handle_ping(caller, bytes(request.token), bytes(request.proof))
        statement = self.agent.own_statement() if hasattr(self.agent, "own_statement") else None
        body, signature = statement or (b"", b"")
        return pb.PingReply(wg_public_key=wg_public.raw, token=bytes(request.token), meshed=meshed,
                            stage_statement=body, statement_signature=signature)
