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


class Reason(StrEnum):
    """Attestation."""
    MALFORMED = "malformed"
    UNSUPPORTED = "unsupported"
    SIGNATURE_INVALID = "signature_invalid"
    CHAIN_UNTRUSTED = "chain_untrusted"
    CERT_EXPIRED = "cert_expired"
    CERT_REVOKED = "cert_revoked"
    CERTS_MISSING = "certs_missing"
    COLLATERAL_MISSING = "collateral_missing"
    COLLATERAL_EXPIRED = "collateral_expired"
    COLLATERAL_INVALID = "collateral_invalid"
    QE_REPORT_DATA_MISMATCH = "qe_report_data_mismatch"
    QE_IDENTITY_MISMATCH = "qe_identity_mismatch"
    TCB_NOT_FOUND = "tcb_not_found"
    TCB_MISMATCH = "tcb_mismatch"
    CHIP_ID_MISMATCH = "chip_id_mismatch"
    TCB_REVOKED = "tcb_revoked"
    TCB_NOT_ALLOWED = "tcb_not_allowed"
    TEE_NOT_ALLOWED = "tee_not_allowed"
    MEASUREMENT_MISMATCH = "measurement_mismatch"
    SVN_TOO_LOW = "svn_too_low"
    DEBUG_ENABLED = "debug_enabled"
    REPORT_DATA_MISMATCH = "report_data_mismatch"
    NONCE_MISMATCH = "nonce_mismatch"
    SIMULATED_NOT_ALLOWED = "simulated_not_allowed"
    POLICY_EMPTY = "policy_empty"
    POLICY_INVALID = "policy_invalid"
    EVIDENCE_EXPIRED = "evidence_expired"
    SIMULATED_MARKER_MISSING = "simulated_marker_missing"
    VMPL_NOT_ALLOWED = "vmpl_not_allowed"
    QE_VENDOR_UNKNOWN = "qe_vendor_unknown"
    MIGRATION_ALLOWED = "migration_allowed"
    SEPT_VE_ENABLED = "sept_ve_enabled"
    SERVICETD_NOT_ALLOWED = "servicetd_not_allowed"
    ADVISORY_DENIED = "advisory_denied"
    # NVIDIA RIMs (nvgpu_rim): a golden value differs / a RIM's signature or chain fails /
    # no given RIM matches the evidence's driver or VBIOS version
    RIM_MISMATCH = "rim_mismatch"
    RIM_INVALID = "rim_invalid"
    RIM_MISSING = "rim_missing"
    # per-stage GPU requirements (nvgpu_requirement): too few attested GPUs / CC (or protected
    # PCIe) mode not proven / a GPU model the stage does not allow
    GPU_MISSING = "gpu_missing"
    GPU_CC_OFF = "gpu_cc_off"
    GPU_MODEL_NOT_ALLOWED = "gpu_model_not_allowed"
    REVOCATION_UNCHECKED = "revocation_unchecked"


class LifecycleReason(StrEnum):
    """Why a node (or the head for the whole pipeline) is not serving."""
    MODEL_SHARD_MISMATCH = "model_shard_mismatch"   # the shard does not match the model manifest
    SHARD_UNAVAILABLE = "shard_unavailable"         # the shard (or its key) could not be obtained
    STAGE_NOT_MESHED = "stage_not_meshed"           # a manifest stage is not admitted and meshed
    STAGE_SHARD_UNVERIFIED = "stage_shard_unverified"   # no signed statement that its shard verified
    STAGE_RAY_NOT_JOINED = "stage_ray_not_joined"   # its Ray node is not (yet) in this head's Ray cluster
    RAY_NODE_LOST = "ray_node_lost"                 # our own Ray node exited
    ENGINE_EXITED = "engine_exited"                 # the vLLM server exited
    ENGINE_STARTING = "engine_starting"
    HEAD_NOT_MESHED = "head_not_meshed"             # worker: the manifest's head is not meshed with us
    SECRET_MISSING = "secret_missing"               # worker: the Ray token was not released yet


