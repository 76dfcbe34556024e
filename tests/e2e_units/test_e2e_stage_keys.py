"""The model owner's broker holds one key per stage and releases stage k's key only to stage k."""
from __future__ import annotations

import pytest

from conclave.overlay.reasons import OverlayReason
from conclave.runtime.errors import ConclaveError
from conclave.runtime.keys.broker import (STAGE_NOT_ALLOWED, SecretRefused, SecretsBroker, open_secret,
                                          secret_purpose, stage_key_name)
from conclave.runtime.keys.hpke import HpkePrivateKey, SealError
from conclave.runtime.keys.secret import SecretValue
from conclave.runtime.sealing import SealingKey, write_key_file
from conclave.runtime.sealing.shards import key_from_secret, stage_key_path, stage_key_secrets

STAGE_NAMES = ["node-0", "node-1", "node-2"]
BROKER_WG = b"b" * 32


@pytest.fixture
def owner(tmp_path):
    """Per-stage keys as `conclave model seal --stages 3` leaves them, and the broker holding them."""
    keys = [SealingKey.generate() for _ in STAGE_NAMES]
    for i, key in enumerate(keys):
        write_key_file(stage_key_path(tmp_path, i), key)
    secrets = stage_key_secrets(tmp_path, STAGE_NAMES)
    secrets["ray_token"] = SecretValue(b"t" * 32)
    return keys, SecretsBroker(secrets)


def _ask(broker, name, *, node_id, hpke, role="worker", wg=b"w" * 32):
    return broker.release(name, requester_role=role, requester_hpke=hpke.public_key(), requester_wg=wg,
                          broker_wg=BROKER_WG, requester_node_id=node_id)


def test_stage_names_and_reason_vocabulary():
    assert stage_key_name("node-1") == "model_key/node-1"
    assert secret_purpose("model_key/node-1") == "model_key" and secret_purpose("ray_token") == "ray_token"
    assert STAGE_NOT_ALLOWED == OverlayReason.STAGE_NOT_ALLOWED == "stage_not_allowed"
    for bad in ("", "a/b"):
        with pytest.raises(ValueError):
            stage_key_name(bad)


def test_each_stage_gets_only_its_own_key(owner):
    keys, broker = owner
    assert broker.names() == sorted([*map(stage_key_name, STAGE_NAMES), "ray_token"])
    for i, node in enumerate(STAGE_NAMES):
        hpke = HpkePrivateKey.generate()
        name = stage_key_name(node)
        sealed = _ask(broker, name, node_id=node, hpke=hpke, role="head" if i == 0 else "worker")
        got = key_from_secret(open_secret(hpke, sealed, name=name, broker_wg=BROKER_WG, requester_wg=b"w" * 32))
        assert got.key_id == keys[i].key_id and keys[i].to_bytes() not in sealed
        with pytest.raises(SealError):          # opens only with the requester's own HPKE key
            HpkePrivateKey.generate().open(sealed, info=b"")
        with pytest.raises(SealError):          # and only in its context (name and both nodes)
            open_secret(HpkePrivateKey.generate(), sealed, name=name, broker_wg=BROKER_WG, requester_wg=b"w" * 32)


def test_stage_1_asking_for_stage_2s_key_is_refused(owner):
    _keys, broker = owner
    hpke = HpkePrivateKey.generate()
    with pytest.raises(SecretRefused) as err:
        _ask(broker, stage_key_name("node-2"), node_id="node-1", hpke=hpke)
    assert err.value.reason == "stage_not_allowed"
    for node_id in (None, "", "node-2x", "model_key/node-2"):   # unnamed or look-alike requesters
        with pytest.raises(SecretRefused) as err:
            _ask(broker, stage_key_name("node-2"), node_id=node_id, hpke=hpke)
        assert err.value.reason == "stage_not_allowed"


def test_roles_still_apply_and_other_secrets_unchanged(owner):
    _keys, broker = owner
    hpke = HpkePrivateKey.generate()
    with pytest.raises(SecretRefused) as err:                       # a role outside the model key's roles
        _ask(broker, stage_key_name("node-1"), node_id="node-1", hpke=hpke, role="client")
    assert err.value.reason == "role_not_allowed"
    with pytest.raises(SecretRefused) as err:
        _ask(broker, stage_key_name("node-9"), node_id="node-9", hpke=hpke)
    assert err.value.reason == "unknown_secret"
    # Existing callers pass no node id: the Ray token is released as before.
    sealed = broker.release("ray_token", requester_role="worker", requester_hpke=hpke.public_key(),
                            requester_wg=b"w" * 32, broker_wg=BROKER_WG)
    assert open_secret(hpke, sealed, name="ray_token", broker_wg=BROKER_WG,
                       requester_wg=b"w" * 32) == SecretValue(b"t" * 32)


def test_stage_key_secrets_fail_closed_on_missing_or_open_key_files(tmp_path):
    write_key_file(stage_key_path(tmp_path, 0), SealingKey.generate())
    with pytest.raises(ConclaveError) as err:
        stage_key_secrets(tmp_path, ["node-0", "node-1"])
    assert err.value.reason == "key_missing"
    stage_key_path(tmp_path, 0).chmod(0o644)
    with pytest.raises(ConclaveError) as err:
        stage_key_secrets(tmp_path, ["node-0"])
    assert err.value.reason == "key_permissions"
