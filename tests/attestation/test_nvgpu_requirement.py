"""Per-stage GPU requirements: the manifest field, the pure check, and admission refusing a node
whose attested GPUs fall short (gpu_missing / gpu_cc_off / gpu_model_not_allowed) or whose GPU
evidence answers another node's derived nonce. GPUs come from the test NVIDIA-shaped PKI in
tests/data/nvgpu (generate_nvgpu_vectors.py); CPUs are simulated."""
from __future__ import annotations

import base64
import importlib.util
import ipaddress
import json
from pathlib import Path

import pytest

from conclave.overlay.admission import AdmissionRejected, Verifier
from conclave.overlay.prover import answer_challenge
from conclave.overlay.evidence import NodeEvidenceSource
from conclave.overlay.identity import Announcement, NodeIdentity, Role
from conclave.overlay.nonces import NonceCache
from conclave.runtime.attestation import collect, nvgpu
from conclave.runtime.attestation.core import Reason, TeeType
from conclave.runtime.attestation.nvgpu_requirement import GpuRequirement, RequirementError, check_gpus
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.manifest.document import ManifestError, Stage

DATA = Path(__file__).resolve().parent.parent / "data" / "nvgpu"
GOOD = bytes.fromhex("ab" * 48)
NET = ipaddress.IPv4Network("100.64.0.0/16")
DIGEST = b"\x42" * 32


