"""The convert layer between the one wire schema (overlay/proto/conclave.proto) and the overlay's
own types: what is sent is built here, so the admission decision and the identity types never
import generated protobuf (tests/test_layering.py: the pure core reaches no I/O module).

Parsing goes the other way without this module: Announcement.from_proto and Verifier.admit read
the fields of a received message and check every one of them.
"""
from __future__ import annotations

from typing import Iterable

from conclave.overlay.identity import Announcement
from conclave.overlay.proto import conclave_pb2 as pb


def announcement_to_proto(ann: Announcement) -> pb.NodeAnnouncement:
    return pb.NodeAnnouncement(
        node_id=ann.node_id, owner=ann.owner, role=str(ann.role), underlay_host=ann.underlay_host,
        admission_port=ann.admission_port, wireguard_port=ann.wireguard_port,
        wg_public_key=ann.wg_public_key.raw, hpke_public_key=ann.hpke_public_key.raw,
        overlay_address=str(ann.overlay_address), statement_key=ann.statement_key)


def attest_reply(*, me: Announcement, nonce: bytes, items: Iterable, enrolment: bytes = b"") -> pb.AttestReply:
    """items: the evidence items a source collected (tee, data, certs, collateral)."""
    return pb.AttestReply(identity=announcement_to_proto(me), nonce=nonce, evidence=[
        pb.EvidenceItem(tee=str(i.tee), data=i.data, certs=list(i.certs), collateral=i.collateral)
        for i in items], enrolment=enrolment)
