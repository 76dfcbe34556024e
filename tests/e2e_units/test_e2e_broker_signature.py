"""The model owner's broker signs every stage key it releases with the key the manifest names
(model_source.broker_key); a node opens only a key that verifies under it, so a key sealed to the
node's public HPKE key by anyone else on the path is refused (secret_not_authenticated)."""
from __future__ import annotations

import ipaddress
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.overlay import rpc
from conclave.overlay.admission import AdmittedPeer
from conclave.overlay.evidence import SimEvidenceSource
from conclave.overlay.identity import Announcement, NodeIdentity, Role
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
from conclave.overlay.reasons import OverlayReason
from conclave.runtime.attestation.core import TeeType
from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.broker.service import KeyBrokerService
from conclave.runtime.errors import ConclaveError
from conclave.runtime.keys.broker import SecretsBroker, secret_info, sign_secret, stage_key_name
from conclave.runtime.keys.hpke import seal
from conclave.runtime.keys.secret import SecretValue
from conclave.runtime.manifest.ed25519_keys import public_key_bytes
from conclave.runtime.node.stage_key import SECRET_NOT_AUTHENTICATED, StageKeyRefused, fetch_stage_key, open_stage_key

STAGE = "node-1"
KEY = SecretValue(b"k" * 32)


class _AdmitAll:
    """Stands in for the attestation verifier (admission is tested elsewhere): admits the identity
    the reply names, so this test reaches the broker's release and signing."""

    def bind_manifest(self, manifest):
        return self

    def admit(self, *, challenged, reply, nonces):
        return AdmittedPeer(announcement=Announcement.from_proto(reply.identity), tee=TeeType.SIM, simulated=True,
                            verified_at=datetime.now(timezone.utc))


def _manifest(broker_key: bytes | None):
    return SimpleNamespace(broker_key=broker_key, stage_for=lambda node: SimpleNamespace(node=node, role="worker")
                           if node == STAGE else None, overlay_cidr="100.64.0.0/16")


def _me(ident: NodeIdentity) -> Announcement:
    return Announcement(node_id=STAGE, owner="o", role=Role.WORKER, underlay_host="127.0.0.1", admission_port=1,
                        wireguard_port=2, wg_public_key=ident.wg_public, hpke_public_key=ident.hpke_public,
                        overlay_address=ipaddress.IPv4Address("100.64.0.9"), statement_key=ident.statement_public)


def test_reason_vocabulary():
    assert SECRET_NOT_AUTHENTICATED == OverlayReason.SECRET_NOT_AUTHENTICATED


def test_a_broker_without_the_manifests_key_refuses_to_start():
    named = ed25519.Ed25519PrivateKey.generate()
    for key in (None, ed25519.Ed25519PrivateKey.generate()):
        with pytest.raises(ConclaveError) as err:
            KeyBrokerService(manifest=_manifest(public_key_bytes(named)), secrets_broker=SecretsBroker({}),
                             verifier=_AdmitAll(), signing_key=key)
        assert err.value.reason == "broker_key_mismatch"


def test_node_takes_the_brokers_signed_key_over_grpc():
    broker_key = ed25519.Ed25519PrivateKey.generate()
    service = KeyBrokerService(manifest=_manifest(public_key_bytes(broker_key)),
                               secrets_broker=SecretsBroker({stage_key_name(STAGE): KEY}), verifier=_AdmitAll(),
                               signing_key=broker_key)
    server = rpc.server(workers=2)
    pb_grpc.add_KeyBrokerServicer_to_server(service, server)
    port = rpc.bind(server, "127.0.0.1", 0)
    server.start()
    try:
        ident = NodeIdentity.generate()
        root = SimulatedRoot.generate()
        got = fetch_stage_key(f"127.0.0.1:{port}", me=_me(ident), identity=ident,
                              source=SimEvidenceSource(root.issue_attester(STAGE, measurement=b"\xab" * 48)),
                              manifest_digest=b"\x11" * 32, broker_key=public_key_bytes(broker_key))
        assert got == KEY and service.released == {STAGE: 1}
    finally:
        server.stop(0)


def test_forged_stage_key_is_refused_before_opening():
    broker_key = ed25519.Ed25519PrivateKey.generate()
    ident = NodeIdentity.generate()
    me = _me(ident)
    broker_id = b"\x07" * 32
    name = stage_key_name(STAGE)

    def reply(sealed: bytes, signature: bytes) -> pb.StageKeyReply:
        return pb.StageKeyReply(status=pb.OK, sealed_key=sealed, broker_id=broker_id, broker_signature=signature)

    context = {"name": name, "broker_wg": broker_id, "requester_wg": ident.wg_public.raw}
    genuine = seal(ident.hpke_public, KEY.reveal(), info=secret_info(name, broker_id, ident.wg_public.raw))
    assert open_stage_key(ident, reply(genuine, sign_secret(broker_key, genuine, **context)), me=me,
                          broker_key=public_key_bytes(broker_key)) == KEY
    # anyone can seal a key of their choice to the node's public HPKE key, in the right context
    forged = seal(ident.hpke_public, b"f" * 32, info=secret_info(name, broker_id, ident.wg_public.raw))
    for signature in (b"", sign_secret(broker_key, genuine, **context),
                      sign_secret(ed25519.Ed25519PrivateKey.generate(), forged, **context)):
        with pytest.raises(StageKeyRefused) as err:
            open_stage_key(ident, reply(forged, signature), me=me, broker_key=public_key_bytes(broker_key))
        assert err.value.reason == "secret_not_authenticated"
    # a manifest that names no broker key: unauthenticated, as before (optional for now)
    assert open_stage_key(ident, reply(genuine, b""), me=me, broker_key=None) == KEY


def test_manifest_model_source_broker_key_is_optional_and_checked():
    from conclave.runtime.manifest import document as doc
    from conclave.runtime.manifest.ed25519_keys import b64
    base = {"shards": "/srv/shards", "broker": "10.0.0.5:51830"}
    assert doc._check_model_source(dict(base)) == base
    key = b64(public_key_bytes(ed25519.Ed25519PrivateKey.generate()))
    assert doc._check_model_source({**base, "broker_key": key})["broker_key"] == key
    for bad in ({**base, "broker_key": "not base64!"}, {**base, "broker_key": b64(b"x" * 31)},
                {**base, "broker_key": 7}, {**base, "other": "x"}, {"shards": "/srv/shards"}):
        with pytest.raises(doc.ManifestError) as err:
            doc._check_model_source(bad)
        assert err.value.reason == "malformed"
