"""A node owner's enrolment of its node, as functions: attest the node, sign its per-boot keys.

`conclave owner enroll` (runtime/cli/owner.py) and local mode (runtime/local/enrol.py), which
plays every owner, both call enroll_node; it lives here, below both, so neither imports the other.
"""
from __future__ import annotations

import base64
import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from conclave.runtime.errors import ConclaveError, ExitCode, UsageError
from conclave.runtime.manifest import enrolment as enrolment_mod
from conclave.runtime.manifest.document import VerifiedManifest
from conclave.runtime.reasons import OverlayReason

ATTEST_TIMEOUT = 30.0


def attest_node(target: str, *, manifest: VerifiedManifest, stage: str,
                trusted_sim_roots: Sequence[x509.Certificate] = ()):
    """Challenge the node at `target` and verify its evidence under the manifest: the evidence is
    admissible, binds the keys it presents for our nonce, and claims `stage` with its role.
    Returns the attested Announcement; raises AdmissionRejected (its reason) or ConclaveError."""
    import grpc

    from conclave.overlay import rpc
    from conclave.overlay.admission import AdmissionRejected, Verifier
    from conclave.overlay.identity import Announcement, MalformedAnnouncement
    from conclave.overlay.nonces import NonceCache
    from conclave.overlay.proto import conclave_pb2 as pb
    from conclave.overlay.proto import conclave_pb2_grpc as pb_grpc
    from conclave.overlay.reasons import OverlayReason

    policy = manifest.policy
    verifier = Verifier(policy=policy, manifest_digest=manifest.digest,
                        overlay=ipaddress.IPv4Network(manifest.overlay_cidr),
                        trusted_sim_roots=trusted_sim_roots, trusted_roots=policy.test_roots or None,
                        manifest=manifest)
    nonces = NonceCache()
    nonce = nonces.issue(stage)
    channel = rpc.channel(target)
    try:
        reply = pb_grpc.NodeStub(channel).Attest(pb.AttestRequest(nonce=nonce), timeout=ATTEST_TIMEOUT)
    except grpc.RpcError as exc:
        raise ConclaveError("node_unreachable", f"the node at {target} did not answer: {exc.code().name}") from None
    finally:
        channel.close()
    try:
        claimed = Announcement.from_proto(reply.identity)
    except MalformedAnnouncement as exc:
        raise AdmissionRejected(OverlayReason.MALFORMED_MESSAGE, f"identity: {exc}") from None
    if claimed.node_id != stage:
        raise AdmissionRejected(OverlayReason.STAGE_UNKNOWN, f"the node at {target} claims {claimed.node_id!r}, "
                                                            f"not stage {stage!r}")
    admitted = verifier.admit(challenged=claimed, reply=reply, nonces=nonces, enrolment_optional=True)
    return admitted.announcement


def enroll_node(*, owner_key: ed25519.Ed25519PrivateKey, manifest: VerifiedManifest, stage: str,
                status_socket: Path | None = None, target: str | None = None,
                trusted_sim_roots: Sequence[x509.Certificate] = (),
                validity: timedelta = enrolment_mod.DEFAULT_VALIDITY, attest: bool = True) -> tuple[bytes, dict]:
    """Attest the node (found by its status socket or its admission address), sign its attested
    keys for `stage`, and hand the enrolment over the status socket when there is one.
    attest=False: sign the keys the status socket names without attesting first; only for an
    owner that runs the node itself on the same machine (local mode plays every owner; the node's
    peers still verify its evidence binds those keys).
    Returns (enrolment bytes, the node's answer or {"ok": True} without a socket)."""
    from conclave.overlay.admission import node_keys_of
    from conclave.runtime.agent import status as agent_status

    if status_socket is not None:
        ident = agent_status.query(Path(status_socket), "identity")
        if not ident.get("ok"):
            raise ConclaveError(ident.get("reason") or "agent_unreachable", "the node did not tell its keys")
        if ident.get("node") != stage:
            raise ConclaveError(OverlayReason.STAGE_UNKNOWN,
                                f"the node at {status_socket} runs {ident.get('node')!r}, not stage {stage!r}",
                                exit_code=ExitCode.VERIFICATION_FAILED)
        target = ident["admission_target"]
    if target is None:
        raise UsageError("a status socket or the node's admission address is needed")
    if attest:
        attested = attest_node(target, manifest=manifest, stage=stage, trusted_sim_roots=trusted_sim_roots)
        if status_socket is not None and base64.b64decode(ident["wg_public_key"]) != attested.wg_public_key.raw:
            raise ConclaveError(str(OverlayReason.IDENTITY_MISMATCH),
                                "the node's status socket and its evidence name different keys",
                                exit_code=ExitCode.VERIFICATION_FAILED)
        node_keys = node_keys_of(attested)
    elif status_socket is not None:
        node_keys = enrolment_mod.NodeKeys(*(base64.b64decode(ident[k]) for k in (
            "wg_public_key", "hpke_public_key", "statement_key")))
    else:
        raise UsageError("signing without attesting needs the node's status socket")
    blob = enrolment_mod.sign_enrolment(owner_key, manifest=manifest, stage=stage,
                                        node_keys=node_keys, validity=validity)
    if status_socket is None:
        return blob, {"ok": True}
    answer = agent_status.request(Path(status_socket), {"cmd": "enroll",
                                                        "enrolment": base64.b64encode(blob).decode()})
    if not answer.get("ok"):
        raise ConclaveError(answer.get("reason") or "enrolment_refused",
                            f"the node refused its enrolment: {answer.get('error') or answer.get('reason')}",
                            exit_code=ExitCode.VERIFICATION_FAILED)
    return blob, answer
