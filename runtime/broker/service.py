"""KeyBroker: the model owner's service that releases each stage's shard key to that stage only.

It admits with the same Verifier the nodes use (policy and digest of the signed deployment
manifest), one-sided: a node asks for a challenge naming itself, answers with evidence over the
broker's nonce that binds its WireGuard, HPKE and statement keys, and gets back stage K's key
HPKE-sealed to its attested HPKE key, with a context that names the key, the broker and the
node. A node id that is no stage of the manifest (stage_unknown), a role other than its stage's
(role_mismatch), no enrolment by the stage's owner over the node's keys (owner_not_enrolled),
evidence that fails admission (its reason), or a request for another stage's key
(stage_not_allowed, from SecretsBroker) gets nothing.

The broker is not a CVM, so nodes cannot authenticate it by evidence: it signs every released
key (its context and sealed bytes, runtime/keys/sender_auth.py) with its Ed25519 signing key,
whose public half the signed deployment manifest names (model_source.broker_key); a node opens
only a key that verifies under it (runtime/node/stage_key.py, secret_not_authenticated).
"""
from __future__ import annotations

import ipaddress
import logging
import secrets
import threading

import grpc

from conclave.overlay.admission import AdmissionRejected, Verifier
from conclave.overlay.identity import Announcement, MalformedAnnouncement
from conclave.overlay.nonces import NonceCache
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from conclave.runtime.agent.service import RateLimit
from conclave.runtime.errors import ConclaveError, ExitCode
from conclave.runtime.keys.broker import SecretRefused, SecretsBroker, sign_secret, stage_key_name
from conclave.runtime.manifest.ed25519_keys import public_key_bytes
from conclave.runtime.reasons import BrokerReason  # noqa: F401 (re-export; the one registry)

log = logging.getLogger("conclave.broker")
MAX_PENDING = 256


class KeyBrokerService(pb_grpc.KeyBrokerServicer):
    def __init__(self, *, manifest, secrets_broker: SecretsBroker, verifier: Verifier,
                 nonce_ttl: float = 30.0, challenge_rate: float = 20.0, challenge_burst: int = 40,
                 signing_key=None):
        """signing_key: the broker's Ed25519 private key; required (and must match) when the
        manifest names model_source.broker_key (broker_key_mismatch otherwise)."""
        named = getattr(manifest, "broker_key", None)
        if named is not None and (signing_key is None or public_key_bytes(signing_key) != named):
            raise ConclaveError("broker_key_mismatch", "the manifest names a broker key and this broker does "
                                "not hold it (--signing-key)", exit_code=ExitCode.USAGE)
        self.signing_key = signing_key
        self.manifest = manifest
        self.secrets = secrets_broker
        self.verifier = verifier.bind_manifest(manifest)   # stage, role and owner enrolment checked too
        self.nonces = NonceCache(ttl=nonce_ttl)
        self.broker_id = secrets.token_bytes(32)
        self._pending: dict[str, Announcement] = {}
        self._lock = threading.Lock()
        self._rate = RateLimit(challenge_rate, challenge_burst)
        self.released: dict[str, int] = {}      # stage -> keys released (status, tests)
        self.refused: dict[str, int] = {}       # reason -> count

    def _refuse(self, reason: str) -> None:
        with self._lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1

    def Challenge(self, request: pb.BrokerChallengeRequest, context) -> pb.BrokerChallengeReply:
        if not self._rate.allow():
            self._refuse(BrokerReason.RATE_LIMITED)
            return pb.BrokerChallengeReply(status=pb.REFUSED, reason=BrokerReason.RATE_LIMITED)
        try:
            ann = Announcement.from_proto(request.identity)
        except MalformedAnnouncement:
            return pb.BrokerChallengeReply(status=pb.MALFORMED, reason="malformed_message")
        stage = self.manifest.stage_for(ann.node_id)
        if stage is None:
            self._refuse(BrokerReason.STAGE_UNKNOWN)
            return pb.BrokerChallengeReply(status=pb.REFUSED, reason=BrokerReason.STAGE_UNKNOWN)
        if stage.role != str(ann.role):
            self._refuse(BrokerReason.ROLE_MISMATCH)
            return pb.BrokerChallengeReply(status=pb.REFUSED, reason=BrokerReason.ROLE_MISMATCH)
        with self._lock:
            if len(self._pending) >= MAX_PENDING and ann.node_id not in self._pending:
                self._pending.pop(next(iter(self._pending)))
            self._pending[ann.node_id] = ann
        return pb.BrokerChallengeReply(status=pb.OK, nonce=self.nonces.issue(ann.node_id), broker_id=self.broker_id)

    def ReleaseStageKey(self, request: pb.StageKeyRequest, context) -> pb.StageKeyReply:
        reply = request.attestation
        node_id = reply.identity.node_id
        with self._lock:
            challenged = self._pending.get(node_id)
        if challenged is None:
            self._refuse(BrokerReason.NOT_CHALLENGED)
            return pb.StageKeyReply(status=pb.NOT_ADMITTED, reason=BrokerReason.NOT_CHALLENGED)
        try:
            admitted = self.verifier.admit(challenged=challenged, reply=reply, nonces=self.nonces)
        except AdmissionRejected as exc:
            self._refuse(str(exc.reason))
            log.info("broker: %s not admitted [%s]", node_id, exc.reason)
            return pb.StageKeyReply(status=pb.NOT_ADMITTED, reason=str(exc.reason))
        ann = admitted.announcement
        try:
            sealed = self.secrets.release(stage_key_name(ann.node_id), requester_role=str(ann.role),
                                          requester_hpke=ann.hpke_public_key, requester_wg=ann.wg_public_key.raw,
                                          broker_wg=self.broker_id, requester_node_id=ann.node_id)
        except SecretRefused as exc:
            self._refuse(exc.reason)
            return pb.StageKeyReply(status=pb.REFUSED, reason=exc.reason)
        with self._lock:
            self.released[ann.node_id] = self.released.get(ann.node_id, 0) + 1
            self._pending.pop(node_id, None)
        log.info("broker: released the shard key of stage %s to its admitted node", ann.node_id)
        signature = b"" if self.signing_key is None else sign_secret(
            self.signing_key, sealed, name=stage_key_name(ann.node_id), broker_wg=self.broker_id,
            requester_wg=ann.wg_public_key.raw)
        return pb.StageKeyReply(status=pb.OK, sealed_key=sealed, broker_id=self.broker_id,
                                broker_signature=signature)


def overlay_network(manifest) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(manifest.overlay_cidr)