def _generator():
    spec = importlib.util.spec_from_file_location("generate_nvgpu_vectors", DATA / "generate_nvgpu_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
POLICY = Policy.from_dict({"production": False, "allowed_tee": ["sim", "nvgpu"], "unsafe_allow_simulated": True,
                           "sim": {"measurement": [GOOD.hex()]},
                           "nvgpu": {"measurements": {"1": [GEN.measurement_values()[1].hex()]}}})


@pytest.fixture(scope="module")
def pki():
    return GEN.make_pki()


@pytest.fixture(scope="module")
def device(pki):
    return GEN.make_device(pki, "4143000000000001")


class TestGpuSource:
    """A GPU that signs SPDM evidence for whatever nonce it is asked (SDK JSON, chain inside)."""

    __test__ = False
    tee = TeeType.NVGPU

    def __init__(self, pki, device, *, fixed_nonce: bytes | None = None):
        self.pki, self.device, self.fixed_nonce = pki, device, fixed_nonce

    def collect(self, nonce: bytes) -> bytes:
        nonce = self.fixed_nonce or nonce
        pem = b"".join(_pem(c) for c in self.device.chain(self.pki))
        return json.dumps([{"evidence": base64.b64encode(GEN.build_evidence(self.device.leaf_key, nonce=nonce)).decode(),
                            "certificate": base64.b64encode(pem).decode(), "arch": "HOPPER",
                            "nonce": nonce.hex()}]).encode()


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding
    return cert.public_bytes(Encoding.PEM)


@pytest.fixture(scope="module")
def root():
    return SimulatedRoot.generate()


def make_node(root, name, gpus=()):
    ident = NodeIdentity.generate()
    ann = Announcement(node_id=name, owner="o", role=Role.WORKER, underlay_host="198.19.0.7",
                       admission_port=51821, wireguard_port=51820, wg_public_key=ident.wg_public,
                       hpke_public_key=ident.hpke_public, overlay_address=ipaddress.IPv4Address("100.64.0.7"))
    src = NodeEvidenceSource(collect.SimulatedSource(root.issue_attester(name, measurement=GOOD)), gpus)
    return ann, src


def verifier(root, pki, requirement):
    return Verifier(policy=POLICY, manifest_digest=DIGEST, overlay=NET, trusted_sim_roots=[root.certificate],
                    gpu_roots=[pki.root], gpu_requirement_for=lambda node: requirement)


def admit(v, ann, src, nonces=None):
    nonces = nonces or NonceCache()
    nonce = nonces.issue(ann.node_id)
    reply = answer_challenge(me=ann, source=src, manifest_digest=DIGEST, nonce=nonce)
    return v.admit(challenged=ann, reply=reply, nonces=nonces)


def rejected(fn) -> AdmissionRejected:
    with pytest.raises(AdmissionRejected) as err:
        fn()
    return err.value


NO_RIM = GpuRequirement(count=1, models=("H100", "H200"), cc_mode=False)


# --- admission -------------------------------------------------------------------------------

def test_node_with_its_bound_gpu_is_admitted(root, pki, device):
    ann, src = make_node(root, "gpu-1", [TestGpuSource(pki, device)])
    assert admit(verifier(root, pki, NO_RIM), ann, src).announcement.node_id == "gpu-1"


def test_stage_without_a_gpu_requirement_admits_a_node_without_gpus(root, pki):
    ann, src = make_node(root, "cpu-1")
    assert admit(verifier(root, pki, None), ann, src).announcement.node_id == "cpu-1"


def test_node_without_gpus_is_gpu_missing(root, pki):
    ann, src = make_node(root, "cpu-2")
    assert rejected(lambda: admit(verifier(root, pki, NO_RIM), ann, src)).reason == "gpu_missing"


def test_too_few_gpus_is_gpu_missing(root, pki, device):
    ann, src = make_node(root, "gpu-2", [TestGpuSource(pki, device)])
    need_two = GpuRequirement(count=2, cc_mode=False)
    assert rejected(lambda: admit(verifier(root, pki, need_two), ann, src)).reason == "gpu_missing"


def test_gpu_model_not_allowed(root, pki, device):
    ann, src = make_node(root, "gpu-3", [TestGpuSource(pki, device)])
    blackwell = GpuRequirement(count=1, models=("B200",), cc_mode=False)
    err = rejected(lambda: admit(verifier(root, pki, blackwell), ann, src))
    assert err.reason == "gpu_model_not_allowed"


def test_gpu_without_rim_validation_is_gpu_cc_off(root, pki, device):
    ann, src = make_node(root, "gpu-4", [TestGpuSource(pki, device)])
    err = rejected(lambda: admit(verifier(root, pki, GpuRequirement(count=1)), ann, src))
    assert err.reason == "gpu_cc_off"


def test_gpu_evidence_replayed_with_another_nodes_nonce_is_refused(root, pki, device):
    """Node B presents GPU evidence that answered node A's derived GPU nonce."""
    from conclave.overlay.admission import report_data_for
    from conclave.runtime.attestation import binding
    ann_a, _ = make_node(root, "gpu-a")
    nonces = NonceCache()
    a_nonce = binding.gpu_nonce_for(report_data_for(DIGEST, ann_a, nonces.issue("gpu-a")))
    ann_b, src_b = make_node(root, "gpu-b", [TestGpuSource(pki, device, fixed_nonce=a_nonce)])
    err = rejected(lambda: admit(verifier(root, pki, NO_RIM), ann_b, src_b, nonces))
    assert err.reason == "nonce_mismatch"


# --- the pure check and the manifest field ---------------------------------------------------

def _verified_gpu(pki, device, *, ppcie: bool | None = None):
    evidence = TestGpuSource(pki, device).collect(b"\x07" * 32)
    from datetime import datetime, timezone
    return nvgpu.verify(nvgpu.parse(evidence), at=datetime(2026, 6, 1, tzinfo=timezone.utc), trusted_roots=[pki.root])


def test_check_gpus_collects_every_violation(pki, device):
    gpu = _verified_gpu(pki, device)
    found = check_gpus(GpuRequirement(count=2, models=("B200",), ppcie=True), [gpu])
    assert [str(v.reason) for v in found] == ["gpu_missing", "gpu_model_not_allowed", "gpu_cc_off", "gpu_cc_off"]
    assert check_gpus(None, []) == []


@pytest.mark.parametrize("bad", [
    {}, {"count": 0}, {"count": 9}, {"count": True}, {"count": 1, "models": []}, {"count": 1, "models": ["X1"]},
    {"count": 1, "cc_mode": "yes"}, {"count": 1, "extra": 1},
])
def test_bad_requirements_are_refused(bad):
    with pytest.raises(RequirementError):
        GpuRequirement.from_json(bad)


def test_manifest_stage_carries_gpus():
    stage = Stage.from_json({"node": "n-1", "owner": "o", "role": "worker", "layers": [0, 4],
                             "gpus": {"count": 2, "models": ["h100"], "ppcie": True}})
    assert stage.gpus == GpuRequirement(count=2, models=("H100",), cc_mode=True, ppcie=True)
    assert Stage.from_json(stage.to_json(), 0) == stage
    plain = Stage.from_json({"node": "n-1", "owner": "o", "role": "worker", "layers": [0, 4]})
    assert plain.gpus is None and "gpus" not in plain.to_json()
    with pytest.raises(ManifestError) as err:
        Stage.from_json({"node": "n-1", "owner": "o", "role": "worker", "layers": [0, 4], "gpus": {"count": 0}})
    assert err.value.reason == "malformed"
