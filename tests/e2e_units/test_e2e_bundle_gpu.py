"""Bundles carrying what admission binds: overlay-style extra fields and NVIDIA GPU evidence.

GPU evidence comes from the project's NVIDIA-shaped test CA generator (tests/data/nvgpu), signed
over binding.gpu_nonce_for(the node's REPORT_DATA), exactly as admission expects.
"""
from __future__ import annotations

import importlib.util
import json
import secrets
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from conclave.overlay.evidence import EvidenceItemData
from conclave.runtime.attestation import binding
from conclave.runtime.attestation.core import TeeType
from conclave.runtime.endpoint import verify_bundle
from conclave.runtime.endpoint.binding import head_report_data, node_report_data
from conclave.runtime.endpoint.bundle import BundleBuilder, EvidenceBlob, NodeEvidence
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.manifest import verify_bytes

from e2e_support import GOOD_MEASUREMENT, Deployment, make_manifest_bytes

TLS = secrets.token_bytes(32)
GEN_PATH = Path(__file__).resolve().parent.parent / "data" / "nvgpu" / "generate_nvgpu_vectors.py"


@pytest.fixture(scope="module")
def gpu_gen():
    if not GEN_PATH.is_file():
        pytest.fail(f"{GEN_PATH} is missing (the NVIDIA-shaped test CA generator)")
    spec = importlib.util.spec_from_file_location("e2e_nvgpu_gen", GEN_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pki = module.make_pki()
    return module, pki, module.make_device(pki, "4143000000000042")


def _der_chain(pki, device) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(Encoding.DER) for c in device.chain(pki))


@pytest.fixture(scope="module")
def gpu_setup(deployment, gpu_gen):
    """A manifest whose policy also pins GPU measurement 1, and a builder whose head and worker
    present CPU (sim) + GPU evidence, the GPU bound through gpu_nonce_for(REPORT_DATA)."""
    gen, pki, device = gpu_gen
    allowed = gen.measurement_values()[1].hex()
    policy = {"production": False, "allowed_tee": ["sim", "nvgpu"], "unsafe_allow_simulated": True,
              "sim": {"measurement": [GOOD_MEASUREMENT.hex()]}, "nvgpu": {"measurements": {"1": [allowed]}}}
    manifest = verify_bytes(make_manifest_bytes(deployment.owner_key, policy=policy),
                            trusted_owner=deployment.manifest.owner_fingerprint)
    chain = _der_chain(pki, device)

    def items_for(attester, rd, *, gpu_nonce=None):
        gpu = gen.build_evidence(device.leaf_key, nonce=gpu_nonce or binding.gpu_nonce_for(rd))
        return [EvidenceItemData(TeeType.SIM, attester.evidence(rd)),
                EvidenceItemData(TeeType.NVGPU, gpu, chain)]

    return manifest, pki, items_for


def _builder(deployment, manifest, items_for, *, worker_gpu_nonce=None, head_gpu_nonce=None):
    b = BundleBuilder(manifest=manifest, head_node="node-0", tee=None,
                      attest=lambda rd: NodeEvidence.from_items(
                          items_for(deployment.head_attester, rd, gpu_nonce=head_gpu_nonce)),
                      wg_public_key=deployment.wg["node-0"], hpke_public_key=deployment.hpke["node-0"],
                      tls_spki_sha256=TLS, report_key=deployment.report_signer.public_key,
                      statement_key=deployment.statement_key("node-0"),
                      head_enrolment=lambda: deployment.enrolment("node-0", manifest=manifest))
    extra = deployment.worker_extra()
    nonce = secrets.token_bytes(32)
    rd = node_report_data(manifest_digest=manifest.digest, wg_public_key=deployment.wg["node-1"],
                          hpke_public_key=deployment.hpke["node-1"], nonce=nonce, extra=extra)
    b.set_peer("node-1", evidence=NodeEvidence.from_items(
                   items_for(deployment.worker_attester, rd, gpu_nonce=worker_gpu_nonce)),
               wg_public_key=deployment.wg["node-1"], hpke_public_key=deployment.hpke["node-1"],
               nonce=nonce, extra=extra, enrolment=deployment.enrolment("node-1", manifest=manifest))
    return b


def _verify(bundle, manifest, nonce, roots, pki=None):
    return verify_bundle(json.dumps(bundle).encode(), manifest=manifest, tls_spki_sha256=TLS, nonce=nonce,
                         at=datetime.now(timezone.utc), trusted_roots=[roots],
                         vendor_roots=[pki.root] if pki is not None else None)


def test_cpu_and_gpu_evidence_accepted(deployment, gpu_setup):
    manifest, pki, items_for = gpu_setup
    nonce = secrets.token_bytes(32)
    bundle = _builder(deployment, manifest, items_for).build(nonce)
    assert [len(n["gpu_evidence"]) for n in bundle["nodes"]] == [1, 1]
    r = _verify(bundle, manifest, nonce, deployment.root.certificate, pki)
    assert r.ok, r.to_json()
    steps = [s["step"] for n in r.to_json()["nodes"] for s in n["steps"]]
    assert "node-1.05.gpu0" in steps and "node-0.gpu0.nvgpu.05.nonce" in steps


