"""Key types: exact sizes, redacted secrets, constant-time equality, no pickling."""
from __future__ import annotations

import base64
import pickle

import pytest

from conclave.overlay import keys
from conclave.overlay.keys import PresharedKey, WgPrivateKey, WgPublicKey
from conclave.runtime.keys.hpke import HpkePrivateKey
from conclave.runtime.keys.secret import SecretValue


def test_generated_pair_matches_wg_format():
    priv = WgPrivateKey.generate()
    pub = priv.public_key()
    text = pub.to_base64()
    assert len(text) == 44 and base64.b64decode(text) == pub.raw and len(pub.raw) == 32
    assert WgPublicKey.from_base64(text) == pub
    assert priv.wg_text().endswith(b"\n") and len(base64.b64decode(priv.wg_text().strip())) == 32


@pytest.mark.parametrize("size", [0, 31, 33, 64])
@pytest.mark.parametrize("cls", [WgPublicKey, WgPrivateKey, PresharedKey])
def test_wrong_sizes_are_rejected(cls, size):
    with pytest.raises(ValueError):
        cls(b"\x01" * size)


@pytest.mark.parametrize("cls", [WgPublicKey, WgPrivateKey, PresharedKey])
def test_non_bytes_rejected(cls):
    with pytest.raises(TypeError):
        cls("a" * 32)


def test_bad_base64_rejected():
    with pytest.raises(ValueError):
        WgPublicKey.from_base64("!" * 44)
    with pytest.raises(ValueError):
        WgPublicKey.from_base64(base64.b64encode(b"x" * 31).decode())


@pytest.mark.parametrize("secret", [
    lambda: WgPrivateKey.generate(), lambda: PresharedKey.generate(),
    lambda: HpkePrivateKey.generate(), lambda: SecretValue(b"s3cr3t-token-value")])
def test_secret_reprs_are_redacted_and_unpicklable(secret):
    obj = secret()
    text = repr(obj) + str(obj) + f"{obj}"
    assert "redacted" in text
    raw = getattr(obj, "_raw", None)
    if raw is not None:
        assert base64.b64encode(raw).decode() not in text and raw.hex() not in text
    with pytest.raises(TypeError):
        pickle.dumps(obj)


def test_equality_is_by_value_and_constant_time(monkeypatch):
    calls = []
    real = keys.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    raw = b"\x07" * 32
    assert WgPublicKey(raw) == WgPublicKey(bytes(raw))
    assert WgPublicKey(raw) != WgPublicKey(b"\x08" * 32)
    assert PresharedKey(raw) == PresharedKey(raw)
    assert WgPrivateKey(raw) == WgPrivateKey(raw)
    assert len(calls) == 4
    assert WgPublicKey(raw) != raw  # a key never equals plain bytes


def test_secrets_are_not_hashable_public_keys_are():
    assert len({WgPublicKey(b"\x01" * 32), WgPublicKey(b"\x01" * 32)}) == 1
    for obj in (WgPrivateKey.generate(), PresharedKey.generate()):
        with pytest.raises(TypeError):
            hash(obj)


def test_psk_fingerprint_matches_wg_text():
    psk = PresharedKey.generate()
    assert keys.psk_fingerprint_of_b64(psk.wg_text().decode().strip()) == psk.fingerprint()
    assert keys.psk_fingerprint_of_b64("(none)") is None
