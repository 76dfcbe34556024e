"""TDX verification steps, one defect at a time, with the project's own Intel-shaped test CA.

The vectors under tests/data/tdx/ come from tests/data/tdx/make_vectors.py (see PROVENANCE.md).
Each case in cases.json is valid except for one defect and names the step that must fail and
the reason, or the TCB status and advisories it must produce. dcap-qvl 0.7.0 verifies the same
vectors against the same test root as an independent check.
"""
from __future__ import annotations

import json
import struct
from datetime import datetime
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conclave.runtime.attestation import tdx
from conclave.runtime.attestation.core import MalformedEvidence, Reason, VerificationFailed

DATA = Path(__file__).resolve().parent.parent / "data" / "tdx"
CASES: dict[str, dict] = json.loads((DATA / "cases.json").read_text())
ROOT = x509.load_pem_x509_certificate((DATA / "test_root_ca.pem").read_bytes())
ROGUE_ROOT = x509.load_pem_x509_certificate((DATA / "rogue_root_ca.pem").read_bytes())
AT = datetime.fromisoformat(CASES["valid_v4"]["at"].replace("Z", "+00:00"))

ALL_STEPS = ["tdx.01.parse_header", "tdx.02.parse_body", "tdx.03.pck_chain", "tdx.04.pck_revocation",
             "tdx.05.qe_report_signature", "tdx.06.qe_report_data", "tdx.07.quote_signature",
             "tdx.08.tcb_signing_chain", "tdx.09.tcb_info", "tdx.10.qe_identity", "tdx.11.tdx_module",
             "tdx.12.qe_identity_match", "tdx.13.tcb_level"]


def _quote(name: str = "v4_valid") -> bytes:
    return (DATA / "quotes" / f"{name}.bin").read_bytes()


def _coll(name: str = "base"):
    return tdx.load_collateral(DATA / "collateral" / f"{name}.json")


def _verify(data: bytes, collateral=None, **kw):
    kw.setdefault("trusted_roots", [ROOT])
    kw.setdefault("at", AT)
    return tdx.verify(tdx.parse(data), collateral=collateral, **kw)


def test_every_step_has_a_failing_case():
    failing_steps = {c["step"] for c in CASES.values() if "reason" in c["expect"]}
    # 01/02 are parse steps: their defects are malformed quotes (see the parse tests below)
    assert failing_steps == set(ALL_STEPS[2:])


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name: str):
    case = CASES[name]
    data = (DATA / case["quote"]).read_bytes()
    coll = tdx.load_collateral(DATA / case["collateral"]) if case["collateral"] else None
    at = datetime.fromisoformat(case["at"].replace("Z", "+00:00"))
    expect = case["expect"]
    if "reason" in expect:
        with pytest.raises(VerificationFailed) as err:
            _verify(data, coll, at=at)
        assert err.value.reason == expect["reason"]
        steps = err.value.steps
        assert steps[-1].step == case["step"] and steps[-1].ok is False
        assert all(s.ok for s in steps[:-1])
        assert [s.step for s in steps] == ALL_STEPS[:ALL_STEPS.index(case["step"]) + 1]
        return
    v = _verify(data, coll, at=at)
    assert v.tcb_status == expect["status"]
    assert list(v.advisory_ids) == expect["advisory_ids"]
    assert v.claims["advisory_ids"] == expect["advisory_ids"]
    assert v.claims["debug"] is expect.get("debug", False)
    assert v.steps[-1].step == case["step"]
    assert v.revocation_checked is (coll is not None)


DCAP = sorted(n for n, c in CASES.items() if "dcap_qvl" in c)


