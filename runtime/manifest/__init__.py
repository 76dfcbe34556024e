"""Signed deployment manifest (owner key, policy, model/engine digests, stage layout, overlay)."""
from conclave.runtime.manifest.document import (DEFAULT_OVERLAY_CIDR, DeploymentManifest,
                                                ManifestError, ManifestReason, Stage,
                                                VerifiedManifest, build_content, content_digest,
                                                sign_content, verify_bytes)
from conclave.runtime.manifest.node import require_manifest

__all__ = ["DEFAULT_OVERLAY_CIDR", "DeploymentManifest", "ManifestError", "ManifestReason", "Stage",
           "VerifiedManifest", "build_content", "content_digest", "sign_content", "verify_bytes",
           "require_manifest"]
