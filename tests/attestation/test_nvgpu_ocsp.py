"""GPU revocation: NVIDIA-shaped device and RIM chains checked by OCSP against an emulated
responder (signing with the test hierarchies' CA keys), fetched and cached by ocsp_fetch, judged
by ocsp.check_path inside nvgpu.verify (step nvgpu.07.revocation), and the production rule
(revocation_unchecked) applied by the policy."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from conclave.runtime.attestation import nvgpu, nvgpu_rim, ocsp
from conclave.runtime.attestation.core import Reason, VerificationFailed
from conclave.runtime.attestation.nvgpu_collateral import NvgpuCollateral
from conclave.runtime.attestation.nvgpu_rim_issue import TestRimAuthority
from conclave.runtime.attestation.ocsp_emulated import EmulatedOcspResponder, responder_certificate
from conclave.runtime.attestation.ocsp_fetch import OcspFetcher
from conclave.runtime.attestation.policy import Policy, violations

DATA = Path(__file__).resolve().parent.parent / "data" / "nvgpu"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_nvgpu_vectors", DATA / "generate_nvgpu_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
AT = datetime.fromisoformat(GEN.VERIFY_AT)
MEASUREMENTS = GEN.measurement_values()
PRODUCTION = Policy.from_dict({"production": True, "allowed_tee": ["nvgpu"],
                               "nvgpu": {"measurements": {"1": [MEASUREMENTS[1].hex()]}}})


@pytest.fixture(scope="module")
def pki():
    return GEN.make_pki()


@pytest.fixture(scope="module")
def device(pki):
    return GEN.make_device(pki, "4143000000000001")


@pytest.fixture(scope="module")
def authority():
    return TestRimAuthority.generate(now=AT)


@pytest.fixture()
def responder(pki, device, authority):
    """Answers for the device chain (ICA, Identity and root as issuers) and the RIM chain."""
    server = EmulatedOcspResponder(clock=lambda: AT)
    server.add_issuer(pki.root, pki.root_key)
    server.add_issuer(pki.identity, pki.identity_key)
    server.add_issuer(pki.ica, pki.ica_key)
    for cert, key in zip(authority.chain[1:], authority.ca_keys):
        server.add_issuer(cert, key)
    with server:
        yield server


def _parsed(device) -> nvgpu.ParsedNvgpu:
    return nvgpu.parse(GEN.build_evidence(device.leaf_key))


def _rims(authority) -> nvgpu_rim.RimSet:
    driver = authority.sign_rim(version="550.90.07", golden={i: MEASUREMENTS[i + 1] for i in (4, 5, 6, 7)})
    vbios = authority.sign_rim(version="96.00.9F.00.01", golden={i: MEASUREMENTS[i + 1] for i in (0, 1, 2, 3)})
    return nvgpu_rim.RimSet((nvgpu_rim.parse_rim(driver, "driver"), nvgpu_rim.parse_rim(vbios, "vbios")))


def _device_pairs(pki, device):
    chain = device.chain(pki)
    return ocsp.pairs_to_check(chain, skip_leaf=True)


def _verify(pki, device, collateral, **kw):
    return nvgpu.verify(_parsed(device), at=kw.pop("at", AT), certs=device.chain(pki), trusted_roots=[pki.root],
                        collateral=collateral, **kw)


def test_good_chain_is_revocation_checked(pki, device, responder):
    responses = OcspFetcher(responder.url, clock=lambda: AT).responses_for(_device_pairs(pki, device))
    verified = _verify(pki, device, NvgpuCollateral(ocsp=responses))
    assert verified.revocation_checked is True
    assert verified.claims["revocation_unchecked"] == []
    assert {"step": "nvgpu.07.revocation", "ok": True} in [s.to_json() for s in verified.steps]
    assert verified.collateral_age_s is not None and 0 <= verified.collateral_age_s < 3600
    assert violations(verified, PRODUCTION) == []


def test_the_per_boot_leaf_and_the_root_are_not_asked(pki, device, responder):
    OcspFetcher(responder.url, clock=lambda: AT).responses_for(_device_pairs(pki, device))
    assert responder.requests == 3   # GSP BROM, Provisioner ICA, GH100 Identity


def test_revoked_brom_fails_cert_revoked(pki, device, responder):
    responder.revoke(device.brom)
    responses = OcspFetcher(responder.url, clock=lambda: AT).responses_for(_device_pairs(pki, device))
    with pytest.raises(VerificationFailed) as err:
        _verify(pki, device, NvgpuCollateral(ocsp=responses))
    assert err.value.reason == Reason.CERT_REVOKED
    assert err.value.steps[-1].to_json() == {"step": "nvgpu.07.revocation", "ok": False}
    assert "GSP BROM" in err.value.message and "keyCompromise" in err.value.message


def test_certificate_hold_counts_as_revoked(pki, device, responder):
    responder.revoke(pki.ica, reason=x509.ReasonFlags.certificate_hold)
    responses = OcspFetcher(responder.url, clock=lambda: AT).responses_for(_device_pairs(pki, device))
    with pytest.raises(VerificationFailed) as err:
        _verify(pki, device, NvgpuCollateral(ocsp=responses))
    assert err.value.reason == Reason.CERT_REVOKED


def _rim_pairs(authority):
    return ocsp.pairs_to_check(authority.chain, skip_leaf=False)


def test_rim_signing_chain_is_checked_too(pki, device, authority, responder):
    fetcher = OcspFetcher(responder.url, clock=lambda: AT)
    responses = fetcher.responses_for(_device_pairs(pki, device) + _rim_pairs(authority))
    verified = _verify(pki, device, NvgpuCollateral(rims=_rims(authority), ocsp=responses),
                       rim_roots=[authority.root])
    assert verified.claims["rim_validated"] is True and verified.revocation_checked is True
    # the RIM chain's responses missing: named as unchecked (the RIM L4 signer among them)
    device_only = fetcher.responses_for(_device_pairs(pki, device))
    partial = _verify(pki, device, NvgpuCollateral(rims=_rims(authority), ocsp=device_only),
                      rim_roots=[authority.root])
    assert partial.revocation_checked is False
    assert any("RIM L4 Signer" in u for u in partial.claims["revocation_unchecked"])
    assert [v.reason for v in violations(partial, PRODUCTION)] == [Reason.REVOCATION_UNCHECKED]


def test_revoked_rim_signer_fails_cert_revoked(pki, device, authority, responder):
    responder.revoke(authority.chain[0])
    responses = OcspFetcher(responder.url, clock=lambda: AT).responses_for(
        _device_pairs(pki, device) + _rim_pairs(authority))
    with pytest.raises(VerificationFailed) as err:
        _verify(pki, device, NvgpuCollateral(rims=_rims(authority), ocsp=responses), rim_roots=[authority.root])
    assert err.value.reason == Reason.CERT_REVOKED and "RIM L4 Signer" in err.value.message


def test_responder_down_names_every_certificate_and_production_refuses(pki, device, responder):
    responder.set_down()
    fetcher = OcspFetcher(responder.url, timeout=2.0, clock=lambda: AT)
    responses = fetcher.responses_for(_device_pairs(pki, device))
    assert responses.responses == () and len(fetcher.last_errors) == 3
    verified = _verify(pki, device, NvgpuCollateral(ocsp=responses))
    assert verified.revocation_checked is False
    assert len(verified.claims["revocation_unchecked"]) == 3
    found = violations(verified, PRODUCTION)
    assert [v.reason for v in found] == [Reason.REVOCATION_UNCHECKED]
    assert "GSP BROM" in found[0].message
    lenient = Policy.from_dict({"production": False, "allowed_tee": ["nvgpu"],
                                "nvgpu": {"measurements": {"1": [MEASUREMENTS[1].hex()]}}})
    assert violations(verified, lenient) == []


def test_no_ocsp_at_all_is_unchecked_with_the_note(pki, device):
    verified = _verify(pki, device, None)
    assert verified.revocation_checked is False
    assert nvgpu.REVOCATION_NOTE in verified.notes
    assert all("no OCSP response was available" in u for u in verified.claims["revocation_unchecked"])
    assert [v.reason for v in violations(verified, PRODUCTION)] == [Reason.REVOCATION_UNCHECKED]


def test_cache_serves_while_the_responder_is_down(pki, device, responder, tmp_path):
    OcspFetcher(responder.url, cache_dir=tmp_path, clock=lambda: AT).responses_for(_device_pairs(pki, device))
    responder.set_down()
    later = AT + timedelta(hours=2)
    fresh = OcspFetcher(responder.url, cache_dir=tmp_path, timeout=2.0, clock=lambda: later)
    responses = fresh.responses_for(_device_pairs(pki, device))
    assert len(responses.responses) == 3
    assert _verify(pki, device, NvgpuCollateral(ocsp=responses), at=later).revocation_checked is True
    # past the cached responses' nextUpdate verification no longer counts them
    stale = _verify(pki, device, NvgpuCollateral(ocsp=responses), at=AT + timedelta(days=2))
    assert stale.revocation_checked is False
    assert all("expired" in u for u in stale.claims["revocation_unchecked"])


def test_cached_response_is_reused_without_asking_again(pki, device, responder):
    fetcher = OcspFetcher(responder.url, clock=lambda: AT)
    fetcher.responses_for(_device_pairs(pki, device))
    fetcher.responses_for(_device_pairs(pki, device))
    assert responder.requests == 3


def test_response_with_a_broken_signature_is_unchecked(pki, device, responder):
    good = OcspFetcher(responder.url, clock=lambda: AT).responses_for(_device_pairs(pki, device))
    broken = ocsp.OcspResponses(tuple(der[:-1] + bytes([der[-1] ^ 1]) for der in good.responses))
    verified = _verify(pki, device, NvgpuCollateral(ocsp=broken))
    assert verified.revocation_checked is False
    assert all("not signed by the issuer or an authorized responder" in u
               for u in verified.claims["revocation_unchecked"])


def test_delegated_responder_from_the_hierarchy_is_accepted_without_eku_it_is_not(pki, device):
    delegated = responder_certificate(pki.root, pki.root_key, not_before=AT - timedelta(days=1))
    no_eku = responder_certificate(pki.root, pki.root_key, not_before=AT - timedelta(days=1), eku=False)
    for signer, expect in ((delegated, True), (no_eku, False)):
        server = EmulatedOcspResponder(clock=lambda: AT)
        for issuer in (pki.ica, pki.identity, pki.root):
            server.add_issuer(issuer, responder=signer)
        with server:
            responses = OcspFetcher(server.url, clock=lambda: AT).responses_for(_device_pairs(pki, device))
        assert _verify(pki, device, NvgpuCollateral(ocsp=responses)).revocation_checked is expect


def test_delegated_responder_of_another_hierarchy_is_refused(pki, device):
    other = GEN.make_pki()
    foreign = responder_certificate(other.root, other.root_key, not_before=AT - timedelta(days=1))
    server = EmulatedOcspResponder(clock=lambda: AT)
    for issuer in (pki.ica, pki.identity, pki.root):
        server.add_issuer(issuer, responder=foreign)
    with server:
        responses = OcspFetcher(server.url, clock=lambda: AT).responses_for(_device_pairs(pki, device))
    verified = _verify(pki, device, NvgpuCollateral(ocsp=responses))
    assert all("not issued by the checked certificate's hierarchy" in u
               for u in verified.claims["revocation_unchecked"])


def test_unknown_issuer_is_unauthorized_and_unchecked(pki, device):
    server = EmulatedOcspResponder(clock=lambda: AT)
    with server:
        responses = OcspFetcher(server.url, clock=lambda: AT).responses_for(_device_pairs(pki, device))
    verified = _verify(pki, device, NvgpuCollateral(ocsp=responses))
    assert all("unauthorized" in u for u in verified.claims["revocation_unchecked"])


def test_only_the_certificates_answered_for_count(pki, device, responder):
    foreign_issuer = GEN.make_pki()   # a response about the same serial under another issuer key
    responder.add_issuer(foreign_issuer.ica, foreign_issuer.ica_key)
    fetcher = OcspFetcher(responder.url, clock=lambda: AT)
    answers = fetcher.responses_for([(device.brom, foreign_issuer.ica), (pki.ica, pki.identity)])
    assert len(answers.responses) == 2
    partial = _verify(pki, device, NvgpuCollateral(ocsp=answers))
    assert [u.split(": ")[0] for u in partial.claims["revocation_unchecked"]] == [
        device.brom.subject.rfc4514_string(), pki.identity.subject.rfc4514_string()]


def test_ocsp_responses_travel_in_the_json_bundle(pki, device, responder, authority, tmp_path):
    responses = OcspFetcher(responder.url, clock=lambda: AT).responses_for(_device_pairs(pki, device))
    path = tmp_path / "collateral.json"
    path.write_bytes(nvgpu.rim_bundle_json([], responses.responses))
    loaded = nvgpu.load_collateral(path)
    assert isinstance(loaded, NvgpuCollateral) and loaded.rims is None
    assert _verify(pki, device, loaded).revocation_checked is True


def test_bundle_with_bad_ocsp_entries_is_malformed(tmp_path):
    from conclave.runtime.attestation.core import MalformedEvidence
    for doc in (b'{"ocsp": []}', b'{"ocsp": ["not base64!"]}', b'{"other": 1}'):
        path = tmp_path / "c.json"
        path.write_bytes(doc)
        with pytest.raises(MalformedEvidence):
            nvgpu.load_collateral(path)


def test_verification_modules_do_no_network_io():
    """DESIGN convention 6: the GPU verification core imports nothing that does I/O."""
    code = ("import sys; import conclave.runtime.attestation.nvgpu, conclave.runtime.attestation.ocsp; "
            "bad = [m for m in ('urllib.request', 'http.client', 'http.server', "
            "'conclave.runtime.attestation.ocsp_fetch', 'conclave.runtime.attestation.rim_service', "
            "'conclave.runtime.attestation.collateral_fetch') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