@pytest.mark.parametrize("name", DCAP)
def test_dcap_qvl_cross_check(name: str):
    """dcap-qvl with the same test root must agree, except where the case documents the difference."""
    case = CASES[name]
    raw = (DATA / case["quote"]).read_bytes()
    collateral = dcap_qvl.QuoteCollateralV3.from_json((DATA / case["collateral"]).read_text())
    root_der = ROOT.public_bytes(serialization.Encoding.DER)
    now = int(datetime.fromisoformat(case["at"].replace("Z", "+00:00")).timestamp())
    if case["dcap_qvl"] == "error":
        with pytest.raises(ValueError):
            dcap_qvl.verify_with_root_ca(raw, collateral, root_der, now)
    else:
        report = dcap_qvl.verify_with_root_ca(raw, collateral, root_der, now)
        assert report.status == case["dcap_qvl"]
    ours = case["expect"]
    agrees = (ours.get("status") == case["dcap_qvl"]) or ("reason" in ours and case["dcap_qvl"] == "error")
    if not agrees:
        assert case.get("dcap_qvl_note"), f"{name}: dcap-qvl differs without a documented reason"
    if "status" in ours and ours["status"] == case["dcap_qvl"]:
        report = dcap_qvl.verify_with_root_ca(raw, collateral, root_der, now)
        assert list(report.advisory_ids) == ours["advisory_ids"]


def test_default_roots_refuse_the_test_ca():
    with pytest.raises(VerificationFailed) as err:
        tdx.verify(tdx.parse(_quote()), at=AT)
    assert err.value.reason == "chain_untrusted" and err.value.steps[-1].step == "tdx.03.pck_chain"
    with pytest.raises(VerificationFailed) as err:
        _verify(_quote(), trusted_roots=[ROGUE_ROOT])
    assert err.value.reason == "chain_untrusted"


def test_intermediate_from_certs():
    """A quote embedding only the leaf verifies when --certs supplies the PCK CA."""
    ca = [c for c in tdx.parse(_quote()).pck_chain if "Platform CA" in c.subject.rfc4514_string()]
    v = _verify(_quote("pck_no_intermediate"), _coll(), certs=ca)
    assert v.tcb_status == "UpToDate"


def test_no_crls_means_revocation_unchecked(tmp_path: Path):
    d = json.loads((DATA / "collateral" / "base.json").read_text())
    d["pck_crl"] = ""
    d.pop("root_ca_crl")
    path = tmp_path / "no_crl.json"
    path.write_text(json.dumps(d))
    v = _verify(_quote(), tdx.load_collateral(path))
    assert v.tcb_status == "UpToDate" and v.revocation_checked is False
    assert any("Root CA CRL and PCK CRL" in n for n in v.notes)


def test_no_collateral_notes_it():
    v = _verify(_quote())
    assert v.tcb_status is None and v.revocation_checked is False
    assert v.claims["tcb_status"] is None and v.advisory_ids == ()
    assert any("no collateral" in n for n in v.notes)


# ---------------------------------------------------------------------------------------------
# load_collateral
# ---------------------------------------------------------------------------------------------

def test_pcs_folder_equals_json():
    folder = tdx.load_collateral(DATA / "pcs_base")
    as_json = _coll()
    assert folder.tcb_info_raw == as_json.tcb_info_raw and folder.qe_identity_raw == as_json.qe_identity_raw
    assert folder.pck_crl is not None and folder.root_ca_crl is not None
    assert _verify(_quote(), folder).tcb_status == "UpToDate"


