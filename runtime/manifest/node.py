"""The one call a node program makes before doing anything else with a manifest.

Why a single function: every node (head or worker) must refuse to start on a manifest whose
signature or owner does not check, or whose policy is unusable. Having one entry point keeps the
fail-closed rule in one place instead of in each program that boots a node.
"""
from __future__ import annotations

from pathlib import Path

from conclave.runtime import config
from conclave.runtime.manifest.document import (DeploymentManifest, ManifestError, ManifestReason,
                                                TrustedOwner, VerifiedManifest)


def require_manifest(path: Path | str, *, trusted_owner: TrustedOwner | None = None,
                     node: str | None = None) -> VerifiedManifest:
    """Load, verify and fully check the deployment manifest, or raise (the node must exit).

    trusted_owner: the owner's public key (raw 32 bytes / Ed25519PublicKey) or SHA-256 fingerprint.
    When None, the pin comes from config.owner_fingerprint() (CONCLAVE_OWNER_FINGERPRINT); with
    no pin at all the node refuses to start (reason owner_not_pinned).
    node: when given, the node must be listed as a stage (reason malformed otherwise).
    Also builds the attestation policy now, so an unusable policy stops the node at boot
    (PolicyError reasons policy_empty / policy_invalid).
    """
    pin = trusted_owner if trusted_owner is not None else config.owner_fingerprint()
    if pin is None:
        raise ManifestError(ManifestReason.OWNER_NOT_PINNED,
                            "refusing to start: no trusted deployment-owner key or fingerprint "
                            "(set CONCLAVE_OWNER_FINGERPRINT or pass one)")
    manifest = DeploymentManifest.load(path, trusted_owner=pin)
    manifest.policy  # noqa: B018 - build now: fail at boot, not at the first admission
    if node is not None and manifest.stage_for(node) is None:
        raise ManifestError(ManifestReason.MALFORMED,
                            f"refusing to start: node {node!r} is not a stage of this manifest")
    return manifest
