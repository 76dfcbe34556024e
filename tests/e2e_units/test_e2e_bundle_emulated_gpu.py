"""Client verify (verify_bundle, what `conclave verify` runs) of stages with emulated H100s: the policy's
unsafe_test_roots name the emulated device root and the test RIM root, the client fetches the RIMs and
OCSP answers itself (agent.verifier.gpu_collateral_source against the emulated RIM service and
responder), so RIM validation really runs: both stages verify with rim_validated, a worker whose GPU
reports a measurement outside its RIM fails rim_mismatch, one that presents no GPU fails gpu_missing."""
from __future__ import annotations

import json
import secrets
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from conclave.overlay.evidence import EvidenceItemData
from conclave.runtime.agent.verifier import VendorServices, gpu_collateral_source
from conclave.runtime.attestation import binding
from conclave.runtime.attestation.core import TeeType
from conclave.runtime.attestation.emulated import nvgpu_device as emu
from conclave.runtime.attestation.nvgpu_requirement import GpuRequirement
from conclave.runtime.endpoint import verify_bundle
from conclave.runtime.manifest import verify_bytes

from e2e_support import GOOD_MEASUREMENT, STAGES, make_manifest_bytes
from test_e2e_bundle_gpu import TLS, _builder

H100 = GpuRequirement.from_json({"count": 1, "models": ["H100"]})


@pytest.fixture(scope="module")
def authority():
    return emu.GpuAuthority.generate()


@pytest.fixture(scope="module")
def services(authority):
    with authority.running_services() as (rims, responder):
        yield VendorServices(rim=rims.base_url, nvidia_ocsp=responder.url)


def _pem(cert) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


@pytest.fixture()
def setup(deployment, authority, tmp_path):
    policy = {"production": False, "allowed_tee": ["sim", "nvgpu"], "unsafe_allow_simulated": True,
              "sim": {"measurement": [GOOD_MEASUREMENT.hex()]}, "nvgpu": {"require_rim": True},
              "unsafe_test_roots": {"nvgpu": [_pem(authority.device_root)], "nvgpu_rim": [_pem(authority.rim_root)]}}
    stages = tuple(replace(s, gpus=H100) for s in STAGES)   # every stage asks for one H100
    manifest = verify_bytes(make_manifest_bytes(deployment.owner_key, policy=policy, stages=stages),
                            trusted_owner=deployment.manifest.owner_fingerprint)
    hosts = {}
    for i, attester in enumerate((deployment.head_attester, deployment.worker_attester)):
        hosts[id(attester)] = authority.provision(tmp_path / f"host{i}", i + 1)[0].parent

    def items_for(attester, rd, *, gpu_nonce=None):
        gpu = emu.EmulatedGpuSource(hosts[id(attester)]).collect(gpu_nonce or binding.gpu_nonce_for(rd))
        items = [EvidenceItemData(TeeType.SIM, attester.evidence(rd))]
        return items + ([EvidenceItemData(TeeType.NVGPU, gpu)] if gpu is not None else [])

    return manifest, items_for, hosts[id(deployment.worker_attester)]


def _verify(deployment, manifest, items_for, services, tmp_path):
    nonce = secrets.token_bytes(32)
    bundle = _builder(deployment, manifest, items_for).build(nonce)
    source = gpu_collateral_source(tmp_path / "client-collateral", services, manifest.policy)
    return verify_bundle(json.dumps(bundle).encode(), manifest=manifest, tls_spki_sha256=TLS, nonce=nonce,
                         at=datetime.now(timezone.utc), trusted_roots=[deployment.root.certificate],
                         collateral_for=source.collateral_for)


def test_stages_with_emulated_gpus_verify_with_rims_the_client_fetched(deployment, setup, services, tmp_path):
    manifest, items_for, _worker = setup
    r = _verify(deployment, manifest, items_for, services, tmp_path)
    assert r.ok, r.to_json()
    doc = json.dumps(r.to_json())
    assert "nvgpu.06.rim" in doc and "nvgpu.07.revocation" in doc


def test_worker_gpu_outside_its_rim_fails_rim_mismatch(deployment, setup, services, tmp_path):
    manifest, items_for, worker = setup
    emu.set_switches(worker / "gpu0", tamper_index=7)
    r = _verify(deployment, manifest, items_for, services, tmp_path)
    assert not r.ok and r.reason == "rim_mismatch", r.to_json()


def test_worker_presenting_no_gpu_fails_gpu_missing(deployment, setup, services, tmp_path):
    manifest, items_for, worker = setup
    emu.set_switches(worker / "gpu0", present=False)
    r = _verify(deployment, manifest, items_for, services, tmp_path)
    assert not r.ok and r.reason == "gpu_missing", r.to_json()
