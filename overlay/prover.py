"""The prover side of admission: answer a verifier's challenge with evidence bound to our keys.

Apart from the decision (overlay/admission.py) because it collects evidence (collect.py talks to
configfs-tsm, /dev/tdx_guest, nvattest) and builds wire messages, neither of which the pure
admission decision may reach.
"""
from __future__ import annotations

from conclave.overlay import wire
from conclave.overlay.admission import AdmissionRejected, report_data_for
from conclave.overlay.evidence import EvidenceSource
from conclave.overlay.identity import Announcement
from conclave.overlay.nonces import NONCE_LEN
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.overlay.reasons import OverlayReason


def answer_challenge(*, me: Announcement, source: EvidenceSource, manifest_digest: bytes,
                     nonce: bytes, enrolment: bytes = b"") -> pb.AttestReply:
    """Evidence over REPORT_DATA binding our keys and the verifier's nonce, with our owner's
    enrolment of those keys (empty until the owner enrolled this boot)."""
    if len(nonce) != NONCE_LEN:
        raise AdmissionRejected(OverlayReason.MALFORMED_MESSAGE, "nonce must be 32 bytes")
    rd = report_data_for(manifest_digest, me, nonce)
    return wire.attest_reply(me=me, nonce=nonce, items=source.collect(rd), enrolment=enrolment)