def test_pcs_folder_with_url_encoded_chain_and_pem_crls(tmp_path: Path):
    import urllib.parse
    src = DATA / "pcs_base"
    for f in ("tcb_info_response.json", "qe_identity_response.json"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    (tmp_path / "TCB-Info-Issuer-Chain.txt").write_text(urllib.parse.quote((src / "tcb_signing_chain.pem").read_text()))
    for f in ("root_ca_crl.der", "pckcrl_platform.der"):
        crl = x509.load_der_x509_crl((src / f).read_bytes())
        (tmp_path / f.replace(".der", ".pem")).write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    coll = tdx.load_collateral(tmp_path)
    assert coll.tcb_info_issuer_chain and coll.pck_crl is not None and coll.root_ca_crl is not None
    assert _verify(_quote(), coll).revocation_checked is True


@pytest.mark.parametrize("encoding", ["pem", "base64"])
def test_json_crl_encodings(tmp_path: Path, encoding: str):
    import base64
    d = json.loads((DATA / "collateral" / "pck_revoked.json").read_text())
    der = bytes.fromhex(d["pck_crl"])
    crl = x509.load_der_x509_crl(der)
    d["pck_crl"] = (crl.public_bytes(serialization.Encoding.PEM).decode() if encoding == "pem"
                    else base64.b64encode(der).decode())
    path = tmp_path / "c.json"
    path.write_text(json.dumps(d))
    with pytest.raises(VerificationFailed) as err:
        _verify(_quote(), tdx.load_collateral(path))
    assert err.value.reason == "cert_revoked"


@pytest.mark.parametrize("mutate", [
    lambda d: "not json",
    lambda d: json.dumps({**d, "tcb_info": "{"}),
    lambda d: json.dumps({k: v for k, v in d.items() if k != "qe_identity"}),
    lambda d: json.dumps({**d, "tcb_info_signature": "zz"}),
    lambda d: json.dumps({**d, "qe_identity_signature": "00" * 63}),
    lambda d: json.dumps({**d, "pck_crl": "30deadbeef"}),
    lambda d: json.dumps({**d, "tcb_info_issuer_chain": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}),
    lambda d: json.dumps({**d, "tcb_info": json.dumps({**json.loads(d["tcb_info"]), "tcbLevels": []})}),
    lambda d: json.dumps({**d, "tcb_info": json.dumps({**json.loads(d["tcb_info"]), "fmspc": "00"})}),
    lambda d: json.dumps({**d, "qe_identity": json.dumps({**json.loads(d["qe_identity"]), "tcbLevels": [
        {"tcb": {"isvsvn": 1}, "tcbStatus": "Great"}]})}),
    lambda d: json.dumps([d]),
])
def test_bad_collateral_is_collateral_invalid(tmp_path: Path, mutate):
    d = json.loads((DATA / "collateral" / "base.json").read_text())
    path = tmp_path / "c.json"
    path.write_text(mutate(d))
    with pytest.raises(VerificationFailed) as err:
        tdx.load_collateral(path)
    assert err.value.reason == "collateral_invalid"


def test_collateral_folder_without_tcb_info(tmp_path: Path):
    (tmp_path / "root_ca_crl.der").write_bytes((DATA / "pcs_base" / "root_ca_crl.der").read_bytes())
    with pytest.raises(VerificationFailed) as err:
        tdx.load_collateral(tmp_path)
    assert err.value.reason == "collateral_invalid"
    with pytest.raises(VerificationFailed) as err:
        tdx.load_collateral(tmp_path / "absent.json")
    assert err.value.reason == "collateral_invalid"


def test_collateral_cache_follows_file_changes(tmp_path: Path):
    path = tmp_path / "c.json"
    path.write_bytes((DATA / "collateral" / "base.json").read_bytes())
    first = tdx.load_collateral(path)
    assert tdx.load_collateral(path) is first
    path.write_bytes((DATA / "collateral" / "tcb_info_expired.json").read_bytes())
    second = tdx.load_collateral(path)
    assert second is not first and second.tcb_info.next_update < first.tcb_info.next_update


# ---------------------------------------------------------------------------------------------
# parse: steps 01 (header) and 02 (body, signature data); every bound -> MalformedEvidence
# ---------------------------------------------------------------------------------------------

def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


V4 = _quote()
V5 = _quote("v5_valid")
SIG4 = 632  # offset of sig_data_len in a v4 quote
CERT4 = SIG4 + 4 + 128  # certification data type


@pytest.mark.parametrize("data", [
    _patch(V4, 0, "<H", 3),                      # version 3 (SGX-era)
    _patch(V4, 0, "<H", 6),                      # unknown version
    _patch(V4, 2, "<H", 3),                      # attestation key type ECDSA-384
    _patch(V4, 4, "<I", 0),                      # TEE type SGX
    _patch(V5, 48, "<H", 4),                     # v5 body type 4 (unsupported)
    _patch(V5, 48, "<H", 1),                     # v5 body type 1 (SGX)
    _patch(V5, 50, "<I", 584),                   # body size disagrees with type 3
    _patch(V4, SIG4, "<I", 0xFFFFFFFF),          # sig data runs past the end
    _patch(V4, SIG4, "<I", len(V4) - SIG4 - 4 - 70 - 1),  # one byte short: cert data does not fit
    _patch(V4, SIG4, "<I", 0x1010),              # go-tdx-guest mutation: 0x278 := 0x10
    _patch(V4, CERT4, "<H", 5),                  # outer certification data type 5 instead of 6
    _patch(V4, CERT4 + 2, "<I", 10),             # outer certification data size
    _patch(V4, CERT4 + 6 + 384 + 64, "<H", 0xFFFF),  # QE auth data size past the end
    _patch(V4, CERT4 + 6 + 384 + 64 + 2 + 32, "<H", 3),  # nested type 3 instead of 5
    _patch(V4, CERT4 + 6 + 384 + 64 + 2 + 32 + 2, "<I", 100),  # nested size
    V4[:47], V4[:631], V4[:700], b"", b"\x00" * 5000,
])
def test_malformed_quotes(data: bytes):
    with pytest.raises(MalformedEvidence) as err:
        tdx.parse(data)
    assert err.value.reason == Reason.MALFORMED


def test_every_truncation_is_malformed():
    end = len(V4) - 70  # without the trailing padding
    for cut in range(0, end, 7):
        with pytest.raises(MalformedEvidence):
            tdx.parse(V4[:cut])
    assert tdx.parse(V4[:end]).trailing_bytes == 0


def _with_chain(q, chain_pem: bytes) -> bytes:
    """The quote `q` with its embedded PCK chain replaced (signatures over header/body/QE report kept)."""
    chain_pem += b"\x00"
    cert_data = (q.qe_report.raw + q.qe_report_signature + struct.pack("<H", len(q.qe_auth_data)) + q.qe_auth_data
                 + struct.pack("<HI", 5, len(chain_pem)) + chain_pem)
    sig_data = q.quote_signature + q.attestation_key + struct.pack("<HI", 6, len(cert_data)) + cert_data
    return q.signed + struct.pack("<I", len(sig_data)) + sig_data


def test_tampered_embedded_root_is_refused():
    q = tdx.parse(V4)
    leaf, ca, _ = q.pck_chain
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca))
    assert _verify(_with_chain(q, pem)).tcb_status is None  # no embedded root copy: fine (the root is pinned)
    with pytest.raises(VerificationFailed) as err:
        _verify(_with_chain(q, pem + ROGUE_ROOT.public_bytes(serialization.Encoding.PEM)))
    assert err.value.reason == "chain_untrusted" and err.value.steps[-1].step == "tdx.03.pck_chain"


