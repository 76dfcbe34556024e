"""NVIDIA RIM validation: real NVIDIA-signed RIMs (../shared/vectors/nvgpu/nvidia-rims) against the
real H100 sample evidence, tampered copies of them, and RIMs of a test RIM root built from that
evidence (NVIDIA publishes no RIM matching the public sample: driver 550.90.07 / VBIOS
96.00.9F.00.01, while the shared RIMs are 545.00 / 96.00.5E.00.01 / 96.00.74.00.1A)."""
from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from conclave.runtime.attestation import nvgpu, nvgpu_chain, nvgpu_rim
from conclave.runtime.attestation.core import MalformedEvidence, Reason, VerificationFailed
from conclave.runtime.attestation.nvgpu_rim_issue import TestRimAuthority
from conclave.runtime.cli import main

BEFORE_SIGNER_EXPIRY = datetime(2024, 6, 1, tzinfo=timezone.utc)   # L4 signers valid 2023-06 .. 2025-06
AFTER_SIGNER_EXPIRY = datetime(2025, 12, 1, tzinfo=timezone.utc)
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
PROD_VBIOS = "1010_0200_882_96005E0001_PROD.swidtag"
# Active RIM indices of NVIDIA's GH100 RIMs (0-based; SPDM block = index + 1).
DRIVER_ACTIVE = [7, *range(21, 41)]
VBIOS_ACTIVE = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]


@pytest.fixture(scope="module")
def rims_dir(vectors_dir: Path) -> Path:
    return vectors_dir / "nvgpu" / "nvidia-rims"


@pytest.fixture(scope="module")
def sample(vectors_dir: Path) -> Path:
    return vectors_dir / "nvgpu" / "nvtrust-h100-sample"


@pytest.fixture(scope="module")
def evidence(sample: Path) -> nvgpu.ParsedNvgpu:
    return nvgpu.parse((sample / "evidence.bin").read_bytes())