class ManifestReason(StrEnum):
    """Manifest."""
    MALFORMED = "malformed"
    SIGNATURE_INVALID = "signature_invalid"
    OWNER_KEY_MISMATCH = "owner_key_mismatch"
    OWNER_NOT_PINNED = "owner_not_pinned"


class ReportReason(StrEnum):
    """Run report."""
    MALFORMED = "malformed"
    SIGNATURE_INVALID = "signature_invalid"
    REPORT_KEY_MISMATCH = "report_key_mismatch"
    MANIFEST_MISMATCH = "manifest_mismatch"
    OWNER_NOT_ENROLLED = "owner_not_enrolled"   # a stage's owner proof is missing or does not hold


class SealReason(StrEnum):
    """Sealed model."""
    MALFORMED = "malformed"              # not a sealed file/folder, bad magic, bad index structure
    UNSUPPORTED = "unsupported"          # unknown format version or cipher
    WRONG_KEY = "seal_wrong_key"         # the key's id differs from the one the folder was sealed with
    AUTH_FAILED = "seal_auth_failed"     # a chunk did not authenticate: bit flip, reorder, swap, header edit
    TRUNCATED = "seal_truncated"         # the file ends before its final chunk
    TRAILING_DATA = "seal_trailing_data" # bytes after the final chunk
    INDEX_INVALID = "seal_index_invalid" # index MAC does not check (edited listing, renamed files)
    FILE_MISMATCH = "seal_file_mismatch" # a blob's header names another file than the index says
    FILE_MISSING = "seal_file_missing"   # a blob listed in the index is absent
    NOT_TMPFS = "seal_not_tmpfs"         # refusing to write plaintext weights outside memory


class BrokerReason(StrEnum):
    """Key broker."""
    STAGE_UNKNOWN = "stage_unknown"
    ROLE_MISMATCH = "role_mismatch"
    NOT_CHALLENGED = "not_challenged"
    RATE_LIMITED = "rate_limited"


class EndpointReason(StrEnum):
    """Client endpoint verification."""
    MALFORMED = "malformed"
    MANIFEST_MISMATCH = "manifest_mismatch"
    NONCE_MISMATCH = "nonce_mismatch"
    TLS_KEY_MISMATCH = "tls_key_mismatch"
    REPORT_DATA_MISMATCH = "report_data_mismatch"
    NODE_MISSING = "node_missing"
    EVIDENCE_EXPIRED = str(Reason.EVIDENCE_EXPIRED)
    UNREACHABLE = "endpoint_unreachable"
    # a stage's owner is not proven (step <node>.07.enrolment; same strings as admission's)
    STAGE_UNKNOWN = str(OverlayReason.STAGE_UNKNOWN)            # the entry names no stage of the manifest
    ROLE_MISMATCH = str(OverlayReason.ROLE_MISMATCH)            # its role is not the stage's
    OWNER_NOT_ENROLLED = str(OverlayReason.OWNER_NOT_ENROLLED)  # no valid enrolment by the stage's owner over its bound keys
    # per-response receipts (endpoint/receipt.py)
    RECEIPT_MISSING = "receipt_missing"                      # a completion came without a receipt
    RECEIPT_SIGNATURE_INVALID = "receipt_signature_invalid"  # the receipt's own signature fails
    RECEIPT_REQUEST_MISMATCH = "receipt_request_mismatch"    # the request body is not the one signed
    RECEIPT_RESPONSE_MISMATCH = "receipt_response_mismatch"  # the response body is not the one signed
    RECEIPT_REPORT_MISMATCH = "receipt_report_mismatch"      # the run report changed / is not the one named
    RECEIPT_FOREIGN_CLUSTER = "receipt_foreign_cluster"      # report/receipt of another manifest or head
    RECEIPT_KEY_NOT_ATTESTED = "receipt_key_not_attested"    # signed by a key the head's evidence does not bind


