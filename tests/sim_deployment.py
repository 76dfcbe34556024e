"""One test deployment factory: a signed manifest, its node owners, simulated attesters, per-boot keys.

Every suite that needs an owner-signed manifest signs it here (sign_manifest), and the suites that
need a whole simulated two-stage deployment (tests/e2e_units, tests/front) build it from
SimDeployment, adding only what their tests use (bundle builder, receipts, admission kwargs).
Real cryptography throughout; every private key lives in memory only.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.canonical import canonical_json
from conclave.runtime.manifest import document as doc
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.manifest.enrolment import SIGNING_CONTEXT as ENROLMENT_CONTEXT
from conclave.runtime.manifest.enrolment import NodeKeys, sign_enrolment

ENGINE_DIGEST = "cd" * 32
RENDEZVOUS = ("198.18.0.1:7000",)


def sim_policy(measurement: bytes) -> dict:
    """A development policy that admits simulated evidence with exactly this measurement."""
    return {"production": False, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
            "sim": {"measurement": [measurement.hex()]}}


def owner_keys(*names: str) -> dict[str, ed25519.Ed25519PrivateKey]:
    """Fresh node-owner keys by owner name."""
    return {name: ed25519.Ed25519PrivateKey.generate() for name in names}


def public_keys(private: Mapping[str, ed25519.Ed25519PrivateKey]) -> dict[str, bytes]:
    return {name: keys.public_key_bytes(k) for name, k in private.items()}


def sign_manifest(owner_key: ed25519.Ed25519PrivateKey, *, stages: Sequence[doc.Stage],
                  node_owners: Mapping[str, bytes], policy: Mapping[str, Any], model_digest: str,
                  engine_digest: str = ENGINE_DIGEST, rendezvous: Sequence[str] = RENDEZVOUS,
                  **content: Any) -> bytes:
    """The deployment owner's signed manifest (wire bytes). node_owners: owner name -> raw public
    key; content: further build_content fields (overlay_cidr, created, model_source)."""
    built = doc.build_content(owner_public_key=keys.public_key_bytes(owner_key), policy=dict(policy),
                              model_digest=model_digest, engine_digest=engine_digest,
                              owners=dict(node_owners), stages=list(stages), rendezvous=list(rendezvous),
                              **content)
    return doc.sign_content(built, owner_key)


def verify_manifest(data: bytes, owner_key: ed25519.Ed25519PrivateKey) -> doc.VerifiedManifest:
    """The manifest as a node that pins `owner_key` sees it."""
    return doc.verify_bytes(data, trusted_owner=keys.fingerprint(owner_key.public_key()))


@dataclass
class SimDeployment:
    """A simulated deployment whose first stage is the head and second a worker."""

    root: SimulatedRoot
    owner_key: ed25519.Ed25519PrivateKey
    manifest_bytes: bytes
    manifest: doc.VerifiedManifest          # pinned to owner_key
    head_attester: object
    worker_attester: object
    node_owner_keys: dict = field(default_factory=dict, repr=False)   # owner name -> private key
    wg: dict = field(default_factory=dict)
    hpke: dict = field(default_factory=dict)
    statement_keys: dict = field(default_factory=dict, repr=False)    # node -> Ed25519 private statement key

    @classmethod
    def build(cls, *, root_name: str, stages: Sequence[doc.Stage], node_owner_keys: Mapping[str, Any],
              measurement: bytes, model_digest: str, policy: Mapping[str, Any] | None = None,
              root: SimulatedRoot | None = None, owner_key: ed25519.Ed25519PrivateKey | None = None,
              **fields: Any):
        """Sign the manifest, issue both nodes' attesters (same measurement) and their per-boot keys.
        root/owner_key: reuse another deployment's (the same owner signing another manifest)."""
        root = root or SimulatedRoot.generate(root_name)
        owner_key = owner_key or ed25519.Ed25519PrivateKey.generate()
        data = sign_manifest(owner_key, stages=stages, node_owners=public_keys(node_owner_keys),
                             policy=policy or sim_policy(measurement), model_digest=model_digest)
        deployment = cls(root=root, owner_key=owner_key, manifest_bytes=data,
                         manifest=verify_manifest(data, owner_key),
                         head_attester=root.issue_attester(stages[0].node, measurement=measurement),
                         worker_attester=root.issue_attester(stages[1].node, measurement=measurement),
                         node_owner_keys=dict(node_owner_keys), **fields)
        return deployment.init_keys()

    def init_keys(self):
        """Fresh per-boot keys (WireGuard, HPKE, statement) for every stage."""
        for stage in self.manifest.stages:
            self.wg[stage.node], self.hpke[stage.node] = secrets.token_bytes(32), secrets.token_bytes(32)
            self.statement_keys[stage.node] = ed25519.Ed25519PrivateKey.generate()
        return self

    @staticmethod
    def admission_extra(name: str, role: str = "worker", address: str = "100.64.0.2",
                        statement_key: bytes | None = None) -> dict:
        """What the overlay's admission binds besides the keys (overlay.identity.binding_extra)."""
        extra = {"node_id": name.encode(), "role": role.encode(), "overlay_address": address.encode()}
        if statement_key:
            extra["statement_key"] = statement_key
        return extra

    def statement_key(self, node: str) -> bytes:
        return keys.public_key_bytes(self.statement_keys[node])

    def enrolment(self, node: str, *, owner: str | None = None, manifest=None, **kw) -> bytes:
        """The stage owner's enrolment of `node`'s keys; owner=: the same enrolment signed by
        another owner's key instead (a forgery the owner tool would refuse to make)."""
        manifest = manifest or self.manifest
        stage_owner = manifest.stage_for(node).owner
        genuine = sign_enrolment(self.node_owner_keys[stage_owner], manifest=manifest, stage=node,
                                 node_keys=NodeKeys(self.wg[node], self.hpke[node], self.statement_key(node)), **kw)
        if owner is None or owner == stage_owner:
            return genuine
        content = json.loads(genuine)["enrolment"]
        signature = self.node_owner_keys[owner].sign(ENROLMENT_CONTEXT + canonical_json(content))
        return canonical_json({"enrolment": content, "signature": keys.b64(signature)})