def test_gpu_evidence_for_another_nonce(deployment, gpu_setup):
    manifest, pki, items_for = gpu_setup
    nonce = secrets.token_bytes(32)
    bundle = _builder(deployment, manifest, items_for, worker_gpu_nonce=secrets.token_bytes(32)).build(nonce)
    r = _verify(bundle, manifest, nonce, deployment.root.certificate, pki)
    assert (r.reason, [n.ok for n in r.nodes]) == ("nonce_mismatch", [True, False])


def test_gpu_not_chaining_to_the_vendor_root(deployment, gpu_setup):
    manifest, _pki, items_for = gpu_setup
    nonce = secrets.token_bytes(32)
    bundle = _builder(deployment, manifest, items_for).build(nonce)
    r = _verify(bundle, manifest, nonce, deployment.root.certificate, None)  # embedded NVIDIA roots
    assert r.reason == "chain_untrusted"


def test_gpu_measurement_outside_policy(deployment, gpu_setup, gpu_gen):
    gen, pki, _ = gpu_gen
    _, _, items_for = gpu_setup
    policy = {"production": False, "allowed_tee": ["sim", "nvgpu"], "unsafe_allow_simulated": True,
              "sim": {"measurement": [GOOD_MEASUREMENT.hex()]},
              "nvgpu": {"measurements": {"1": ["00" * 48]}}}
    manifest = verify_bytes(make_manifest_bytes(deployment.owner_key, policy=policy),
                            trusted_owner=deployment.manifest.owner_fingerprint)
    nonce = secrets.token_bytes(32)
    r = _verify(_builder(deployment, manifest, items_for).build(nonce), manifest, nonce,
                deployment.root.certificate, pki)
    assert (r.reason, r.exit_code) == ("measurement_mismatch", 4)


def test_worker_bound_to_another_node_id(deployment):
    b = deployment.builder(TLS, include_worker=False)
    extra = Deployment.admission_extra("node-7")
    nonce_w = secrets.token_bytes(32)
    ev = deployment.worker_attester.evidence(node_report_data(
        manifest_digest=deployment.manifest.digest, wg_public_key=deployment.wg["node-1"],
        hpke_public_key=deployment.hpke["node-1"], nonce=nonce_w, extra=extra))
    b.set_peer("node-1", tee="sim", evidence=ev, wg_public_key=deployment.wg["node-1"],
               hpke_public_key=deployment.hpke["node-1"], nonce=nonce_w, extra=extra)
    nonce = secrets.token_bytes(32)
    r = verify_bundle(b.build(nonce), manifest=deployment.manifest, tls_spki_sha256=TLS, nonce=nonce,
                      at=datetime.now(timezone.utc), trusted_roots=[deployment.root.certificate])
    assert r.reason == "manifest_mismatch"


def test_extra_field_tampered(deployment):
    nonce = secrets.token_bytes(32)
    bundle = deployment.builder(TLS).build(nonce)
    bundle["nodes"][1]["report_data_inputs"]["extra"]["overlay_address"] = keys.b64(b"100.64.0.99")
    r = verify_bundle(bundle, manifest=deployment.manifest, tls_spki_sha256=TLS, nonce=nonce,
                      at=datetime.now(timezone.utc), trusted_roots=[deployment.root.certificate])
    assert r.reason == "report_data_mismatch"
    bundle = deployment.builder(TLS).build(nonce)
    del bundle["nodes"][0]["report_data_inputs"]["extra"]["report_key"]
    r = verify_bundle(bundle, manifest=deployment.manifest, tls_spki_sha256=TLS, nonce=nonce,
                      at=datetime.now(timezone.utc), trusted_roots=[deployment.root.certificate])
    assert r.reason == "report_data_mismatch"


def test_node_evidence_from_items_needs_one_cpu_item():
    gpu_only = [EvidenceItemData(TeeType.NVGPU, b"x")]
    with pytest.raises(ValueError):
        NodeEvidence.from_items(gpu_only)
    two_cpu = [EvidenceItemData(TeeType.SIM, b"a"), EvidenceItemData(TeeType.TDX, b"b")]
    with pytest.raises(ValueError):
        NodeEvidence.from_items(two_cpu)
    ne = NodeEvidence.from_items([EvidenceItemData(TeeType.SIM, b"a", (b"c",), b"coll")])
    assert ne.cpu == EvidenceBlob(b"a", (b"c",), b"coll") and ne.tee == "sim"


def test_head_report_data_helper_matches_binding(deployment):
    rd = head_report_data(manifest_digest=b"\x01" * 32, wg_public_key=b"\x02" * 32,
                          hpke_public_key=b"\x03" * 32, nonce=b"\x04" * 32,
                          tls_spki_sha256=b"\x05" * 32, report_key=b"\x06" * 32)
    assert rd == binding.report_data_for(purpose="conclave/head/v1", manifest_digest=b"\x01" * 32,
                                         wg_public_key=b"\x02" * 32, hpke_public_key=b"\x03" * 32,
                                         nonce=b"\x04" * 32,
                                         extra={"tls_spki_sha256": b"\x05" * 32, "report_key": b"\x06" * 32})
