"""RIMs a verifier was not handed: fetched from the (emulated) NVIDIA RIM service by the ids the
evidence names, cached, and, with OCSP responses for the device and RIM chains, gathered by
GpuCollateralSource into what attestation.verify_evidence takes (rim_roots: the test RIM root)."""
from __future__ import annotations

import base64
import importlib.util
import json
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from conclave.runtime import attestation
from conclave.runtime.attestation import nvgpu_rim
from conclave.runtime.attestation.core import Reason, TeeType
from conclave.runtime.attestation.nvgpu_collateral import NvgpuCollateral
from conclave.runtime.attestation.nvgpu_collateral_source import GpuCollateralSource, rim_ids
from conclave.runtime.attestation.nvgpu_requirement import GpuRequirement, check_gpus
from conclave.runtime.attestation.nvgpu_rim_issue import TestRimAuthority
from conclave.runtime.attestation.ocsp_emulated import EmulatedOcspResponder
from conclave.runtime.attestation.ocsp_fetch import OcspFetcher
from conclave.runtime.attestation.policy import Policy, violations
from conclave.runtime.attestation.rim_service import RimService
from conclave.runtime.attestation.rim_service_emulated import EmulatedRimService

DATA = Path(__file__).resolve().parent.parent / "data" / "nvgpu"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_nvgpu_vectors", DATA / "generate_nvgpu_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
AT = datetime.fromisoformat(GEN.VERIFY_AT)
M = GEN.measurement_values()
DRIVER_ID = "NV_GPU_DRIVER_GH100_550.90.07"
VBIOS_ID = "NV_GPU_VBIOS_1010_0200_882_96009F0001"
REQUIRE_RIM = Policy.from_dict({"production": True, "allowed_tee": ["nvgpu"], "nvgpu": {"require_rim": True}})


@pytest.fixture(scope="module")
def pki():
    return GEN.make_pki()


@pytest.fixture(scope="module")
def device(pki):
    return GEN.make_device(pki, "4143000000000001")


@pytest.fixture(scope="module")
def authority():
    return TestRimAuthority.generate(now=AT)


@pytest.fixture(scope="module")
def rims(authority):
    return {DRIVER_ID: authority.sign_rim(version="550.90.07", golden={i: M[i + 1] for i in (4, 5, 6, 7)}),
            VBIOS_ID: authority.sign_rim(version="96.00.9F.00.01", golden={i: M[i + 1] for i in (0, 1, 2, 3)})}


@pytest.fixture()
def service(rims):
    server = EmulatedRimService()
    for rim_id, xml in rims.items():
        server.add(rim_id, xml)
    with server:
        yield server


@pytest.fixture()
def responder(pki, authority):
    server = EmulatedOcspResponder(clock=lambda: AT)
    for cert, key in ((pki.root, pki.root_key), (pki.identity, pki.identity_key), (pki.ica, pki.ica_key)):
        server.add_issuer(cert, key)
    for cert, key in zip(authority.chain[1:], authority.ca_keys):
        server.add_issuer(cert, key)
    with server:
        yield server


def _evidence(pki, device) -> bytes:
    """SDK evidence list (chain inside), for the test nonce, naming its board (project SKU)."""
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in device.chain(pki))
    raw = GEN.build_evidence(device.leaf_key, project_sku=b"0200")
    return json.dumps([{"evidence": base64.b64encode(raw).decode(), "certificate": base64.b64encode(pem).decode(),
                        "arch": "HOPPER", "nonce": GEN.NONCE.hex()}]).encode()


def _verify(pki, authority, data, collateral):
    return attestation.verify_evidence(data, tee=TeeType.NVGPU, at=AT, collateral=collateral, nonce=GEN.NONCE,
                                       trusted_roots=[pki.root], rim_roots=[authority.root])


def test_rim_ids_come_from_the_evidence(pki, device):
    from conclave.runtime.attestation import nvgpu
    assert rim_ids(nvgpu.parse(_evidence(pki, device))) == [DRIVER_ID, VBIOS_ID]


def test_fetch_caches_and_serves_the_cache_while_the_service_is_down(service, rims, tmp_path):
    client = RimService(service.base_url, cache_dir=tmp_path)
    assert client.fetch(DRIVER_ID) == rims[DRIVER_ID]
    assert (tmp_path / "rims" / f"{DRIVER_ID}.swidtag").read_bytes() == rims[DRIVER_ID]
    service.set_down()
    again = RimService(service.base_url, cache_dir=tmp_path, timeout=2.0)
    assert again.fetch(DRIVER_ID) == rims[DRIVER_ID]
    assert again.fetch(VBIOS_ID) is None and VBIOS_ID in again.last_errors[0]
    assert service.requests == [f"/v1/rim/{DRIVER_ID}", f"/v1/rim/{VBIOS_ID}"]


def test_unknown_id_and_bad_ids_are_absent_with_a_reason(service):
    client = RimService(service.base_url)
    assert client.rims_for(["NV_GPU_DRIVER_GH100_1.2.3", "../etc/passwd"]) is None
    assert len(client.last_errors) == 2 and "HTTP 404" in client.last_errors[0]
    assert "not a RIM id" in client.last_errors[1]


def test_answer_whose_digest_differs_is_refused(rims):
    class Lying(EmulatedRimService):
        def respond(self, path, query):
            status, body, headers = super().respond(path, query)
            doc = json.loads(body)
            doc["sha256"] = "00" * 32
            return status, json.dumps(doc).encode(), headers

    with Lying() as server:
        server.add(DRIVER_ID, rims[DRIVER_ID])
        client = RimService(server.base_url)
        assert client.fetch(DRIVER_ID) is None and "sha256" in client.last_errors[0]


