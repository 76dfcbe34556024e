"""NVIDIA GPU evidence with the project's own NVIDIA-shaped test CA (tests/data/nvgpu):
one vector per verification step that is valid except for that one defect, parser
robustness, byte-flip mutation of the signed region, and the JSON bundle format."""
from __future__ import annotations

import base64
import importlib.util
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings, strategies as st

from conclave.runtime.attestation import core, nvgpu, nvgpu_chain
from conclave.runtime.attestation.core import MalformedEvidence, Reason, VerificationFailed
from conclave.runtime.attestation.nvgpu_spdm import REQUEST_LEN, SIGNATURE_LEN, parse_spdm

DATA = Path(__file__).resolve().parent.parent / "data" / "nvgpu"
EXPECTED = json.loads((DATA / "expected.json").read_text())
AT = datetime.fromisoformat(EXPECTED["verification_time"])
NONCE = bytes.fromhex(EXPECTED["nonce"])


def _certs(name: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((DATA / name).read_bytes()) if name else []


ROOTS = _certs(EXPECTED["trusted_root"])
CHAIN = _certs("chain.pem")
EVIDENCE = (DATA / "evidence.bin").read_bytes()


def _verify(data: bytes, certs=CHAIN, nonce: bytes | None = NONCE, at: datetime = AT) -> core.VerifiedEvidence:
    return nvgpu.verify(nvgpu.parse(data), at=at, certs=certs, nonce=nonce, trusted_roots=ROOTS)


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate_nvgpu_vectors", DATA / "generate_nvgpu_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- one vector per step -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED["cases"]))
def test_generated_case(name: str) -> None:
    case = EXPECTED["cases"][name]
    data = (DATA / case["evidence"]).read_bytes()
    nonce = bytes.fromhex(case["nonce"])
    if case["outcome"] == "ok":
        v = _verify(data, _certs(case["chain"]), nonce)
        assert all(s.ok for s in v.steps) and v.steps[-1].step == "nvgpu.05.nonce"
        assert v.report_data == nonce
        return
    if case["outcome"] == "malformed":
        with pytest.raises(MalformedEvidence) as perr:
            nvgpu.parse(data)
        assert perr.value.reason == Reason.MALFORMED
        return
    with pytest.raises(VerificationFailed) as err:
        _verify(data, _certs(case["chain"]), nonce)
    assert err.value.reason == case["outcome"]
    last = err.value.steps[-1]
    assert last.step == case["failed_step"] and not last.ok
    assert all(s.ok for s in err.value.steps[:-1])


def test_every_verification_step_has_a_negative_vector() -> None:
    failing = {c["failed_step"].split("[")[0] for c in EXPECTED["cases"].values() if c["failed_step"]}
    assert failing == {"nvgpu.01.parse", "nvgpu.02.cert_chain", "nvgpu.03.signature", "nvgpu.04.fwid",
                       "nvgpu.05.nonce"}


def test_valid_claims() -> None:
    v = _verify(EVIDENCE)
    c = v.claims
    assert {str(k): x.hex() for k, x in c["measurements"].items()} == EXPECTED["measurements"]
    assert c["fwid"].hex() == EXPECTED["fwid"]
    assert (c["driver_version"], c["vbios_version"]) == (EXPECTED["driver_version"], EXPECTED["vbios_version"])
    assert (c["gpu_arch"], c["device_kind"], c["chip_sku"], c["project"]) == ("HOPPER", "gpu", "882", "1010")
    assert c["ueid"] == "NVIDIA:GH100:4143000000000001"
    assert c["nonce"] == c["report_data"] == v.report_data == NONCE
    assert c["trailing_bytes"] == 0 and c["msrscnt"] == [1, 1, 4, 1, 1, 1, 1, 1]
    assert v.revocation_checked is False and not v.simulated and v.tcb_status is None
    json.dumps(core.claims_to_json(c))


def test_trailing_byte_is_unsigned_and_reported() -> None:
    v = _verify((DATA / "evidence_trailing_byte.bin").read_bytes())
    assert v.claims["trailing_bytes"] == 1


