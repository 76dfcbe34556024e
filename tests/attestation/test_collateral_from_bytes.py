"""Collateral shipped with evidence is parsed from its bytes (issue 13: no temp-file round trip in
the verification core): the same collateral as the file loaders read, and no file is written."""
from __future__ import annotations

import tempfile
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from conclave.runtime import attestation
from conclave.runtime.attestation import nvgpu, snp_collateral, tdx_collateral
from conclave.runtime.attestation.emulated.kds_server import EmulatedKds
from conclave.runtime.attestation.emulated.snp_issuer import SnpTestHierarchy
from conclave.runtime.attestation.core import TeeType, VerificationFailed
from conclave.runtime.attestation.nvgpu_collateral import NvgpuCollateral

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
TDX_V3 = VECTORS / "tdx" / "dcap-qvl-v4-uptodate" / "collateral.json"
RIMS = VECTORS / "nvgpu" / "nvidia-rims"


@pytest.fixture(autouse=True)
def no_temp_files(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("load_collateral_bytes wrote a temp file")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)


def test_tdx_v3_json_reads_as_the_file_loader_reads_it():
    if not TDX_V3.is_file():
        pytest.skip(f"shared vectors absent: {TDX_V3}")
    blob = TDX_V3.read_bytes()
    got = attestation.load_collateral_bytes(TeeType.TDX, blob)
    want = tdx_collateral.collateral_from_v3_json(blob, source=str(TDX_V3))
    assert isinstance(got, tdx_collateral.TdxCollateral)
    assert got.tcb_info == want.tcb_info and got.qe_identity == want.qe_identity
    assert got.pck_crl == want.pck_crl and got.root_ca_crl == want.root_ca_crl


def test_snp_pem_bundle_reads_certificates_and_crls(tmp_path):
    hierarchy = SnpTestHierarchy("bytes-cluster", product="genoa")
    with EmulatedKds(hierarchy) as kds:
        chain = urllib.request.urlopen(f"{kds.base_url}/vcek/v1/Genoa/cert_chain", timeout=5).read()
        crl = urllib.request.urlopen(f"{kds.base_url}/vcek/v1/Genoa/crl", timeout=5).read()
    crl_pem = x509.load_der_x509_crl(crl).public_bytes(Encoding.PEM)
    got = attestation.load_collateral_bytes(TeeType.SNP, chain + crl_pem)
    want = snp_collateral.parse_collateral_bytes([("chain", chain), ("crl", crl)])
    assert isinstance(got, snp_collateral.SnpCollateral)
    assert [c.der for c in got.certs] == [c.der for c in want.certs] and len(got.certs) == 2
    assert len(got.crls) == 1 and got.crls[0] == want.crls[0]


def test_nvgpu_rim_bundle_and_single_rim():
    files = sorted(p for p in RIMS.glob("*") if p.suffix in (".swidtag", ".xml")) if RIMS.is_dir() else []
    if not files:
        pytest.skip(f"shared vectors absent: {RIMS}")
    one = attestation.load_collateral_bytes(TeeType.NVGPU, files[0].read_bytes())
    assert [r.raw for r in one.rims] == [files[0].read_bytes()]
    bundle = nvgpu.rim_bundle_json([f.read_bytes() for f in files])
    got = attestation.load_collateral_bytes(TeeType.NVGPU, bundle)
    rims = got.rims.rims if isinstance(got, NvgpuCollateral) else got.rims
    want = nvgpu.load_collateral(RIMS).rims
    assert sorted((r.tag_id, r.version) for r in rims) == sorted((r.tag_id, r.version) for r in want)


def test_empty_blob_is_none_and_sim_takes_none():
    assert attestation.load_collateral_bytes(TeeType.TDX, b"") is None
    with pytest.raises(VerificationFailed) as exc:
        attestation.load_collateral_bytes(TeeType.SIM, b"{}")
    assert exc.value.reason == "collateral_invalid"


def test_garbage_is_collateral_invalid():
    for tee in (TeeType.TDX, TeeType.SNP):
        with pytest.raises(VerificationFailed) as exc:
            attestation.load_collateral_bytes(tee, b"\x00garbage")
        assert exc.value.reason == "collateral_invalid"