def test_node_validates_rims_it_was_not_handed(pki, device, authority, service, responder, tmp_path):
    source = GpuCollateralSource(rim_service=RimService(service.base_url, cache_dir=tmp_path),
                                 ocsp_fetcher=OcspFetcher(responder.url, clock=lambda: AT),
                                 device_roots=[pki.root], rim_roots=[authority.root])
    data = _evidence(pki, device)
    collateral = source.collateral_for(TeeType.NVGPU, data)
    assert isinstance(collateral, NvgpuCollateral) and len(collateral.rims.rims) == 2
    verified = _verify(pki, authority, data, collateral)
    assert verified.claims["rim_validated"] is True
    assert verified.revocation_checked is True and verified.claims["revocation_unchecked"] == []
    assert violations(verified, REQUIRE_RIM) == []
    assert check_gpus(GpuRequirement.from_json({"count": 1, "models": ["H100"]}), [verified]) == []
    # device chain: BROM, ICA, Identity; both RIMs share one signing chain (L4, L3, CA): asked once
    assert responder.requests == 3 + 3


def test_rim_root_is_required_for_test_rims(pki, device, service):
    source = GpuCollateralSource(rim_service=RimService(service.base_url))
    data = _evidence(pki, device)
    collateral = source.collateral_for(TeeType.NVGPU, data)
    with pytest.raises(attestation.VerificationFailed) as err:
        attestation.verify_evidence(data, tee=TeeType.NVGPU, at=AT, collateral=collateral, nonce=GEN.NONCE,
                                    trusted_roots=[pki.root])   # NVIDIA's pinned RIM root
    assert err.value.reason == Reason.RIM_INVALID


def test_without_the_vbios_rim_production_refuses(pki, device, authority, rims, responder):
    with EmulatedRimService() as partial:
        partial.add(DRIVER_ID, rims[DRIVER_ID])
        source = GpuCollateralSource(rim_service=RimService(partial.base_url),
                                     ocsp_fetcher=OcspFetcher(responder.url, clock=lambda: AT),
                                     device_roots=[pki.root], rim_roots=[authority.root])
        data = _evidence(pki, device)
        collateral = source.collateral_for(TeeType.NVGPU, data)
    with pytest.raises(attestation.VerificationFailed) as err:
        _verify(pki, authority, data, collateral)
    assert err.value.reason == Reason.RIM_MISSING and VBIOS_ID in err.value.message


def test_service_unreachable_gives_no_rims_and_require_rim_refuses(pki, device, authority, service, responder):
    service.set_down()
    source = GpuCollateralSource(rim_service=RimService(service.base_url, timeout=2.0),
                                 ocsp_fetcher=OcspFetcher(responder.url, clock=lambda: AT), device_roots=[pki.root])
    data = _evidence(pki, device)
    collateral = source.collateral_for(TeeType.NVGPU, data)
    assert collateral.rims is None and collateral.ocsp is not None
    verified = _verify(pki, authority, data, collateral)
    assert verified.claims["rim_validated"] is False and verified.revocation_checked is True
    assert [v.reason for v in violations(verified, REQUIRE_RIM)] == [Reason.RIM_MISSING]
    found = check_gpus(GpuRequirement.from_json({"count": 1}), [verified])
    assert [v.reason for v in found] == [Reason.GPU_CC_OFF]


def test_other_tees_and_garbage_get_nothing(service):
    source = GpuCollateralSource(rim_service=RimService(service.base_url))
    assert source.collateral_for(TeeType.TDX, b"\x04\x00") is None
    assert source.collateral_for(TeeType.NVGPU, b"not evidence") is None
    assert service.requests == []


def test_fetched_rims_are_nvidia_rims_not_trusted_on_arrival(pki, device, authority, rims):
    """A service (or man in the middle) answering with a RIM signed by another root: rim_invalid."""
    impostor = TestRimAuthority.generate(now=AT)
    with EmulatedRimService() as evil:
        evil.add(DRIVER_ID, impostor.sign_rim(version="550.90.07", golden={i: M[i + 1] for i in (4, 5, 6, 7)}))
        evil.add(VBIOS_ID, rims[VBIOS_ID])
        data = _evidence(pki, device)
        collateral = GpuCollateralSource(rim_service=RimService(evil.base_url)).collateral_for(TeeType.NVGPU, data)
    with pytest.raises(attestation.VerificationFailed) as err:
        _verify(pki, authority, data, collateral)
    assert err.value.reason == Reason.RIM_INVALID
    assert isinstance(collateral.rims, nvgpu_rim.RimSet)


def test_the_verifiers_collateral_cache_hands_gpu_evidence_to_the_gpu_source(pki, device, service, tmp_path):
    from conclave.runtime.attestation.collateral_cache import CollateralCache
    data = _evidence(pki, device)
    assert CollateralCache(tmp_path).collateral_for(TeeType.NVGPU, data) is None
    cache = CollateralCache(tmp_path, gpu_source=GpuCollateralSource(rim_service=RimService(service.base_url)))
    got = cache.collateral_for(TeeType.NVGPU, data)
    assert isinstance(got, NvgpuCollateral) and {r.label for r in got.rims.rims} == {DRIVER_ID, VBIOS_ID}
