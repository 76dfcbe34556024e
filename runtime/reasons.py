"""Stable reason codes (base layer): the overlay's decisions (admission, rejection, eviction,
key release) and why its WireGuard device was recreated.

overlay/reasons.py re-exports both for the overlay's modules.

Attestation failures keep the attestation Reason strings (measurement_mismatch,
report_data_mismatch, simulated_not_allowed, debug_enabled, ...); these are the overlay's own.
"""
from __future__ import annotations

from enum import StrEnum

from conclave.runtime.errors import ExitCode


class OverlayReason(StrEnum):
    NONCE_REPLAYED = "nonce_replayed"          # the echoed nonce was already used
    NONCE_UNKNOWN = "nonce_unknown"            # never issued by this verifier (or for another peer)
    NONCE_EXPIRED = "nonce_expired"
    IDENTITY_MISMATCH = "identity_mismatch"    # announced keys differ from the attested ones
    MALFORMED_MESSAGE = "malformed_message"    # a wire message failed structural checks
    ADDRESS_OUT_OF_RANGE = "overlay_address_out_of_range"
    ADDRESS_CONFLICT = "overlay_address_conflict"
    ROLE_INVALID = "role_invalid"
    PEER_UNREACHABLE = "peer_unreachable"      # no liveness reply within the timeout (or unreachable at admission)
    IDENTITY_CHANGED = "identity_changed"      # a liveness reply named another WireGuard key than the admitted one
    EVIDENCE_EXPIRED = "evidence_expired"      # no successful re-attestation within max evidence age
    REATTESTATION_FAILED = "reattestation_failed"
    REPLACED = "replaced"                      # same node came back with new keys
    NOT_ADMITTED = "not_admitted"
    ROLE_NOT_ALLOWED = "role_not_allowed"
    UNKNOWN_SECRET = "unknown_secret"
    STAGE_NOT_ALLOWED = "stage_not_allowed"    # a per-stage model key asked for by a node admitted as another stage
    KEY_CONFIRMATION_FAILED = "key_confirmation_failed"
    PSK_NOT_AUTHENTICATED = "psk_not_authenticated"        # a sealed PSK not signed by the admitted leader's statement key
    SECRET_NOT_AUTHENTICATED = "secret_not_authenticated"  # a sealed secret not signed by its attested (or named) sender
    ANNOUNCEMENT_UNSIGNED = "announcement_unsigned"        # rendezvous: no statement key or no signature
    ANNOUNCEMENT_SIGNATURE_INVALID = "announcement_signature_invalid"   # rendezvous: not signed by its statement key
    ANNOUNCEMENT_STALE = "announcement_stale"              # rendezvous: sequence not above the entry's (a replay)
    SELF = "self"                              # our own announcement (ignored)
    STAGE_UNKNOWN = "stage_unknown"            # the claimed node id is no stage of the manifest
    ROLE_MISMATCH = "role_mismatch"            # the claimed role is not the manifest stage's role
    OWNER_NOT_ENROLLED = "owner_not_enrolled"  # no valid enrolment by the stage's owner over these keys
    ENROLMENT_NOT_NEWER = "enrolment_not_newer"   # a second node for a stage whose enrolment is not newer


class DeviceReason(StrEnum):
    """Why the agent recreated its WireGuard device (status, logs, metric label)."""

    DAEMON_EXITED = "wireguard_daemon_exited"        # our wireguard-go process is gone
    SOCKET_MISSING = "wireguard_socket_missing"      # its UAPI socket vanished
    INTERFACE_MISSING = "wireguard_interface_missing"   # the network interface vanished


# ------------------------------------------------------------------ shared values and exit codes

# Reason values that more than one vocabulary defines, with the one meaning they share there
# (tests/test_reasons.py fails on a value defined twice that is not declared here).
SHARED_REASONS: dict[str, str] = {
    "malformed": "the input (evidence, manifest, run report, receipt, bundle, sealed model) is not "
                 "structurally valid: it fails parsing before any check of what it says",
    "unsupported": "a format, version, TEE type or cipher this build does not handle",
    "signature_invalid": "a signature over the document or evidence does not verify",
    "evidence_expired": "the evidence (or its last re-attestation) is older than the allowed age",
    "nonce_mismatch": "the evidence is not for the nonce the verifier issued",
    "report_data_mismatch": "the evidence's REPORT_DATA does not bind the presented keys and context",
    "manifest_mismatch": "the document is for another deployment manifest than the pinned one",
    "owner_not_enrolled": "no valid enrolment by the stage's owner over the node's keys",
    "role_mismatch": "the node claims another role than its manifest stage's",
    "stage_unknown": "the node names no stage of the manifest",
    "model_shard_mismatch": "a stage's model shard does not match the model manifest's digests",
}

# The one table from reason to exit code for a refused document (manifest, run report, receipt,
# endpoint bundle, sealed model); a reason not listed exits VERIFICATION_FAILED. Attestation
# errors carry their exit code by exception type (the `conclave attest verify` contract).
EXIT_CODE_BY_REASON: dict[str, ExitCode] = {
    "malformed": ExitCode.MALFORMED,
    "unsupported": ExitCode.MALFORMED,         # sealed model: unknown format version or cipher
    "owner_not_pinned": ExitCode.USAGE,        # manifest: the caller gave no (or a bad) owner pin
    "seal_not_tmpfs": ExitCode.RUNTIME,        # sealed model: refusing plaintext outside memory
}


def exit_code_for(reason: str) -> ExitCode:
    """The exit code of a document refused for `reason`."""
    return EXIT_CODE_BY_REASON.get(str(reason), ExitCode.VERIFICATION_FAILED)
