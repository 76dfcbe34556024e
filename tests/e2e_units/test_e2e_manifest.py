"""Deployment manifest: sign, verify, pin, tamper, wrong owner, node start gate, CLI."""
from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
from hypothesis import given, settings, strategies as st
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.runtime.attestation.core import PolicyError
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.cli import main
from conclave.runtime.manifest import (DeploymentManifest, ManifestError, Stage, build_content,
                                       require_manifest, sign_content, verify_bytes)
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.canonical import canonical_json, strict_loads

from e2e_support import ENGINE_DIGEST, MODEL_DIGEST, NODE_OWNERS, STAGES, make_manifest_bytes, sim_policy


@pytest.fixture
def owner():
    return ed25519.Ed25519PrivateKey.generate()


def _fp(key) -> str:
    return keys.fingerprint(key.public_key())


def test_roundtrip_exposes_fields_and_digest(owner, tmp_path):
    data = make_manifest_bytes(owner)
    path = tmp_path / "m.json"
    path.write_bytes(data)
    m = DeploymentManifest.load(path, trusted_owner=_fp(owner))
    content = json.loads(data)["manifest"]
    assert m.digest == hashlib.sha256(canonical_json(content)).digest()
    assert len(m.digest) == 32 and m.owner_pinned
    assert isinstance(m.policy, Policy)
    assert m.stages == STAGES and m.head.node == "node-0"
    assert m.overlay_cidr == "100.64.0.0/16"
    assert m.rendezvous == ("198.18.0.1:7000",)
    assert (m.model_digest, m.engine_digest) == (MODEL_DIGEST, ENGINE_DIGEST)
    # pin by public key object and raw bytes too
    assert verify_bytes(data, trusted_owner=owner.public_key()).digest == m.digest
    assert verify_bytes(data, trusted_owner=keys.public_key_bytes(owner)).digest == m.digest


def test_reformatting_the_file_keeps_it_valid(owner):
    data = make_manifest_bytes(owner)
    pretty = json.dumps(json.loads(data), indent=2).encode()
    assert verify_bytes(pretty, trusted_owner=_fp(owner)).digest == verify_bytes(
        data, trusted_owner=_fp(owner)).digest


@pytest.mark.parametrize("edit", [
    lambda c: c["stages"][1].update(owner="alice"),   # another listed owner takes bob's stage
    lambda c: c.update(model_digest="00" * 32),
    lambda c: c["policy"]["sim"].update(measurement=["33" * 48]),
    lambda c: c.update(overlay_cidr="100.65.0.0/16"),
])
def test_tampered_content_is_signature_invalid(owner, edit):
    doc = json.loads(make_manifest_bytes(owner))
    edit(doc["manifest"])
    with pytest.raises(ManifestError) as exc:
        verify_bytes(json.dumps(doc).encode(), trusted_owner=_fp(owner))
    assert exc.value.reason == "signature_invalid"


def test_other_owner_is_owner_key_mismatch(owner):
    mallory = ed25519.Ed25519PrivateKey.generate()
    data = make_manifest_bytes(mallory)  # validly signed, by the wrong key
    with pytest.raises(ManifestError) as exc:
        verify_bytes(data, trusted_owner=_fp(owner))
    assert exc.value.reason == "owner_key_mismatch"
    with pytest.raises(ManifestError) as exc:
        verify_bytes(data, trusted_owner=owner.public_key())
    assert exc.value.reason == "owner_key_mismatch"


def test_resigning_someone_elses_content_with_own_key_is_rejected(owner):
    mallory = ed25519.Ed25519PrivateKey.generate()
    doc = json.loads(make_manifest_bytes(owner))
    forged = sign_content(doc["manifest"], mallory)
    with pytest.raises(ManifestError) as exc:
        verify_bytes(forged, trusted_owner=_fp(owner))
    assert exc.value.reason == "owner_key_mismatch"


