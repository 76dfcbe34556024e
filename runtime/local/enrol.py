"""Local mode plays every node owner: it enrols each node of the cluster for its stage.

Why here: on real hardware each GPU provider runs `conclave owner enroll` against its own node.
A local cluster has one machine and one operator, so the supervisor does it for every host:
once a node's status socket answers, it reads the node's per-boot public keys there, signs an
enrolment for the node's stage with the local node-owner key (runtime/local/trust.py) and hands
it back over the socket (status command `enroll`). A host that restarts has new keys and no
enrolment, so it is enrolled again the next time the supervisor looks. Peers still verify the
node's evidence binds those keys, exactly as on real hardware.
"""
from __future__ import annotations

from pathlib import Path

from conclave.runtime.agent.owner_enrolment import enroll_node
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.manifest.document import DeploymentManifest


def enroll_local_node(trust, status_socket: Path, stage: str) -> dict:
    """Enrol the node behind `status_socket` for `stage` as the local node owner; returns the
    node's answer ({"ok": True, "owner": ..., "expires": ...}); raises ConclaveError if refused."""
    manifest = DeploymentManifest.load(trust.manifest_path, trusted_owner=trust.owner_fingerprint)
    owner_key = keys.load_private_key(trust.node_owner_key_path)
    return enroll_node(owner_key=owner_key, manifest=manifest, stage=stage, status_socket=Path(status_socket),
                       attest=False)[1]
