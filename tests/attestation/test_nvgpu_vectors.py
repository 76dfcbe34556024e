"""Real NVIDIA evidence (../shared/vectors/nvgpu): parsed values and verification outcomes
must match each vector's expected.json (and trustee's asserted claims for the H100 sample)."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from conclave.runtime import attestation
from conclave.runtime.attestation import core, nvgpu, nvgpu_chain
from conclave.runtime.attestation.core import MalformedEvidence, Reason, TeeType, VerificationFailed
from conclave.runtime.attestation.nvgpu_spdm import parse_spdm

# The device chains are valid 2020/2021/2022 .. 9999-12-31 ("any" time in expected.json);
# two arbitrary instants inside that window, one outside it.
AT = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)
AT_FAR = datetime(2090, 6, 1, tzinfo=timezone.utc)
BEFORE_ROOT = datetime(2021, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def sample(vectors_dir: Path) -> Path:
    return vectors_dir / "nvgpu" / "nvtrust-h100-sample"


@pytest.fixture(scope="module")
def ppcie(vectors_dir: Path) -> Path:
    return vectors_dir / "nvgpu" / "nvtrust-ppcie-8xh100"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _nonce(sample: Path) -> bytes:
    return bytes.fromhex((sample / "nonce.hex").read_text().strip())


# --- nvtrust-h100-sample -------------------------------------------------------------------

def test_h100_sample_parses_with_expected_fields(sample: Path) -> None:
    exp = _json(sample / "expected.json")
    data = (sample / "evidence.bin").read_bytes()
    assert len(data) == exp["size"]
    spdm = parse_spdm(data)
    p = exp["parsed"]
    req, resp = spdm.request, spdm.response
    assert (hex(req.spdm_version), hex(req.code), req.param1, req.param2, req.slot_id) == (
        p["req_version"], p["req_code"], p["req_param1"], p["req_param2"], p["slot_id"])
    assert req.nonce.hex() == p["nonce"]
    assert (hex(resp.spdm_version), hex(resp.code), resp.param1, resp.param2) == (
        p["resp_version"], p["resp_code"], p["resp_param1"], p["resp_param2"])
    assert (resp.number_of_blocks, resp.record_length) == (p["num_blocks"], p["record_len"])
    assert resp.nonce.hex() == p["resp_nonce"]
    assert len(resp.signature) == p["sig_len"]
    assert spdm.trailing == p["trailing"]
    expected_opaque = dict(p["opaque"])
    assert spdm.driver_version == expected_opaque.pop("driver_version")
    assert {k: v.hex() for k, v in spdm.opaque.items() if k != "driver_version"} == expected_opaque
    blocks = {str(b.index): {"spec": b.spec, "dmtf_type": b.value_type, "value": b.value.hex()}
              for b in resp.blocks}
    assert blocks == exp["measurement_blocks"]
    region = exp["signed_region"]
    assert region["start"] == 0
    assert spdm.signed_bytes == data[:region["end_exclusive"]]


def test_h100_sample_hex_file_parses_to_the_same_evidence(sample: Path) -> None:
    from_hex = nvgpu.parse((sample / "evidence.hex").read_bytes())
    from_bin = nvgpu.parse((sample / "evidence.bin").read_bytes())
    assert (from_hex.source, from_bin.source) == ("spdm-hex", "spdm-binary")
    assert from_hex.devices[0].spdm.raw == from_bin.devices[0].spdm.raw


def test_h100_sample_chain_matches_expected(sample: Path) -> None:
    exp = _json(sample / "expected.json")["checks"]
    path = nvgpu_chain.verify_chain(_chain(sample / "cert_chain.pem"), (), nvgpu_chain.pinned_roots(), AT)
    assert [(c.subject.rfc4514_string(), c.not_valid_before_utc.isoformat(), c.not_valid_after_utc.isoformat())
            for c in path] == [tuple(row) for row in exp["chain"]]
    assert nvgpu_chain.leaf_fwid(path[0]).hex() == exp["leaf_fwid"]
    # trustee's own copy of the signing certificate is the same leaf
    trustee_leaf = x509.load_pem_x509_certificate((sample / "leaf_signing_cert_trustee.pem").read_bytes())
    assert trustee_leaf == path[0]


@pytest.mark.parametrize("at", [AT, AT_FAR])
def test_h100_sample_verifies(sample: Path, at: datetime) -> None:
    parsed = nvgpu.parse((sample / "evidence.bin").read_bytes())
    v = nvgpu.verify(parsed, at=at, certs=_chain(sample / "cert_chain.pem"), nonce=_nonce(sample))
    assert [s.step for s in v.steps] == ["nvgpu.01.parse", "nvgpu.02.cert_chain", "nvgpu.03.signature",
                                         "nvgpu.04.fwid", "nvgpu.05.nonce"]
    assert all(s.ok for s in v.steps)
    assert v.tee is TeeType.NVGPU and v.report_data == _nonce(sample) and not v.simulated
    assert v.revocation_checked is False and v.notes  # OCSP is online-only: never pretended
    assert v.verified_at == at


def test_h100_sample_claims_match_trustee(sample: Path) -> None:
    trustee = _json(sample / "claims_trustee.json")
    parsed = nvgpu.parse((sample / "evidence.bin").read_bytes())
    c = nvgpu.verify(parsed, at=AT, certs=_chain(sample / "cert_chain.pem"), nonce=_nonce(sample)).claims
    assert {str(k): v.hex() for k, v in c["measurements"].items()} == trustee["measurements"]
    cfg = trustee["config"]
    assert c["gpu_arch"] == trustee["arch"].upper() == "HOPPER"
    assert c["device_kind"] == "gpu"
    assert c["driver_version"] == cfg["driver_version"]
    assert c["vbios_version"] == cfg["vbios_version"]
    assert c["fwid"].hex() == cfg["fwid"]
    for name in ("chip_sku", "chip_sku_mod", "project", "project_sku"):
        assert c[name] == cfg[name], name
    for name in ("board_id", "gpu_info", "cpr_info", "project_sku_mod"):
        assert c["opaque"][name].hex() == cfg[name], name
    assert {str(i + 1): n for i, n in enumerate(c["msrscnt"])} == {k: v for k, v in cfg["measurement_count"].items()}
    assert c["nonce"] == c["report_data"] == _nonce(sample)
    assert c["ueid"] == "NVIDIA:GH100:48B02D92494BADF4"
    assert c["device_serial"] == "53C22BA15E5D68088282DA074ED9FB37AA585771"
    json.dumps(core.claims_to_json(c))  # serializable for --json


@pytest.mark.parametrize("name, reason", [
    ("chain_only_root", Reason.CERTS_MISSING),
    ("chain_missing_intermediate", Reason.CHAIN_UNTRUSTED),
    ("chain_missing_leaf", Reason.CERTS_MISSING),
])
def test_h100_sample_negative_chains_fail(sample: Path, name: str, reason: Reason) -> None:
    parsed = nvgpu.parse((sample / "evidence.bin").read_bytes())
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(parsed, at=AT, certs=_chain(sample / "negative" / f"{name}.pem"), nonce=_nonce(sample))
    assert err.value.reason == reason
    assert err.value.steps[-1].step == "nvgpu.02.cert_chain" and not err.value.steps[-1].ok


def test_h100_sample_without_certs_is_certs_missing(sample: Path) -> None:
    parsed = nvgpu.parse((sample / "evidence.bin").read_bytes())
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(parsed, at=AT, nonce=_nonce(sample))
    assert err.value.reason == Reason.CERTS_MISSING


def test_h100_sample_wrong_nonce_is_nonce_mismatch(sample: Path) -> None:
    parsed = nvgpu.parse((sample / "evidence.bin").read_bytes())
    wrong = bytes(b ^ 0xFF for b in _nonce(sample))
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(parsed, at=AT, certs=_chain(sample / "cert_chain.pem"), nonce=wrong)
    assert err.value.reason == Reason.NONCE_MISMATCH
    assert err.value.steps[-1].step == "nvgpu.05.nonce"


def test_h100_sample_before_root_validity_is_cert_expired(sample: Path) -> None:
    parsed = nvgpu.parse((sample / "evidence.bin").read_bytes())
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(parsed, at=BEFORE_ROOT, certs=_chain(sample / "cert_chain.pem"), nonce=_nonce(sample))
    assert err.value.reason == Reason.CERT_EXPIRED


def test_h100_sample_not_trusted_without_nvidia_root(sample: Path) -> None:
    """With test roots instead of the pinned NVIDIA root, the real chain is untrusted."""
    parsed = nvgpu.parse((sample / "evidence.bin").read_bytes())
    other_root = x509.load_pem_x509_certificate(
        (Path(__file__).parent.parent / "data" / "nvgpu" / "test_root.pem").read_bytes())
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(parsed, at=AT, certs=_chain(sample / "cert_chain.pem"), trusted_roots=[other_root])
    assert err.value.reason == Reason.CHAIN_UNTRUSTED


def test_embedded_root_is_the_vector_root_and_pinned(sample: Path) -> None:
    vector_root = x509.load_pem_x509_certificate((sample / "nvidia_device_identity_root.pem").read_bytes())
    (embedded,) = nvgpu_chain.pinned_roots()
    assert embedded.public_bytes(Encoding.DER) == vector_root.public_bytes(Encoding.DER)
    assert nvgpu_chain.fingerprint(embedded) == nvgpu_chain.FINGERPRINTS["nvidia_device_identity_root.pem"]


def test_h100_sample_through_the_dispatcher(sample: Path) -> None:
    data = (sample / "evidence.bin").read_bytes()
    assert attestation.detect_tee(data) is TeeType.NVGPU
    v = attestation.verify_evidence(data, at=AT, certs=_chain(sample / "cert_chain.pem"), nonce=_nonce(sample))
    assert v.tee is TeeType.NVGPU and v.report_data == _nonce(sample)


# --- nvtrust-ppcie-8xh100 ------------------------------------------------------------------

def test_ppcie_gpus_parse_and_verify(ppcie: Path) -> None:
    exp = _json(ppcie / "expected.json")
    raw = (ppcie / "gpu_evidence.json").read_bytes()
    entries = json.loads(raw)
    assert nvgpu.looks_like(raw) and attestation.detect_tee(raw) is TeeType.NVGPU
    parsed = nvgpu.parse(raw)
    assert parsed.source == "sdk-json" and len(parsed.devices) == len(exp["gpus"]) == 8
    nonce = bytes.fromhex(entries[0]["nonce"])
    v = nvgpu.verify(parsed, at=AT, nonce=nonce)
    assert v.report_data == nonce and v.claims["device_count"] == 8
    for gpu, device, claims in zip(exp["gpus"], parsed.devices, v.claims["devices"]):
        i = gpu["index"]
        assert len(device.spdm.raw) == gpu["evidence_len"]
        assert (device.spdm.nonce == nonce) is gpu["nonce_ok"]
        assert len(device.chain) == len(gpu["chain"]) == 5
        assert claims["driver_version"] == gpu["driver"]
        assert claims["leaf_subject"] == gpu["leaf_subject"]
        assert claims["gpu_arch"] == "HOPPER" and claims["device_kind"] == "gpu"
        assert claims["vbios_version"] == entries[i]["vbios_version"].lower()
        steps = {s.step for s in v.steps if s.ok}
        assert {f"nvgpu.02.cert_chain[{i}]", f"nvgpu.03.signature[{i}]"} <= steps
        assert (f"nvgpu.04.fwid[{i}]" in steps) is gpu["fwid_match"]
    assert v.steps[-1].step == "nvgpu.05.nonce" and v.steps[-1].ok
    # identical firmware on all eight GPUs: the shared claims stay at the top level
    assert v.claims["driver_version"] == "590.12" and len(v.claims["measurements"]) == 64


def test_ppcie_single_gpu_entry_verifies_alone(ppcie: Path) -> None:
    entry = json.loads((ppcie / "gpu_evidence.json").read_text())[3]
    parsed = nvgpu.parse(json.dumps(entry).encode())
    v = nvgpu.verify(parsed, at=AT_FAR, nonce=bytes.fromhex(entry["nonce"]))
    assert [s.step for s in v.steps] == ["nvgpu.01.parse", "nvgpu.02.cert_chain", "nvgpu.03.signature",
                                         "nvgpu.04.fwid", "nvgpu.05.nonce"]


def test_ppcie_raw_evidence_with_separate_certs(ppcie: Path) -> None:
    entry = json.loads((ppcie / "gpu_evidence.json").read_text())[0]
    chain = x509.load_pem_x509_certificates(base64.b64decode(entry["certificate"]))
    parsed = nvgpu.parse(base64.b64decode(entry["evidence"]))
    v = nvgpu.verify(parsed, at=AT, certs=list(reversed(chain)), nonce=bytes.fromhex(entry["nonce"]))
    assert v.claims["driver_version"] == "590.12"


def test_ppcie_switches_parse_and_verify(ppcie: Path) -> None:
    exp = _json(ppcie / "expected.json")
    raw = (ppcie / "switch_evidence.json").read_bytes()
    entries = json.loads(raw)
    parsed = nvgpu.parse(raw)
    nonce = bytes.fromhex(entries[0]["nonce"])
    v = nvgpu.verify(parsed, at=AT, nonce=nonce)
    for sw, device, claims in zip(exp["switches"], parsed.devices, v.claims["devices"]):
        i = sw["index"]
        assert device.declared_arch == claims["gpu_arch"] == sw["arch"] == "LS10"
        assert claims["device_kind"] == "switch"
        assert device.spdm.response.number_of_blocks == sw["num_blocks"]
        assert (device.spdm.nonce == nonce) is sw["nonce_ok"]
        assert len(device.chain) == len(sw["chain"])
        assert {f"nvgpu.02.cert_chain[{i}]", f"nvgpu.03.signature[{i}]"} <= {s.step for s in v.steps if s.ok}
        # switches report no FWID: the binding check is skipped with a note, never marked ok
        assert claims["fwid"] is None and f"nvgpu.04.fwid[{i}]" not in {s.step for s in v.steps}
    assert len(v.notes) > 2


def test_ppcie_tampered_chain_in_bundle_is_rejected(ppcie: Path) -> None:
    """The chain travels inside the JSON: swapping one GPU's chain for another's breaks it."""
    entries = json.loads((ppcie / "gpu_evidence.json").read_text())
    entries[2]["certificate"] = entries[5]["certificate"]
    parsed = nvgpu.parse(json.dumps(entries).encode())
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(parsed, at=AT, nonce=bytes.fromhex(entries[0]["nonce"]))
    assert err.value.reason == Reason.SIGNATURE_INVALID
    assert err.value.steps[-1].step == "nvgpu.03.signature[2]"


def test_ppcie_entry_nonce_must_match_the_signed_request(ppcie: Path) -> None:
    entries = json.loads((ppcie / "gpu_evidence.json").read_text())
    entries[1]["nonce"] = "00" * 32
    with pytest.raises(MalformedEvidence):
        nvgpu.parse(json.dumps(entries).encode())


def test_h100_sample_flipped_bytes_in_signed_region_are_rejected(sample: Path) -> None:
    """Real evidence: a spread of positions over every field of the signed region (the
    generated vector in test_nvgpu.py covers every single byte)."""
    data = (sample / "evidence.bin").read_bytes()
    chain, nonce = _chain(sample / "cert_chain.pem"), _nonce(sample)
    signed_end = len(parse_spdm(data).signed_bytes)
    positions = sorted(set(range(0, signed_end, 13)) | {0, 1, 4, 36, 37, 41, 45, signed_end - 1})
    for pos in positions:
        mutated = bytearray(data)
        mutated[pos] ^= 0x80
        try:
            nvgpu.verify(nvgpu.parse(bytes(mutated)), at=AT, certs=chain, nonce=nonce)
        except (MalformedEvidence, VerificationFailed):
            continue
        pytest.fail(f"real evidence with byte {pos} flipped still verified")
