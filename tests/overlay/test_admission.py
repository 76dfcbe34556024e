"""Admission decisions with simulated evidence: every rejection has its own reason."""
from __future__ import annotations

import dataclasses
import ipaddress
import secrets

import pytest

from conclave.overlay import wire
from conclave.overlay.admission import AdmissionRejected, Verifier
from conclave.overlay.prover import answer_challenge
from conclave.overlay.evidence import SimEvidenceSource
from conclave.overlay.identity import Announcement, NodeIdentity, Role
from conclave.overlay.keys import WgPrivateKey
from conclave.overlay.nonces import NonceCache
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.attestation.sim import SimulatedRoot

GOOD = bytes.fromhex("ab" * 48)
NET = ipaddress.IPv4Network("100.64.0.0/16")
DIGEST = b"\x42" * 32
SIM_POLICY = Policy.from_dict({"production": False, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
                               "sim": {"measurement": [GOOD.hex()]}})
PROD_POLICY = Policy.from_dict({"production": True, "allowed_tee": ["tdx"], "tdx": {"mr_td": ["00" * 48], "xfam": ["00" * 8]}})


@pytest.fixture(scope="module")
def root():
    return SimulatedRoot.generate()


def make_node(root, name="peer-1", *, measurement=GOOD, debug=False, address="100.64.0.7", attester_root=None):
    ident = NodeIdentity.generate()
    ann = Announcement(node_id=name, owner="o", role=Role.WORKER, underlay_host="198.19.0.7",
                       admission_port=51821, wireguard_port=51820, wg_public_key=ident.wg_public,
                       hpke_public_key=ident.hpke_public, overlay_address=ipaddress.IPv4Address(address))
    src = SimEvidenceSource((attester_root or root).issue_attester(name, measurement=measurement, debug=debug))
    return ann, src


def verifier(root, policy=SIM_POLICY):
    return Verifier(policy=policy, manifest_digest=DIGEST, overlay=NET, trusted_sim_roots=[root.certificate])


def challenge(ann, src, nonces, *, digest=DIGEST, bound=None):
    nonce = nonces.issue(ann.node_id)
    reply = answer_challenge(me=bound or ann, source=src, manifest_digest=digest, nonce=nonce)
    if bound is not None:
        reply.identity.CopyFrom(wire.announcement_to_proto(ann))
    return reply


def rejected(fn) -> AdmissionRejected:
    with pytest.raises(AdmissionRejected) as err:
        fn()
    return err.value


def test_good_peer_is_admitted(root):
    ann, src = make_node(root)
    nonces = NonceCache()
    peer = verifier(root).admit(challenged=ann, reply=challenge(ann, src, nonces), nonces=nonces)
    assert peer.announcement.same_identity(ann) and peer.simulated and str(peer.tee) == "sim"


def test_evidence_bound_to_another_key(root):
    ann, src = make_node(root)
    other = dataclasses.replace(ann, wg_public_key=WgPrivateKey.generate().public_key())
    nonces = NonceCache()
    err = rejected(lambda: verifier(root).admit(challenged=ann, reply=challenge(ann, src, nonces, bound=other),
                                                nonces=nonces))
    assert err.reason == "report_data_mismatch"


def test_replayed_nonce(root):
    ann, src = make_node(root)
    nonces = NonceCache()
    reply = challenge(ann, src, nonces)
    v = verifier(root)
    v.admit(challenged=ann, reply=reply, nonces=nonces)
    assert rejected(lambda: v.admit(challenged=ann, reply=reply, nonces=nonces)).reason == "nonce_replayed"


def test_nonce_we_never_issued(root):
    ann, src = make_node(root)
    reply = answer_challenge(me=ann, source=src, manifest_digest=DIGEST, nonce=secrets.token_bytes(32))
    assert rejected(lambda: verifier(root).admit(challenged=ann, reply=reply, nonces=NonceCache())).reason \
        == "nonce_unknown"


def test_wrong_measurement_lists_every_violation(root):
    ann, src = make_node(root, measurement=b"\xcd" * 48, debug=True)
    nonces = NonceCache()
    err = rejected(lambda: verifier(root).admit(challenged=ann, reply=challenge(ann, src, nonces), nonces=nonces))
    assert set(err.reasons) == {"measurement_mismatch", "debug_enabled"}


def test_debug_guest(root):
    ann, src = make_node(root, debug=True)
    nonces = NonceCache()
    err = rejected(lambda: verifier(root).admit(challenged=ann, reply=challenge(ann, src, nonces), nonces=nonces))
    assert err.reason == "debug_enabled"


def test_simulated_evidence_under_production_policy(root):
    ann, src = make_node(root)
    nonces = NonceCache()
    err = rejected(lambda: verifier(root, PROD_POLICY).admit(challenged=ann, reply=challenge(ann, src, nonces),
                                                             nonces=nonces))
    assert err.reason == "simulated_not_allowed"