def test_missing_fwid_skips_the_binding_check_visibly() -> None:
    v = _verify((DATA / "evidence_no_fwid.bin").read_bytes())
    assert "nvgpu.04.fwid" not in [s.step for s in v.steps]
    assert v.claims["fwid"] is None and len(v.notes) >= 3


def test_no_expected_nonce_still_verifies_but_says_so() -> None:
    v = _verify(EVIDENCE, nonce=None)
    assert "nvgpu.05.nonce" not in [s.step for s in v.steps]
    assert v.report_data == NONCE  # binding.check_binding compares it later


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, NONCE + b"\x00", NONCE[:-1] + bytes([NONCE[-1] ^ 1])])
def test_nonce_of_wrong_value_or_length_is_a_mismatch(bad: bytes) -> None:
    with pytest.raises(VerificationFailed) as err:
        _verify(EVIDENCE, nonce=bad)
    assert err.value.reason == Reason.NONCE_MISMATCH


def test_test_ca_is_not_trusted_by_default() -> None:
    """Without trusted_roots the pinned NVIDIA root applies, and the test CA is refused."""
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(nvgpu.parse(EVIDENCE), at=AT, certs=CHAIN, nonce=NONCE)
    assert err.value.reason == Reason.CHAIN_UNTRUSTED


def test_certs_in_any_order_and_split_between_bundle_and_argument() -> None:
    assert _verify(EVIDENCE, certs=list(reversed(CHAIN)))
    bundle = [{"evidence": base64.b64encode(EVIDENCE).decode(),
               "certificate": base64.b64encode(b"".join(c.public_bytes(Encoding.PEM) for c in CHAIN[:2])).decode()}]
    parsed = nvgpu.parse(json.dumps(bundle).encode())
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(parsed, at=AT, nonce=NONCE, trusted_roots=ROOTS)
    assert err.value.reason == Reason.CHAIN_UNTRUSTED  # the upper CAs are missing
    v = nvgpu.verify(parsed, at=AT, certs=CHAIN[2:], nonce=NONCE, trusted_roots=ROOTS)
    assert v.claims["nonce"] == NONCE


def test_validity_window_edges() -> None:
    leaf = CHAIN[0]
    assert _verify(EVIDENCE, at=leaf.not_valid_after_utc)
    for at in (leaf.not_valid_after_utc + timedelta(seconds=1), leaf.not_valid_before_utc - timedelta(seconds=1)):
        with pytest.raises(VerificationFailed) as err:
            _verify(EVIDENCE, at=at)
        assert err.value.reason == Reason.CERT_EXPIRED


def test_naive_time_and_collateral_are_refused() -> None:
    parsed = nvgpu.parse(EVIDENCE)
    with pytest.raises(ValueError):
        nvgpu.verify(parsed, at=AT.replace(tzinfo=None), certs=CHAIN, trusted_roots=ROOTS)
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(parsed, at=AT, certs=CHAIN, trusted_roots=ROOTS, collateral=object())
    assert err.value.reason == Reason.UNSUPPORTED
    # nvgpu collateral is NVIDIA RIMs: a folder without any RIM is malformed collateral
    with pytest.raises(MalformedEvidence) as err:
        nvgpu.load_collateral(DATA)
    assert err.value.reason == Reason.MALFORMED


def test_pinned_root_with_wrong_fingerprint_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "nvidia_device_identity_root.pem").write_bytes((DATA / "test_root.pem").read_bytes())
    with pytest.raises(VerificationFailed) as err:
        nvgpu_chain.pinned_roots(tmp_path)
    assert err.value.reason == Reason.CHAIN_UNTRUSTED
    with pytest.raises(VerificationFailed) as err:
        nvgpu_chain.pinned_roots(tmp_path / "absent")
    assert err.value.reason == Reason.CHAIN_UNTRUSTED