class ModelReason(StrEnum):
    """Model and shards."""
    SHARD_MISMATCH = "model_shard_mismatch"            # a stage's shard is not what the model manifest says
    SHARD_SOURCE_INVALID = "model_shard_source_invalid"  # not a path or an http(s) URL, or nothing there
    SHARD_FETCH_FAILED = "model_shard_fetch_failed"    # download failed (HTTP error, timeout, short body)
    SHARD_TOO_LARGE = "model_shard_too_large"          # the shard exceeds the download size cap
    SHARD_LAYOUT_INVALID = "model_shard_layout_invalid"  # stages.json malformed or inconsistent
    NOT_IMPORTED = "model_not_imported"                # sealing needs the folder's model manifest
    SHARD_DEST_NOT_EMPTY = "model_shard_dest_not_empty"  # a shard is unsealed only into a new/empty folder
    SHARD_OUTPUT_INVALID = "model_shard_output_invalid"  # seal output not empty, or inside the model folder


class UsageReason(StrEnum):
    """A command line, option or input file the caller gave is not usable (exit 1, usage)."""
    USAGE = "usage"
    BAD_API_KEY = "bad_api_key"
    BAD_DTYPE = "bad_dtype"
    BAD_ENGINE_ARGS = "bad_engine_args"
    BAD_GPUS = "bad_gpus"
    BAD_KEY_OPTION = "bad_key_option"
    BAD_LAYER_RANGE = "bad_layer_range"
    BAD_MODEL_FOLDER = "bad_model_folder"
    BAD_MODEL_NAME = "bad_model_name"
    BAD_MODEL_SOURCE = "bad_model_source"
    BAD_NODES = "bad_nodes"
    BAD_PARTITION = "bad_partition"
    BAD_PORT = "bad_port"
    BAD_REATTEST_INTERVAL = "bad_reattest_interval"
    BAD_STAGES = "bad_stages"
    BAD_UNDERLAY_CIDR = "bad_underlay_cidr"
    HOST_INVALID = "host_invalid"
    INTERFACE_INVALID = "interface_invalid"
    LIVENESS_INVALID = "liveness_invalid"
    MANIFEST_DIGEST_INVALID = "manifest_digest_invalid"
    MANIFEST_REQUIRED = "manifest_required"
    METRICS_HOST_INVALID = "metrics_host_invalid"
    NODE_NAME_INVALID = "node_name_invalid"
    OVERLAY_INVALID = "overlay_invalid"
    OWNER_INVALID = "owner_invalid"
    PORT_INVALID = "port_invalid"
    TTL_INVALID = "ttl_invalid"
    VALIDITY_INVALID = "validity_invalid"
    VENDOR_URL_INVALID = "vendor_url_invalid"
    VERIFY_LOCAL_CONFLICT = "verify_local_conflict"
    VERIFY_TARGET_MISSING = "verify_target_missing"
    NOT_LOCAL = "not_local"
    MODEL_SOURCE_INVALID = "model_source_invalid"
    FRONT_INVALID = "front_invalid"
    GPU_DEVICE_INVALID = "gpu_device_invalid"
    SIM_ROOT_INVALID = "sim_root_invalid"
    UNREADABLE_FILE = "unreadable_file"
    ATTESTER_MISSING = "attester_missing"
    BUNDLE_INVALID = "bundle_invalid"
    BUNDLE_PERMISSIONS = "bundle_permissions"
    KEY_EXISTS = "key_exists"
    KEY_INVALID = "key_invalid"
    KEY_MISSING = "key_missing"
    KEY_PERMISSIONS = "key_permissions"


