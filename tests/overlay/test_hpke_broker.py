"""HPKE sealing (ML-KEM-768 + X25519 hybrid) and the secrets broker."""
from __future__ import annotations

import pytest

from conclave.runtime.keys import hpke
from conclave.runtime.keys.broker import SecretRefused, SecretsBroker, open_secret
from conclave.runtime.keys.hpke import HpkePrivateKey, HpkePublicKey, SealError, seal
from conclave.runtime.keys.secret import SecretValue


def test_hybrid_suite_is_used():
    assert hpke.SUITE_NAME.startswith("MLKEM768-X25519")
    key = HpkePrivateKey.generate()
    assert len(key.public_key().raw) == hpke.PUBLIC_KEY_LEN == 1216
    blob = seal(key.public_key(), b"x" * 32, info=b"ctx")
    assert len(blob) == hpke.ENC_LEN + 32 + hpke.TAG_LEN


def test_seal_open_round_trip_and_context_binding():
    key = HpkePrivateKey.generate()
    blob = seal(key.public_key(), b"the psk material 32 bytes long!!", info=b"ctx-a")
    assert key.open(blob, info=b"ctx-a") == b"the psk material 32 bytes long!!"
    with pytest.raises(SealError) as err:
        key.open(blob, info=b"ctx-b")
    assert err.value.reason == "unseal_failed"


@pytest.mark.parametrize("where", [0, 100, 1119, 1120, -1])
def test_tampering_is_rejected(where):
    key = HpkePrivateKey.generate()
    blob = bytearray(seal(key.public_key(), b"payload", info=b"i"))
    blob[where] ^= 0x01
    with pytest.raises(SealError):
        key.open(bytes(blob), info=b"i")


def test_wrong_recipient_and_truncation_rejected():
    a, b = HpkePrivateKey.generate(), HpkePrivateKey.generate()
    blob = seal(a.public_key(), b"payload", info=b"i")
    with pytest.raises(SealError):
        b.open(blob, info=b"i")
    for cut in (b"", blob[:10], blob[:-1]):
        with pytest.raises(SealError):
            a.open(cut, info=b"i")


def test_public_key_parsing_rejects_bad_sizes():
    with pytest.raises(ValueError):
        HpkePublicKey(b"\x00" * 1215)
    raw = HpkePrivateKey.generate().public_key().raw
    assert HpkePublicKey(raw) == HpkePublicKey(bytes(raw))


def test_broker_releases_by_role_and_seals_to_requester():
    broker = SecretsBroker({"ray_token": SecretValue(b"t" * 32), "model_key": SecretValue(b"m" * 32)},
                           {"ray_token": frozenset({"head", "worker"}), "model_key": frozenset({"head"})})
    worker = HpkePrivateKey.generate()
    sealed = broker.release("ray_token", requester_role="worker", requester_hpke=worker.public_key(),
                            requester_wg=b"w" * 32, broker_wg=b"b" * 32)
    got = open_secret(worker, sealed, name="ray_token", broker_wg=b"b" * 32, requester_wg=b"w" * 32)
    assert got == SecretValue(b"t" * 32)
    with pytest.raises(SealError):  # bound to the name and both nodes
        open_secret(worker, sealed, name="model_key", broker_wg=b"b" * 32, requester_wg=b"w" * 32)
    with pytest.raises(SecretRefused) as err:
        broker.release("model_key", requester_role="worker", requester_hpke=worker.public_key(),
                       requester_wg=b"w" * 32, broker_wg=b"b" * 32)
    assert err.value.reason == "role_not_allowed"
    with pytest.raises(SecretRefused) as err:
        broker.release("nope", requester_role="head", requester_hpke=worker.public_key(),
                       requester_wg=b"w" * 32, broker_wg=b"b" * 32)
    assert err.value.reason == "unknown_secret"