def test_generator_still_produces_verifying_vectors(tmp_path: Path) -> None:
    generated = _load_generator().generate(tmp_path)
    roots = _certs_at(tmp_path, "test_root.pem")
    v = nvgpu.verify(nvgpu.parse((tmp_path / "evidence.bin").read_bytes()), at=AT,
                     certs=_certs_at(tmp_path, "chain.pem"), nonce=NONCE, trusted_roots=roots)
    assert v.claims["fwid"].hex() == generated["fwid"]
    with pytest.raises(VerificationFailed) as err:
        nvgpu.verify(nvgpu.parse((tmp_path / "neg_fwid_mismatch.bin").read_bytes()), at=AT,
                     certs=_certs_at(tmp_path, "chain.pem"), nonce=NONCE, trusted_roots=roots)
    assert err.value.reason == Reason.CHAIN_UNTRUSTED
    assert not [f for f in tmp_path.iterdir() if b"PRIVATE KEY" in f.read_bytes()]  # keys stay in memory


def _certs_at(folder: Path, name: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((folder / name).read_bytes())


# --- mutation ------------------------------------------------------------------------------

def test_every_flipped_byte_in_the_signed_region_is_rejected() -> None:
    spdm = parse_spdm(EVIDENCE)
    signed_end = len(spdm.signed_bytes)
    assert signed_end == len(EVIDENCE) - SIGNATURE_LEN
    for pos in range(len(EVIDENCE)):
        mutated = bytearray(EVIDENCE)
        mutated[pos] ^= 0x01
        try:
            _verify(bytes(mutated))
        except (MalformedEvidence, VerificationFailed) as exc:
            if pos >= signed_end:  # a flipped signature byte is a bad signature, nothing else
                assert exc.reason == Reason.SIGNATURE_INVALID, pos
            continue
        pytest.fail(f"evidence with byte {pos} flipped still verified")


def test_flipping_a_trailing_unsigned_byte_changes_nothing() -> None:
    data = bytearray((DATA / "evidence_trailing_byte.bin").read_bytes())
    data[-1] ^= 0xFF
    assert _verify(bytes(data)).claims["measurements"] == _verify(EVIDENCE).claims["measurements"]


# --- parser --------------------------------------------------------------------------------

def test_every_truncation_is_malformed() -> None:
    for n in range(len(EVIDENCE)):
        with pytest.raises(MalformedEvidence):
            nvgpu.parse(EVIDENCE[:n])


def _edit(offset: int, value: bytes) -> bytes:
    data = bytearray(EVIDENCE)
    data[offset:offset + len(value)] = value
    return bytes(data)


_R = REQUEST_LEN  # response offset
_BLOCK0 = _R + 8  # first measurement block
_OPAQUE_LEN_AT = _R + 8 + parse_spdm(EVIDENCE).response.record_length + 32


@pytest.mark.parametrize("label, data", [
    ("spdm 1.2", _edit(0, b"\x12")[:_R] + b"\x12" + EVIDENCE[_R + 1:]),
    ("request code", _edit(1, b"\xe1")),
    ("no signature requested", _edit(2, b"\x00")),
    ("response code", _edit(_R + 1, b"\x61")),
    ("response version differs", _edit(_R, b"\x10")),
    ("zero blocks", _edit(_R + 4, b"\x00")),
    ("more blocks than recorded", _edit(_R + 4, b"\x09")),
    ("record length short", _edit(_R + 5, (parse_spdm(EVIDENCE).response.record_length - 1).to_bytes(3, "little"))),
    ("not DMTF", _edit(_BLOCK0 + 1, b"\x02")),
    ("reserved index", _edit(_BLOCK0, b"\x00")),
    ("duplicate index", _edit(_BLOCK0 + 4 + 51, b"\x01")),
    ("dmtf size inconsistent", _edit(_BLOCK0 + 4 + 1, b"\x2f\x00")),
    ("opaque too long for SPDM", _edit(_OPAQUE_LEN_AT, (1025).to_bytes(2, "little"))),
    ("opaque past the end", _edit(_OPAQUE_LEN_AT, (1000).to_bytes(2, "little"))),
    ("TLV overruns opaque", _edit(_OPAQUE_LEN_AT + 2 + 2, b"\xff\x00")),
    ("empty", b""),
    ("garbage", b"\x00" * 200),
    ("text", b"hello, world"),
])
def test_structural_defects_are_malformed(label: str, data: bytes) -> None:
    with pytest.raises(MalformedEvidence) as err:
        nvgpu.parse(data)
    assert err.value.reason == Reason.MALFORMED, label


def test_duplicate_opaque_type_is_malformed() -> None:
    spdm = parse_spdm(EVIDENCE)
    opaque_start = _OPAQUE_LEN_AT + 2
    first = spdm.response.opaque_fields[0]
    # rewrite the second TLV's type to the first's (sizes unchanged)
    second_at = opaque_start + 4 + len(first.value)
    with pytest.raises(MalformedEvidence):
        nvgpu.parse(_edit(second_at, first.type.to_bytes(2, "little")))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_parse_only_raises_malformed(blob: bytes) -> None:
    for data in (blob, EVIDENCE[:REQUEST_LEN + 8] + blob, EVIDENCE[:len(blob) // 2] + blob):
        try:
            nvgpu.parse(data)
        except MalformedEvidence:
            pass


# --- JSON bundle and sniffing --------------------------------------------------------------

def _bundle() -> list[dict]:
    return json.loads((DATA / "evidence_bundle.json").read_text())


def test_bundle_claims_keep_per_device_values() -> None:
    v = nvgpu.verify(nvgpu.parse((DATA / "evidence_bundle.json").read_bytes()), at=AT, nonce=NONCE,
                     trusted_roots=ROOTS)
    c = v.claims
    assert c["device_count"] == 2 and len(c["devices"]) == 2
    assert [d["ueid"] for d in c["devices"]] == ["NVIDIA:GH100:4143000000000001", "NVIDIA:GH100:4143000000000002"]
    assert "ueid" not in c  # devices differ: not at the top level, so a policy on it fails closed
    assert c["measurements"] == c["devices"][0]["measurements"]  # same firmware: shared


@pytest.mark.parametrize("label, mutate", [
    ("bad base64", lambda b: b[0].update(evidence="%%%")),
    ("evidence not a string", lambda b: b[0].update(evidence=5)),
    ("declared nonce differs", lambda b: b[0].update(nonce="00" * 32)),
    ("declared nonce not hex", lambda b: b[0].update(nonce="zz")),
    ("arch contradicts certificate", lambda b: b[0].update(arch="BLACKWELL")),
    ("certificate not PEM", lambda b: b[0].update(certificate=base64.b64encode(b"nope").decode())),
    ("entries answer different nonces", lambda b: b[1].update(
        evidence=base64.b64encode((DATA / "neg_nonce_other.bin").read_bytes()).decode(), nonce=None)),
])
def test_bundle_defects_are_malformed(label: str, mutate) -> None:
    bundle = _bundle()
    mutate(bundle)
    bundle = [{k: v for k, v in e.items() if v is not None} for e in bundle]
    with pytest.raises(MalformedEvidence):
        nvgpu.parse(json.dumps(bundle).encode())


@pytest.mark.parametrize("doc", [b"[]", b"{}", b"[1, 2]", b"{\"evidence\": \"\"}", b"[{\"certificate\": \"\"}]",
                                 b"{not json"])
def test_bad_json_documents_are_malformed(doc: bytes) -> None:
    with pytest.raises(MalformedEvidence):
        nvgpu.parse(doc)


def test_single_object_and_hex_inputs() -> None:
    single = json.dumps(_bundle()[1]).encode()
    assert nvgpu.parse(single).source == "sdk-json"
    assert _verify(single, certs=()).claims["ueid"] == "NVIDIA:GH100:4143000000000002"
    hex_text = EVIDENCE.hex().encode() + b"\n"
    assert nvgpu.parse(hex_text).source == "spdm-hex"
    assert _verify(hex_text).claims == _verify(EVIDENCE).claims


def test_looks_like() -> None:
    assert nvgpu.looks_like(EVIDENCE)
    assert nvgpu.looks_like(EVIDENCE.hex().encode())
    assert nvgpu.looks_like((DATA / "evidence_bundle.json").read_bytes())
    for other in (b"", b"\x04\x00\x02\x00" + b"\x00" * 1000, b"\x02\x00\x00\x00" + b"\x00" * 1180,
                  b'{"format": "conclave-sim-evidence", "payload": "", "signature": ""}',
                  b"[1,2,3]", b"deadbeef" * 20):
        assert not nvgpu.looks_like(other)