def test_attester_from_an_untrusted_root(root):
    ann, src = make_node(root, attester_root=SimulatedRoot.generate("rogue-root"))
    nonces = NonceCache()
    err = rejected(lambda: verifier(root).admit(challenged=ann, reply=challenge(ann, src, nonces), nonces=nonces))
    assert err.reason == "chain_untrusted"


def test_other_manifest_digest(root):
    ann, src = make_node(root)
    nonces = NonceCache()
    err = rejected(lambda: verifier(root).admit(challenged=ann, reply=challenge(ann, src, nonces, digest=b"\x43" * 32),
                                                nonces=nonces))
    assert err.reason == "report_data_mismatch"


def test_identity_differs_from_the_challenged_announcement(root):
    ann, src = make_node(root)
    rendezvous_claim = dataclasses.replace(ann, hpke_public_key=NodeIdentity.generate().hpke_public)
    nonces = NonceCache()
    reply = challenge(ann, src, nonces)
    assert rejected(lambda: verifier(root).admit(challenged=rendezvous_claim, reply=reply, nonces=nonces)).reason \
        == "identity_mismatch"


def test_overlay_address_outside_cidr(root):
    ann, src = make_node(root, address="10.9.9.9")
    nonces = NonceCache()
    err = rejected(lambda: verifier(root).admit(challenged=ann, reply=challenge(ann, src, nonces), nonces=nonces))
    assert err.reason == "overlay_address_out_of_range"


@pytest.mark.parametrize("mutate", [
    lambda r: r.identity.ClearField("wg_public_key"),
    lambda r: setattr(r.identity, "hpke_public_key", b"\x00" * 5),
    lambda r: setattr(r.identity, "role", "admin"),
    lambda r: setattr(r.identity, "node_id", "bad name with spaces"),
    lambda r: r.ClearField("evidence"),
    lambda r: r.evidence.extend([r.evidence[0]] * 9),
    lambda r: setattr(r.evidence[0], "tee", "quantum"),
    lambda r: r.evidence[0].certs.append(b"not der"),
    lambda r: setattr(r.evidence[0], "data", b"\x00" * (300 * 1024)),
])
def test_malformed_replies(root, mutate):
    ann, src = make_node(root)
    nonces = NonceCache()
    reply = challenge(ann, src, nonces)
    mutate(reply)
    err = rejected(lambda: verifier(root).admit(challenged=ann, reply=reply, nonces=nonces))
    assert err.reason == "malformed_message"


def test_garbage_evidence_is_malformed_not_a_crash(root):
    ann, src = make_node(root)
    nonces = NonceCache()
    reply = challenge(ann, src, nonces)
    reply.evidence[0].data = b"{not json"
    assert rejected(lambda: verifier(root).admit(challenged=ann, reply=reply, nonces=nonces)).reason == "malformed"


def test_wire_round_trip_of_announcement(root):
    ann, _ = make_node(root)
    assert Announcement.from_proto(pb.NodeAnnouncement.FromString(wire.announcement_to_proto(ann).SerializeToString())) == ann


class FakeGpu:
    """Stands in for nvattest: records the nonce it was asked to bind."""
    tee = __import__("conclave.runtime.attestation.core", fromlist=["TeeType"]).TeeType.NVGPU

    def __init__(self):
        self.nonces = []

    def collect(self, nonce: bytes) -> bytes:
        self.nonces.append(nonce)
        return b'[{"evidence": "fake"}]'


def test_gpu_evidence_is_bound_to_the_same_challenge_and_checked(root):
    from conclave.overlay.evidence import NodeEvidenceSource
    from conclave.runtime.attestation import binding, collect
    ann, _ = make_node(root)
    gpu = FakeGpu()
    src = NodeEvidenceSource(collect.SimulatedSource(root.issue_attester(ann.node_id, measurement=GOOD)), [gpu])
    nonces = NonceCache()
    reply = challenge(ann, src, nonces)
    assert [i.tee for i in reply.evidence] == ["sim", "nvgpu"]
    rd = binding.report_data_for(purpose=binding.PURPOSE_NODE, manifest_digest=DIGEST,
                                 wg_public_key=ann.wg_public_key.raw, hpke_public_key=ann.hpke_public_key.raw,
                                 nonce=bytes(reply.nonce), extra=ann.binding_extra())
    assert gpu.nonces == [binding.gpu_nonce_for(rd)]
    # this policy allows no GPUs: the GPU item is refused, not ignored
    err = rejected(lambda: verifier(root).admit(challenged=ann, reply=reply, nonces=nonces))
    assert err.reason == "tee_not_allowed"