def test_broken_pem_and_missing_sgx_extension():
    q = tdx.parse(V4)
    start = V4.index(b"-----BEGIN CERTIFICATE-----")
    broken = bytearray(V4)
    broken[start + 30] ^= 0x40  # inside the base64 body's first line
    with pytest.raises((MalformedEvidence, VerificationFailed)):
        _verify(bytes(broken))
    # the PCK Platform CA (no SGX extension) in the leaf position
    with pytest.raises(MalformedEvidence):
        tdx.parse(_with_chain(q, q.pck_chain[1].public_bytes(serialization.Encoding.PEM)))
    with pytest.raises(MalformedEvidence):
        tdx.parse(_with_chain(q, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
    with pytest.raises(MalformedEvidence):
        tdx.parse(_with_chain(q, b""))


def test_parse_only_raises_malformed_on_random_mutations():
    """Length fields and bytes overwritten at many offsets: never IndexError/struct.error."""
    import random

    from conclave.runtime.attestation.tdx_quote import parse_quote  # the raw parser, without tdx.parse's net

    rng = random.Random(1234)
    length_fields = [0, 2, 4, 48, 50, SIG4, CERT4, CERT4 + 2, CERT4 + 6 + 384 + 64,
                     CERT4 + 6 + 384 + 64 + 2 + 32, CERT4 + 6 + 384 + 64 + 2 + 32 + 2]
    rejected = 0
    for _ in range(600):
        data = bytearray(V5 if rng.random() < 0.5 else V4)
        for _ in range(rng.randint(1, 4)):
            pos = rng.choice(length_fields) if rng.random() < 0.6 else rng.randrange(len(data))
            data[pos:pos + 4] = rng.randbytes(4)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]
        try:
            parse_quote(bytes(data))
        except MalformedEvidence:
            rejected += 1
    assert rejected > 100  # the mutations do reach the bounds checks


# ---------------------------------------------------------------------------------------------
# mutation: any flipped byte in the signed region (header+body) or in the QE report is rejected
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["v4_valid", "v5_valid"])
def test_flipped_byte_in_signed_region_or_qe_report_is_rejected(name: str):
    data = _quote(name)
    q = tdx.parse(data)
    coll = _coll()
    assert _verify(data, coll).tcb_status == "UpToDate"
    qe_start = data.index(q.qe_report.raw)
    offsets = list(range(len(q.signed))) + list(range(qe_start, qe_start + 384))
    for offset in offsets:
        mutated = bytearray(data)
        mutated[offset] ^= 0x01
        with pytest.raises((MalformedEvidence, VerificationFailed)):
            _verify(bytes(mutated), coll)