@pytest.fixture(scope="module")
def chain(sample: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((sample / "cert_chain.pem").read_bytes())


@pytest.fixture(scope="module")
def nonce(sample: Path) -> bytes:
    return bytes.fromhex((sample / "nonce.hex").read_text().strip())


@pytest.fixture(scope="module")
def authority() -> TestRimAuthority:
    return TestRimAuthority.generate(now=NOW)


def _rim(path: Path) -> nvgpu_rim.Rim:
    return nvgpu_rim.parse_rim(path.read_bytes(), path.name)


def _matching_rims(authority, evidence, *, vbios_override: dict[int, bytes] | None = None) -> tuple[bytes, bytes]:
    m = evidence.devices[0].spdm.measurements
    driver = authority.sign_rim(version="550.90.07", golden={i: m[i + 1] for i in DRIVER_ACTIVE})
    golden = {i: m[i + 1] for i in VBIOS_ACTIVE}
    golden.update(vbios_override or {})
    vbios = authority.sign_rim(version="96.00.9F.00.01", golden=golden, inactive={7: b"\0" * 48})
    return driver, vbios


def _rim_set(*docs: bytes) -> nvgpu_rim.RimSet:
    return nvgpu_rim.RimSet(tuple(nvgpu_rim.parse_rim(d, f"rim{i}") for i, d in enumerate(docs)))


def _cli(args: list[str], capsys) -> tuple[int, dict]:
    code = main(["attest", "verify", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


# --- the pinned root and NVIDIA's own RIMs -------------------------------------------------

def test_pinned_rim_root_is_the_vectors_root(rims_dir):
    (root,) = nvgpu_rim.pinned_rim_roots()
    shipped = x509.load_pem_x509_certificate((rims_dir / "nvidia_rim_root.pem").read_bytes())
    assert root.public_bytes(Encoding.DER) == shipped.public_bytes(Encoding.DER)
    assert root.subject.rfc4514_string() == "CN=NVIDIA CoRIM signing Root CA,O=NVIDIA,C=US"


def test_pinned_rim_root_refuses_a_swapped_file(tmp_path, authority):
    from cryptography.hazmat.primitives.serialization import Encoding as E
    (tmp_path / nvgpu_rim.RIM_ROOT_FILE).write_bytes(authority.root.public_bytes(E.PEM))
    with pytest.raises(VerificationFailed) as err:
        nvgpu_rim.pinned_rim_roots(tmp_path)
    assert err.value.reason == Reason.RIM_INVALID


@pytest.mark.parametrize("name,kind,version", [
    ("Driver_RIM_test_no_gpu.swidtag", "driver", "545.00"),
    ("1010_0200_882_96005E0001_test_no_gpu.swidtag", "vbios", "96.00.5e.00.01"),
    (PROD_VBIOS, "vbios", "96.00.5e.00.01"),
    ("1010_0200_882_960074001A_PROD.swidtag", "vbios", "96.00.74.00.1a"),
])
def test_real_rims_verify_to_the_pinned_root(rims_dir, name, kind, version):
    rim = nvgpu_rim.verify_rim(_rim(rims_dir / name), at=BEFORE_SIGNER_EXPIRY)
    assert (rim.verified, rim.kind, rim.version, rim.product) == (True, kind, version, "GH100")
    assert sorted(rim.active) == (DRIVER_ACTIVE if kind == "driver" else VBIOS_ACTIVE)


def test_real_rim_after_its_signer_expired_is_rim_invalid(rims_dir):
    with pytest.raises(VerificationFailed) as err:
        nvgpu_rim.verify_rim(_rim(rims_dir / PROD_VBIOS), at=AFTER_SIGNER_EXPIRY)
    assert err.value.reason == Reason.RIM_INVALID and "valid from" in err.value.message


def test_real_rim_against_a_test_root_is_rim_invalid(rims_dir, authority):
    with pytest.raises(VerificationFailed) as err:
        nvgpu_rim.verify_rim(_rim(rims_dir / PROD_VBIOS), at=BEFORE_SIGNER_EXPIRY, roots=[authority.root])
    assert err.value.reason == Reason.RIM_INVALID


# --- tampering with a real RIM ---------------------------------------------------------------

def _flip_hex(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] = ord("1") if out[offset] != ord("1") else ord("2")
    return bytes(out)


def _tamper_measurement(data: bytes) -> bytes:
    at = data.index(b'index="3" active="True"')
    return _flip_hex(data, data.index(b'Hash0="', at) + 7 + 10)


def _tamper_signature(data: bytes) -> bytes:
    start = data.index(b"<ds:SignatureValue>") + len(b"<ds:SignatureValue>")
    text = data[start:data.index(b"</ds:SignatureValue>")]
    raw = bytearray(base64.b64decode(text))
    raw[10] ^= 0x01
    return data[:start] + base64.b64encode(bytes(raw)) + data[start + len(text):]


def _swap_signer_cert(data: bytes, other: bytes) -> bytes:
    first = re.compile(rb"<ds:X509Certificate>(.*?)</ds:X509Certificate>", re.S)
    return first.sub(first.search(other).group(0).replace(b"\\", b"\\\\"), data, count=1)


@pytest.mark.parametrize("tamper", ["measurement", "signature", "swapped_cert", "missing_intermediate"])
def test_tampered_real_rim_is_rim_invalid(rims_dir, authority, tamper):
    data = (rims_dir / PROD_VBIOS).read_bytes()
    if tamper == "measurement":
        data = _tamper_measurement(data)
    elif tamper == "signature":
        data = _tamper_signature(data)
    elif tamper == "swapped_cert":  # another genuine NVIDIA L4 signer (valid chain, wrong key)
        data = _swap_signer_cert(data, (rims_dir / "1010_0200_882_960074001A_PROD.swidtag").read_bytes())
    else:  # the L3 intermediate removed from KeyInfo: no path to the pinned root
        certs = list(re.finditer(rb"<ds:X509Certificate>.*?</ds:X509Certificate>", data, re.S))
        data = data[:certs[1].start()] + data[certs[1].end():]
    with pytest.raises(VerificationFailed) as err:
        nvgpu_rim.verify_rim(nvgpu_rim.parse_rim(data, tamper), at=BEFORE_SIGNER_EXPIRY)
    assert err.value.reason == Reason.RIM_INVALID


def test_rim_with_a_doctype_is_malformed(rims_dir):
    data = (rims_dir / PROD_VBIOS).read_bytes()
    with pytest.raises(MalformedEvidence):
        nvgpu_rim.parse_rim(b'<!DOCTYPE x [<!ENTITY e "x">]>' + data)


def test_unsigned_rim_is_malformed(rims_dir):
    data = (rims_dir / PROD_VBIOS).read_bytes()
    unsigned = data[:data.index(b"<ds:Signature")] + b"</SoftwareIdentity>"
    with pytest.raises(MalformedEvidence):
        nvgpu_rim.parse_rim(unsigned)


# --- real evidence against real RIMs ---------------------------------------------------------

def test_real_evidence_vs_prod_vbios_rim_names_the_differing_indices(rims_dir, evidence):
    rim = nvgpu_rim.verify_rim(_rim(rims_dir / PROD_VBIOS), at=BEFORE_SIGNER_EXPIRY)
    found = nvgpu_rim.compare([rim], evidence.devices[0].spdm.measurements)
    assert [m.spdm_index for m in found] == [2, 3, 10, 12]


def test_real_evidence_vs_test_no_gpu_rims_differs_at_20_indices(rims_dir, evidence):
    """expected.json: "20 active indices differ" for nvtrust's --test_no_gpu RIM pair."""
    rims = [nvgpu_rim.verify_rim(_rim(rims_dir / n), at=BEFORE_SIGNER_EXPIRY)
            for n in ("Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_test_no_gpu.swidtag")]
    assert len(nvgpu_rim.compare(rims, evidence.devices[0].spdm.measurements)) == 20


def test_cli_real_evidence_against_the_shared_rims_is_rim_missing(rims_dir, sample, nonce, capsys):
    code, out = _cli([str(sample / "evidence.bin"), "--tee", "nvgpu", "--certs", str(sample / "cert_chain.pem"),
                      "--nonce", nonce.hex(), "--rim", str(rims_dir), "--at", "2024-06-01T00:00:00Z"], capsys)
    assert (code, out["reason"]) == (2, "rim_missing")
    assert out["steps"][-1] == {"step": "nvgpu.06.rim", "ok": False}


def test_cli_real_evidence_with_a_tampered_rim_is_rim_invalid(rims_dir, sample, nonce, tmp_path, capsys):
    bad = tmp_path / "bad.swidtag"
    bad.write_bytes(_tamper_measurement((rims_dir / PROD_VBIOS).read_bytes()))
    code, out = _cli([str(sample / "evidence.bin"), "--tee", "nvgpu", "--certs", str(sample / "cert_chain.pem"),
                      "--nonce", nonce.hex(), "--rim", str(rims_dir / "Driver_RIM_test_no_gpu.swidtag"),
                      "--rim", str(bad), "--at", "2024-06-01T00:00:00Z"], capsys)
    assert (code, out["reason"]) == (2, "rim_invalid")


# --- real evidence against RIMs of a test RIM root -------------------------------------------

def test_real_evidence_with_matching_test_rims_validates(authority, evidence, chain, nonce):
    verified = nvgpu.verify(evidence, at=NOW, certs=chain, nonce=nonce,
                            collateral=_rim_set(*_matching_rims(authority, evidence)), rim_roots=[authority.root])
    assert verified.steps[-1].step == "nvgpu.06.rim" and verified.steps[-1].ok
    assert verified.claims["rim_validated"] is True and verified.claims["gpu_chip"] == "GH100"
    assert nvgpu.RIM_NOTE not in verified.notes and verified.revocation_checked is False


def test_test_rims_are_refused_under_the_pinned_root(authority, evidence, chain, nonce):
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(evidence, at=NOW, certs=chain, nonce=nonce, collateral=_rim_set(*_matching_rims(authority, evidence)))
    assert err.value.reason == Reason.RIM_INVALID


def test_missing_vbios_rim_is_rim_missing(authority, evidence, chain):
    driver, _ = _matching_rims(authority, evidence)
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(evidence, at=NOW, certs=chain, collateral=_rim_set(driver), rim_roots=[authority.root])
    assert err.value.reason == Reason.RIM_MISSING and "VBIOS" in err.value.message


def test_two_rims_claiming_one_index_is_rim_invalid(authority, evidence, chain):
    m = evidence.devices[0].spdm.measurements
    driver, _ = _matching_rims(authority, evidence)
    vbios = authority.sign_rim(version="96.00.9F.00.01", golden={i: m[i + 1] for i in [*VBIOS_ACTIVE, 7]})
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(evidence, at=NOW, certs=chain, collateral=_rim_set(driver, vbios), rim_roots=[authority.root])
    assert err.value.reason == Reason.RIM_INVALID


def test_alternative_golden_values_match_any(authority, evidence, chain):
    m = evidence.devices[0].spdm.measurements
    driver, _ = _matching_rims(authority, evidence)
    golden = {i: (b"\x11" * 48, m[i + 1]) for i in VBIOS_ACTIVE}
    vbios = authority.sign_rim(version="96.00.9F.00.01", golden=golden)
    verified = nvgpu.verify(evidence, at=NOW, certs=chain, collateral=_rim_set(driver, vbios),
                            rim_roots=[authority.root])
    assert verified.claims["rim_validated"] is True


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


def test_cli_accepts_real_evidence_with_matching_test_rims(authority, evidence, sample, nonce, tmp_path, capsys):
    driver, vbios = _matching_rims(authority, evidence)
    root = _write(tmp_path, "root.pem", authority.root.public_bytes(Encoding.PEM))
    code, out = _cli([str(sample / "evidence.bin"), "--tee", "nvgpu", "--certs", str(sample / "cert_chain.pem"),
                      "--nonce", nonce.hex(), "--rim", _write(tmp_path, "d.swidtag", driver),
                      "--rim", _write(tmp_path, "v.swidtag", vbios), "--unsafe-rim-root", root,
                      "--at", "2026-12-01T00:00:00Z"], capsys)
    assert (code, out["ok"], out["claims"]["rim_validated"]) == (0, True, True)


def test_cli_mismatch_names_the_indices(authority, evidence, sample, nonce, tmp_path, capsys):
    driver, vbios = _matching_rims(authority, evidence, vbios_override={9: b"\x22" * 48, 2: b"\x33" * 48})
    root = _write(tmp_path, "root.pem", authority.root.public_bytes(Encoding.PEM))
    code, out = _cli([str(sample / "evidence.bin"), "--tee", "nvgpu", "--certs", str(sample / "cert_chain.pem"),
                      "--nonce", nonce.hex(), "--rim", _write(tmp_path, "d.swidtag", driver),
                      "--rim", _write(tmp_path, "v.swidtag", vbios), "--unsafe-rim-root", root,
                      "--at", "2026-12-01T00:00:00Z"], capsys)
    assert (code, out["reason"]) == (2, "rim_mismatch")
    assert out["rim"]["mismatched_indices"] == [3, 10]
    assert {m["rim_index"] for m in out["rim"]["mismatches"]} == {2, 9}


def test_cli_rim_with_a_cpu_tee_is_a_usage_error(tmp_path, capsys, sim_evidence):
    ev = _write(tmp_path, "ev.json", sim_evidence)
    code = main(["attest", "verify", ev, "--tee", "sim", "--rim", ev, "--json"])
    capsys.readouterr()
    assert code == 1


def test_rim_bundle_json_round_trips(authority, evidence, chain, tmp_path):
    bundle = nvgpu.rim_bundle_json(_matching_rims(authority, evidence))
    path = tmp_path / "rims.json"
    path.write_bytes(bundle)
    rims = nvgpu.load_collateral(path)
    verified = nvgpu.verify(evidence, at=NOW, certs=chain, collateral=rims, rim_roots=[authority.root])
    assert verified.claims["rim_validated"] is True


def test_policy_require_rim(authority, evidence, chain):
    from conclave.runtime.attestation.policy import Policy, violations
    policy = Policy.from_dict({"production": False, "allowed_tee": ["nvgpu"], "nvgpu": {"require_rim": True}})
    with_rims = nvgpu.verify(evidence, at=NOW, certs=chain, collateral=_rim_set(*_matching_rims(authority, evidence)),
                             rim_roots=[authority.root])
    assert violations(with_rims, policy) == []
    without = nvgpu.verify(evidence, at=NOW, certs=chain)
    assert [str(v.reason) for v in violations(without, policy)] == ["rim_missing"]