def test_outer_key_swap_is_malformed(owner):
    doc = json.loads(make_manifest_bytes(owner))
    doc["owner_key"] = keys.b64(keys.public_key_bytes(ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(ManifestError) as exc:
        verify_bytes(json.dumps(doc).encode(), trusted_owner=_fp(owner))
    assert exc.value.reason == "malformed"


@pytest.mark.parametrize("text", [
    b'{"manifest": {}, "manifest": {}, "signature": "", "owner_key": ""}',  # duplicate key
    b'not json',
    b'{"manifest": {"version": 1.0}, "signature": "", "owner_key": ""}',     # float
])
def test_malformed_files(text, owner):
    with pytest.raises(ManifestError) as exc:
        verify_bytes(text, trusted_owner=_fp(owner))
    assert exc.value.reason == "malformed"


@pytest.mark.parametrize("stages", [
    [Stage("a", "o", "head", 0, 10), Stage("b", "o", "worker", 11, 20)],   # gap
    [Stage("a", "o", "head", 0, 10), Stage("b", "o", "head", 10, 20)],     # two heads
    [Stage("a", "o", "worker", 0, 10)],                                    # no head
    [Stage("a", "o", "head", 0, 10), Stage("a", "o", "worker", 10, 20)],   # duplicate name
])
def test_bad_stage_layouts_are_malformed(owner, stages):
    with pytest.raises(ManifestError) as exc:
        build_content(owner_public_key=keys.public_key_bytes(owner), policy=sim_policy(),
                      model_digest=MODEL_DIGEST, engine_digest=ENGINE_DIGEST, stages=stages,
                      owners={"o": NODE_OWNERS["alice"]})
    assert exc.value.reason == "malformed"


def test_overlay_cidr_is_configurable_and_checked(owner):
    c = build_content(owner_public_key=keys.public_key_bytes(owner), policy=sim_policy(),
                      model_digest=MODEL_DIGEST, engine_digest=ENGINE_DIGEST, stages=STAGES, owners=NODE_OWNERS,
                      overlay_cidr="100.96.0.0/12")
    assert c["overlay_cidr"] == "100.96.0.0/12"
    with pytest.raises(ManifestError) as exc:
        build_content(owner_public_key=keys.public_key_bytes(owner), policy=sim_policy(),
                      model_digest=MODEL_DIGEST, engine_digest=ENGINE_DIGEST, stages=STAGES, owners=NODE_OWNERS,
                      overlay_cidr="100.64.0.1/16")
    assert exc.value.reason == "malformed"


def test_require_manifest_gate(owner, tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    path.write_bytes(make_manifest_bytes(owner))
    monkeypatch.delenv("CONCLAVE_OWNER_FINGERPRINT", raising=False)
    with pytest.raises(ManifestError) as exc:
        require_manifest(path)
    assert exc.value.reason == "owner_not_pinned"
    monkeypatch.setenv("CONCLAVE_OWNER_FINGERPRINT", _fp(owner))
    assert require_manifest(path, node="node-1").stage_for("node-1").role == "worker"
    with pytest.raises(ManifestError) as exc:
        require_manifest(path, node="node-9")
    assert exc.value.reason == "malformed"
    monkeypatch.setenv("CONCLAVE_OWNER_FINGERPRINT", _fp(ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(ManifestError) as exc:
        require_manifest(path)
    assert exc.value.reason == "owner_key_mismatch"


def test_require_manifest_refuses_unusable_policy(owner, tmp_path):
    bad = {"production": True, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
           "sim": {"measurement": ["11" * 48]}}
    path = tmp_path / "m.json"
    path.write_bytes(make_manifest_bytes(owner, policy=bad))
    with pytest.raises(PolicyError) as exc:
        require_manifest(path, trusted_owner=_fp(owner))
    assert exc.value.reason == "policy_invalid"


def test_cli_new_sign_show_verify(tmp_path, capsys):
    key, policy, out = tmp_path / "owner.pem", tmp_path / "policy.json", tmp_path / "m.json"
    policy.write_text(json.dumps(sim_policy()))
    pub = tmp_path / "owner.pub.pem"
    alice_pub, bob_pub = tmp_path / "alice.pub", tmp_path / "bob.pub"
    alice_pub.write_text(keys.b64(NODE_OWNERS["alice"]))
    bob_pub.write_bytes(keys.public_key_pem(NODE_OWNERS["bob"]))
    assert main(["manifest", "keygen", str(key), "--pubkey-out", str(pub), "--json"]) == 0
    keygen = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "PRIVATE" not in json.dumps(keygen)
    rc = main(["manifest", "new", "--owner-key", str(key), "--policy", str(policy),
               "--model-digest", MODEL_DIGEST, "--engine-digest", "sha256:" + ENGINE_DIGEST.upper(),
               "--owner", f"alice={alice_pub}", "--owner", f"bob={bob_pub}",
               "--stage", "node-0:alice:head:0-15", "--stage", "node-1:bob:worker:15-30",
               "--overlay-cidr", "100.70.0.0/16", "--rendezvous", "198.18.0.1:7000", "-o", str(out),
               "--json"])
    assert rc == 0
    created = json.loads(capsys.readouterr().out)
    shown_owners = {o["name"]: o["key"] for o in json.loads(out.read_text())["manifest"]["owners"]}
    assert shown_owners == {"alice": keys.b64(NODE_OWNERS["alice"]), "bob": keys.b64(NODE_OWNERS["bob"])}
    assert created["owner_fingerprint"] == keygen["fingerprint"]
    assert main(["manifest", "verify", str(out), "--owner-fingerprint", keygen["fingerprint"], "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["ok"] and verified["owner_pinned"] and verified["digest"] == created["digest"]
    assert main(["manifest", "verify", str(out), "--owner-pubkey", str(pub), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["owner_pinned"]
    assert main(["manifest", "show", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["overlay_cidr"] == "100.70.0.0/16" and shown["engine_digest"] == ENGINE_DIGEST

    # wrong owner -> 2 owner_key_mismatch
    assert main(["manifest", "verify", str(out), "--owner-fingerprint", "00" * 32, "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["reason"] == "owner_key_mismatch"
    # edit -> 2 signature_invalid; re-sign -> 0 with a new digest
    doc = json.loads(out.read_text())
    doc["manifest"]["model_digest"] = "ef" * 32
    out.write_text(json.dumps(doc))
    assert main(["manifest", "verify", str(out), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["reason"] == "signature_invalid"
    assert main(["manifest", "sign", str(out), "--owner-key", str(key), "--json"]) == 0
    resigned = json.loads(capsys.readouterr().out)
    assert resigned["digest"] != created["digest"]
    assert main(["manifest", "verify", str(out), "--owner-fingerprint", keygen["fingerprint"]]) == 0
    capsys.readouterr()
    # garbage -> 5 malformed
    policy.write_text("{")
    assert main(["manifest", "verify", str(policy), "--json"]) == 5
    assert json.loads(capsys.readouterr().out)["reason"] == "malformed"


def test_cli_new_from_template_and_policy_checked(tmp_path, capsys):
    key = tmp_path / "owner.pem"
    tpl = tmp_path / "tpl.json"
    tpl.write_text(json.dumps({"policy": sim_policy(), "model_digest": MODEL_DIGEST,
                               "engine_digest": ENGINE_DIGEST,
                               "owners": [{"name": n, "key": keys.b64(k)} for n, k in NODE_OWNERS.items()],
                               "stages": [s.to_json() for s in STAGES]}))
    out = tmp_path / "m.json"
    assert main(["manifest", "new", "--owner-key", str(key), "--from", str(tpl), "-o", str(out)]) == 0
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600  # created on demand, 0600
    assert key.read_bytes().decode() not in capsys.readouterr().out
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"production": False, "allowed_tee": ["sim"],
                                 "unsafe_allow_simulated": True}))
    rc = main(["manifest", "new", "--owner-key", str(key), "--from", str(tpl), "--policy", str(empty),
               "-o", str(tmp_path / "m2.json"), "--json"])
    assert rc != 0 and json.loads(capsys.readouterr().out)["reason"] == "policy_empty"
    assert not (tmp_path / "m2.json").exists()


def test_key_file_readable_by_others_is_refused(tmp_path):
    key = tmp_path / "owner.pem"
    keys.generate_key_file(key)
    os.chmod(key, 0o644)
    with pytest.raises(keys.KeyFileError) as exc:
        keys.load_private_key(key)
    assert exc.value.reason == "key_permissions"


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**63) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=100, deadline=None)
@given(value=_json)
def test_canonical_json_roundtrips_and_is_stable(value):
    encoded = canonical_json(value)
    assert strict_loads(encoded) == value
    assert canonical_json(strict_loads(encoded)) == encoded


def test_cli_new_refuses_a_stage_whose_owner_is_not_listed(tmp_path, capsys):
    """Every stage names one of the manifest's owners (the key that enrols its nodes)."""
    policy, alice_pub = tmp_path / "policy.json", tmp_path / "alice.pub"
    policy.write_text(json.dumps(sim_policy()))
    alice_pub.write_text(keys.b64(NODE_OWNERS["alice"]))
    rc = main(["manifest", "new", "--owner-key", str(tmp_path / "owner.pem"), "--policy", str(policy),
               "--model-digest", MODEL_DIGEST, "--engine-digest", ENGINE_DIGEST, "--owner", f"alice={alice_pub}",
               "--stage", "node-0:alice:head:0-15", "--stage", "node-1:bob:worker:15-30",
               "-o", str(tmp_path / "m.json"), "--json"])
    assert rc == 5 and json.loads(capsys.readouterr().out)["reason"] == "malformed"
    assert not (tmp_path / "m.json").exists()
    rc = main(["manifest", "new", "--owner-key", str(tmp_path / "owner.pem"), "--policy", str(policy),
               "--model-digest", MODEL_DIGEST, "--engine-digest", ENGINE_DIGEST,
               "--stage", "node-0:alice:head:0-15", "-o", str(tmp_path / "m.json")])
    assert rc != 0 and not (tmp_path / "m.json").exists()    # no owners at all: refused
