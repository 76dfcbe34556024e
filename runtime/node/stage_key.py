"""The node's side of the key broker: prove itself as its stage and receive that stage's shard key."""
from __future__ import annotations

from conclave.overlay import rpc, wire
from conclave.overlay.prover import answer_challenge
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.keys.broker import open_secret, open_signed_secret, stage_key_name
from conclave.runtime.keys.sender_auth import ReleaseNotAuthenticated
from conclave.runtime.keys.secret import SecretValue

TIMEOUT = 30.0
SECRET_NOT_AUTHENTICATED = "secret_not_authenticated"   # = overlay.reasons.OverlayReason.SECRET_NOT_AUTHENTICATED


class StageKeyRefused(ConclaveError):
    exit_code = ExitCode.POLICY_VIOLATED


def fetch_stage_key(target: str, *, me, identity, source, manifest_digest: bytes,
                    enrolment: bytes = b"", broker_key: bytes | None = None) -> SecretValue:
    """Stage `me.node_id`'s shard key from the broker at `target` (HOST:PORT), presenting our
    owner's enrolment (the broker refuses without one: owner_not_enrolled); raises
    StageKeyRefused with the broker's reason, or ConclaveError(broker_unreachable).

    broker_key: the broker's Ed25519 key the manifest names (model_source.broker_key): the key is
    opened only if the broker signed it (secret_not_authenticated otherwise, before opening)."""
    channel = rpc.channel(target, max_request_bytes=rpc.EVIDENCE_REQUEST_BYTES)   # our evidence + collateral
    try:
        stub = pb_grpc.KeyBrokerStub(channel)
        try:
            challenge = stub.Challenge(pb.BrokerChallengeRequest(identity=wire.announcement_to_proto(me)), timeout=TIMEOUT)
            if challenge.status != pb.OK:
                raise StageKeyRefused(challenge.reason or "broker_refused", f"the key broker refused the challenge")
            reply = answer_challenge(me=me, source=source, manifest_digest=manifest_digest,
                                     nonce=bytes(challenge.nonce), enrolment=enrolment)
            answer = stub.ReleaseStageKey(pb.StageKeyRequest(attestation=reply), timeout=TIMEOUT)
        except Exception as exc:
            import grpc
            if isinstance(exc, grpc.RpcError):
                raise ConclaveError("broker_unreachable", f"the key broker at {target} did not answer: "
                                    f"{exc.code().name}") from None
            raise
        if answer.status != pb.OK:
            raise StageKeyRefused(answer.reason or "broker_refused", "the key broker refused this node's stage key")
        return open_stage_key(identity, answer, me=me, broker_key=broker_key)
    finally:
        channel.close()


def open_stage_key(identity, answer: pb.StageKeyReply, *, me, broker_key: bytes | None) -> SecretValue:
    """Open the broker's sealed stage key; when the manifest names a broker key, only if the
    broker signed it (StageKeyRefused secret_not_authenticated otherwise)."""
    context = {"name": stage_key_name(me.node_id), "broker_wg": bytes(answer.broker_id),
               "requester_wg": me.wg_public_key.raw}
    if broker_key is None:   # a manifest without model_source.broker_key: unauthenticated, as before
        return open_secret(identity.hpke_private, bytes(answer.sealed_key), **context)
    try:
        return open_signed_secret(identity.hpke_private, bytes(answer.sealed_key), bytes(answer.broker_signature),
                                  sender_key=broker_key, **context)
    except ReleaseNotAuthenticated:
        raise StageKeyRefused(SECRET_NOT_AUTHENTICATED, "the stage key is not signed by the broker key "
                              "the manifest names") from None
