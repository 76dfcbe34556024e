"""Sender authentication of sealed releases (runtime/keys/sender_auth.py): a PSK or secret sealed
correctly to a node's public HPKE key is opened only when the expected sender's key signed it
together with its context; anything else fails closed before opening."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conclave.overlay import keyrelease
from conclave.overlay.keys import PresharedKey, WgPrivateKey
from conclave.overlay.reasons import OverlayReason
from conclave.runtime.keys.broker import SecretsBroker, open_signed_secret, secret_info, sign_secret
from conclave.runtime.keys.hpke import HpkePrivateKey, SealError, seal
from conclave.runtime.keys.secret import SecretValue
from conclave.runtime.keys.sender_auth import ReleaseNotAuthenticated, sign_release, verify_release


def _raw(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_reason_vocabulary():
    assert OverlayReason.PSK_NOT_AUTHENTICATED == "psk_not_authenticated"
    assert OverlayReason.SECRET_NOT_AUTHENTICATED == "secret_not_authenticated"


def test_signature_binds_sender_context_and_bytes():
    sender = ed25519.Ed25519PrivateKey.generate()
    sig = sign_release(sender, info=b"ctx", sealed=b"blob")
    verify_release(_raw(sender), info=b"ctx", sealed=b"blob", signature=sig)
    for key, info, sealed, signature in [
            (_raw(ed25519.Ed25519PrivateKey.generate()), b"ctx", b"blob", sig),   # another sender
            (_raw(sender), b"ctx2", b"blob", sig),                                # another context
            (_raw(sender), b"ctx", b"blob2", sig),                                # other bytes
            (_raw(sender), b"ctxb", b"lob", sig),                                 # boundary shift
            (_raw(sender), b"ctx", b"blob", b""),                                 # unsigned
            (_raw(sender), b"ctx", b"blob", sig[:-1]),                            # truncated
            (b"", b"ctx", b"blob", sig),                                          # no key bound: fail closed
            (b"\x00" * 31, b"ctx", b"blob", sig)]:
        with pytest.raises(ReleaseNotAuthenticated):
            verify_release(key, info=info, sealed=sealed, signature=signature)


def test_forged_psk_sealed_to_the_follower_is_refused_before_opening():
    leader_sk = ed25519.Ed25519PrivateKey.generate()
    follower_hpke = HpkePrivateKey.generate()
    a, b = WgPrivateKey.generate().public_key(), WgPrivateKey.generate().public_key()
    leader, follower = (a, b) if keyrelease.is_leader(a, b) else (b, a)
    psk = PresharedKey.generate()
    sealed, sig = keyrelease.seal_signed_psk(psk, follower_hpke=follower_hpke.public_key(), leader=leader,
                                             follower=follower, signer=leader_sk)
    got = keyrelease.open_signed_psk(follower_hpke, sealed, sig, leader=leader, follower=follower,
                                     leader_statement_key=_raw(leader_sk))
    assert got.secret_bytes() == psk.secret_bytes()
    # anyone can seal a PSK of their choice to the follower's public key, in the right context
    forged = seal(follower_hpke.public_key(), b"\x42" * 32, info=keyrelease.psk_info(leader, follower))
    attacker = ed25519.Ed25519PrivateKey.generate()
    for signature in (b"", sig, sign_release(attacker, info=keyrelease.psk_info(leader, follower), sealed=forged)):
        with pytest.raises(ReleaseNotAuthenticated):
            keyrelease.open_signed_psk(follower_hpke, forged, signature, leader=leader, follower=follower,
                                       leader_statement_key=_raw(leader_sk))
    # a genuine signature cannot be moved to another pair (the context names both keys)
    with pytest.raises(ReleaseNotAuthenticated):
        keyrelease.open_signed_psk(follower_hpke, sealed, sig, leader=leader,
                                   follower=WgPrivateKey.generate().public_key(),
                                   leader_statement_key=_raw(leader_sk))


def test_forged_secret_is_refused_and_the_real_one_opens():
    head_sk = ed25519.Ed25519PrivateKey.generate()
    worker = HpkePrivateKey.generate()
    broker = SecretsBroker({"ray_token": SecretValue(b"t" * 32)})
    ctx = {"name": "ray_token", "broker_wg": b"b" * 32, "requester_wg": b"w" * 32}
    sealed = broker.release("ray_token", requester_role="worker", requester_hpke=worker.public_key(),
                            requester_wg=ctx["requester_wg"], broker_wg=ctx["broker_wg"])
    sig = sign_secret(head_sk, sealed, **ctx)
    assert open_signed_secret(worker, sealed, sig, sender_key=_raw(head_sk), **ctx) == SecretValue(b"t" * 32)
    forged = seal(worker.public_key(), b"evil" * 8, info=secret_info("ray_token", b"b" * 32, b"w" * 32))
    for signature in (b"", sig, sign_secret(ed25519.Ed25519PrivateKey.generate(), forged, **ctx)):
        with pytest.raises(ReleaseNotAuthenticated):
            open_signed_secret(worker, forged, signature, sender_key=_raw(head_sk), **ctx)
    with pytest.raises(ReleaseNotAuthenticated):   # the signature names the secret
        open_signed_secret(worker, sealed, sig, sender_key=_raw(head_sk), **{**ctx, "name": "model_key"})
    # signed by the right sender but sealed to someone else: authentication passes, opening fails
    other = broker.release("ray_token", requester_role="worker", requester_hpke=HpkePrivateKey.generate().public_key(),
                           requester_wg=ctx["requester_wg"], broker_wg=ctx["broker_wg"])
    with pytest.raises(SealError):
        open_signed_secret(worker, other, sign_secret(head_sk, other, **ctx), sender_key=_raw(head_sk), **ctx)