def test_flipped_signature_key_or_auth_data_is_rejected():
    q = tdx.parse(V4)
    base = len(q.signed) + 4
    regions = [(base, base + 128)]  # quote signature, attestation key
    auth = V4.index(q.qe_report_signature)
    regions += [(auth, auth + 64 + 2 + 32)]  # QE report signature, auth size, auth data
    for start, end in regions:
        for offset in range(start, end):
            mutated = bytearray(V4)
            mutated[offset] ^= 0x80
            with pytest.raises((MalformedEvidence, VerificationFailed)):
                _verify(bytes(mutated))


# ---------------------------------------------------------------------------------------------
# interface conformance (the CLI and the dispatcher rely on it)
# ---------------------------------------------------------------------------------------------

def test_interface_and_claims():
    from conclave.runtime.attestation import core
    from conclave.runtime.attestation import parse as dispatch_parse

    assert tdx.TEE == core.TeeType.TDX
    assert tdx.looks_like(V4) and tdx.looks_like(V5) and not tdx.looks_like(b"{}")
    tee, parsed = dispatch_parse(V5)
    assert tee == core.TeeType.TDX
    c = tdx.claims(parsed)
    for name in ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id", "mr_owner", "mr_owner_config",
                 "mr_seam", "mr_signer_seam", "td_attributes", "xfam", "report_data"):
        assert isinstance(c[name], bytes), name
    assert len(c["tee_tcb_svn"]) == 16 and len(c["fmspc"]) == 6 and len(c["report_data"]) == 64
    assert c["version"] == 5 and c["debug"] is False and c["tcb_status"] is None and c["advisory_ids"] == []
    assert isinstance(c["qe_svn"], int) and isinstance(c["pce_svn"], int) and c["tee_type"] == 0x81
    assert len(c["tee_tcb_svn2"]) == 16 and len(c["mr_servicetd"]) == 48
    json.dumps(core.claims_to_json(c))
    assert tdx.FINGERPRINTS["intel_sgx_root_ca.pem"] == tdx.intel_root().fingerprint(
        __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()).hex()


def test_collateral_parsers_only_raise_collateral_invalid():
    """Randomly reshaped TCB info / QE identity JSON: collateral_invalid, never KeyError/TypeError."""
    import random

    from conclave.runtime.attestation.tdx_collateral import parse_qe_identity, parse_tcb_info

    rng = random.Random(99)
    d = json.loads((DATA / "collateral" / "base.json").read_text())
    junk = [None, 1, -1, 256, "x", "zz", [], {}, [1], {"svn": "1"}, True, 1.5]

    def reshape(node):
        if isinstance(node, dict) and node:
            key = rng.choice(sorted(node))
            if rng.random() < 0.3:
                node.pop(key)
            elif rng.random() < 0.5:
                node[key] = json.loads(json.dumps(rng.choice(junk)))
            else:
                reshape(node[key])
        elif isinstance(node, list) and node:
            i = rng.randrange(len(node))
            if rng.random() < 0.5:
                node[i] = json.loads(json.dumps(rng.choice(junk)))
            else:
                reshape(node[i])

    for parser, text in ((parse_tcb_info, d["tcb_info"]), (parse_qe_identity, d["qe_identity"])):
        failures = 0
        for _ in range(300):
            obj = json.loads(text)
            for _ in range(rng.randint(1, 3)):
                reshape(obj)
            try:
                parser(json.dumps(obj).encode())
            except VerificationFailed as exc:
                assert exc.reason == "collateral_invalid"
                failures += 1
        assert failures > 50