class HostReason(StrEnum):
    """What this host lacks or refuses: tools, privileges, devices, ports."""
    NOT_ROOT = "not_root"
    NO_IPROUTE2 = "no_iproute2"
    NO_NETNS = "no_netns"
    COMMAND_FAILED = "command_failed"
    NO_KERNEL_WIREGUARD = "no_kernel_wireguard"
    NO_WIREGUARD = "no_wireguard"
    NO_WIREGUARD_TOOLS = "no_wireguard_tools"
    WG_FAILED = "wg_failed"
    WIREGUARD_GO_FAILED = "wireguard_go_failed"
    IP_FAILED = "ip_failed"
    INTERFACE_IN_USE = "interface_in_use"
    NFT_FAILED = "nft_failed"
    NFT_UNAVAILABLE = "nft_unavailable"
    PORT_IN_USE = "port_in_use"
    METRICS_BIND_FAILED = "metrics_bind_failed"
    METRICS_BIND_REFUSED = "metrics_bind_refused"
    INNER_NETNS_FAILED = "inner_netns_failed"
    DEPENDENCY_MISSING = "dependency_missing"
    TOOL_MISSING = "tool_missing"
    TEE_UNAVAILABLE = "tee_unavailable"
    COLLECTION_CONFLICT = "collection_conflict"
    BENCH_DEPENDENCY_MISSING = "bench_dependency_missing"
    BENCH_UNAVAILABLE = "bench_unavailable"


class ModelStoreReason(StrEnum):
    """The local model store, model manifests and measured images (import, convert, measure)."""
    MODEL_EXISTS = "model_exists"
    MODEL_MALFORMED = "model_malformed"
    MODEL_MANIFEST_INCOMPLETE = "model_manifest_incomplete"
    MODEL_MANIFEST_INVALID = "model_manifest_invalid"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_SOURCE_MISSING = "model_source_missing"
    REGISTRY_MALFORMED = "registry_malformed"
    MANIFEST_DIGEST_MISMATCH = "manifest_digest_mismatch"
    MANIFEST_MALFORMED = "manifest_malformed"
    MODEL_CHANGED = "model_changed"
    MODEL_DIGEST_MISMATCH = "model_digest_mismatch"
    EVENT_LOG_MALFORMED = "event_log_malformed"
    FIRMWARE_MALFORMED = "firmware_malformed"


class ClusterReason(StrEnum):
    """A cluster, node or service that did not come up or answer (local mode and the node runtime)."""
    AGENT_FAILED = "agent_failed"
    AGENT_UNREACHABLE = "agent_unreachable"
    CLUSTER_NOT_ATTESTED = "cluster_not_attested"
    CLUSTER_NOT_READY = "cluster_not_ready"
    CLUSTER_RUNNING = "cluster_running"
    CONTEXT_MISSING = "context_missing"
    EMULATOR_FAILED = "emulator_failed"
    EMULATOR_HOST_MISSING = "emulator_host_missing"
    ENGINE_FAILED = "engine_failed"
    ENGINE_TIMEOUT = "engine_timeout"
    FRONT_TIMEOUT = "front_timeout"
    INTERRUPTED = "interrupted"
    MESH_TIMEOUT = "mesh_timeout"
    NO_CLUSTER = "no_cluster"
    RAY_FAILED = "ray_failed"
    RAY_TIMEOUT = "ray_timeout"
    STALE_CLUSTER = "stale_cluster"
    STATE_MALFORMED = "state_malformed"
    TEARDOWN_INCOMPLETE = "teardown_incomplete"
    TOKEN_NOT_RELEASED = "token_not_released"
    UNDERLAY_EXHAUSTED = "underlay_exhausted"
    NODE_UNREACHABLE = "node_unreachable"
    SELF_ATTESTATION_FAILED = "self_attestation_failed"
    BROKER_UNREACHABLE = "broker_unreachable"
    BROKER_KEY_MISMATCH = "broker_key_mismatch"
    RECEIPT_KEY_UNKNOWN = "receipt_key_unknown"


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
