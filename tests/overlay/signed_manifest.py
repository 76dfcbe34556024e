"""A signed deployment manifest for tests that start a real `conclave node`.

Why: the node's only boot path is the owner-signed manifest (--manifest + --owner-fingerprint):
its policy admits peers and its digest is bound into evidence. Tests build one the way
runtime/local/trust.py does (owner key, stages, sim policy), except that the owner key
lives only in memory: nothing private is written to disk. One node owner (OWNER_LABEL) runs every
stage; its key is kept in memory too, so a test enrols each node it starts (enroll) the way
`conclave owner enroll` does: attest the node, sign its per-boot keys, hand them over its socket.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric import ed25519

import sim_deployment
from conclave.runtime.manifest import document as doc
from conclave.runtime.manifest import ed25519_keys as keys
from sim_deployment import sim_policy  # noqa: F401  (the overlay tests take it from here)

OWNER_LABEL = "test"


@dataclass(frozen=True)
class SignedManifest:
    path: Path
    owner_fingerprint: str
    digest: bytes
    node_owner_key: ed25519.Ed25519PrivateKey = field(repr=False, default=None)

    def enroll(self, status_socket: Path, stage: str, sim_roots=(), *, attest: bool = True) -> dict:
        """Play the stage's node owner: attest the node behind `status_socket`, sign its keys,
        hand the enrolment over; returns the node's answer (raises ConclaveError when it refuses).
        attest=False: sign the keys the node's socket names without attesting it first (an owner
        vouching for a node whose evidence would not pass; its peers must still refuse it)."""
        from conclave.runtime.agent.owner_enrolment import enroll_node
        manifest = doc.DeploymentManifest.load(self.path, trusted_owner=self.owner_fingerprint)
        return enroll_node(owner_key=self.node_owner_key, manifest=manifest, stage=stage,
                           status_socket=status_socket, trusted_sim_roots=sim_roots, attest=attest)[1]

    def node_args(self) -> list[str]:
        """The `conclave node` arguments that boot from this manifest."""
        return ["--manifest", str(self.path), "--owner-fingerprint", self.owner_fingerprint]


def write_signed_manifest(path: Path, *, stages: Sequence[tuple[str, str]], policy: Mapping,
                          overlay_cidr: str = doc.DEFAULT_OVERLAY_CIDR,
                          rendezvous: Sequence[str] = ()) -> SignedManifest:
    """stages: (node name, role) in pipeline order, exactly one head; each stage gets one layer."""
    owner = ed25519.Ed25519PrivateKey.generate()
    node_owner = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(sim_deployment.sign_manifest(
        owner, stages=[doc.Stage(node, OWNER_LABEL, role, i, i + 1) for i, (node, role) in enumerate(stages)],
        node_owners={OWNER_LABEL: keys.public_key_bytes(node_owner)}, policy=policy,
        model_digest=hashlib.sha256(b"conclave/test-model").hexdigest(),
        engine_digest=hashlib.sha256(b"conclave/test-engine").hexdigest(),
        overlay_cidr=overlay_cidr, rendezvous=rendezvous))
    fingerprint = keys.fingerprint(owner.public_key())
    loaded = doc.DeploymentManifest.load(path, trusted_owner=fingerprint)   # what the node will see
    return SignedManifest(path, fingerprint, loaded.digest, node_owner)
