"""TDX against the real public vectors in ../shared/vectors/tdx (read in place, never copied).

Every folder must parse with the values of its expected.json and verify at its recorded time
with its recorded outcome (PROVENANCE.md / expected.json "expected_outcome"). dcap-qvl 0.7.0 is
an independent cross-check: on every vector with QuoteCollateralV3 collateral it must agree
with this verifier, or the test names the known difference.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509

from conclave.runtime.attestation import tdx
from conclave.runtime.attestation.core import MalformedEvidence, VerificationFailed


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Outcome:
    """What the vector's expected.json says verification at `at` yields."""

    collateral: str | None  # relative to vectors/tdx
    at: str
    status: str | None = None
    reason: str | None = None
    revocation_checked: bool = True
    certs: tuple[str, ...] = ()
    dcap_qvl: str | None = None  # dcap-qvl status, "error: <substring>", or None when it cannot run
    dcap_qvl_note: str = ""


UPTODATE_COLL = "dcap-qvl-v4-uptodate/collateral.json"
OUTCOMES: dict[str, Outcome] = {
    # asserted upstream: UpToDate, no advisories
    "dcap-qvl-v4-uptodate": Outcome(UPTODATE_COLL, "2025-07-19T10:00:34Z", status="UpToDate", dcap_qvl="UpToDate"),
    # cross-sample pairing (same FMSPC), expected: no matching TCB level
    "dcap-qvl-v4-dstack": Outcome(UPTODATE_COLL, "2025-07-19T10:00:34Z", reason="tcb_not_found",
                                  dcap_qvl="error: No matching TCB level"),
    "dcap-qvl-v4-dstack-tappd": Outcome(UPTODATE_COLL, "2025-07-19T10:00:34Z", reason="tcb_not_found",
                                        dcap_qvl="error: No matching TCB level"),
    "dcap-qvl-v5-no-tcb-match": Outcome("dcap-qvl-v5-no-tcb-match/collateral.json", "2026-03-20T10:41:14Z",
                                        reason="tcb_not_found", dcap_qvl="error: No matching TCB level"),
    "trustee-v5-old-tcb": Outcome("trustee-v5-old-tcb/collateral.json", "2026-03-01T00:00:00Z",
                                  reason="tcb_not_found", dcap_qvl="error: No matching TCB level"),
    # asserted upstream (go-tdx-guest TestNegativeRawQuoteVerifyWithCollateral): no matching TCB level
    "go-tdx-guest-v4-spr": Outcome("go-tdx-guest-v4-spr/collateral.json", "2023-07-01T01:00:00Z",
                                   reason="tcb_not_found", dcap_qvl="error: No matching TCB level"),
    "trustee-v4-spr-2023": Outcome(
        "go-tdx-guest-v4-spr/collateral.json", "2023-07-01T00:00:00Z", status="UpToDate",
        dcap_qvl="error: Debug mode is enabled",
        dcap_qvl_note="the TD has TD_ATTRIBUTES.DEBUG set: dcap-qvl refuses debug TDs during verification, "
                      "this verifier reports debug=True and leaves the refusal to the policy"),
    # PCS bodies without CRLs (none of that date exist): revocation not checked; TCB Signing chain beside pcs/
    "trustee-v4-tdx03-outofdate": Outcome("trustee-v4-tdx03-outofdate", "2025-11-01T00:00:00Z", status="OutOfDate",
                                          revocation_checked=False),
    # no collateral exists for FMSPC 00806f050000: chain and signatures only
    "go-tdx-guest-gcp-cos113-ccel": Outcome(None, "2025-01-01T00:00:00Z", revocation_checked=False),
    "trustee-azure-tdx-vtpm": Outcome(None, "2025-01-01T00:00:00Z", revocation_checked=False),
}


@pytest.fixture(scope="module")
def tdx_dir(vectors_dir: Path) -> Path:
    path = vectors_dir / "tdx"
    assert path.is_dir(), f"{path} missing from the shared vectors"
    return path


def _folders(tdx_dir: Path) -> list[str]:
    return sorted(p.name for p in tdx_dir.iterdir() if (p / "expected.json").is_file())


def test_every_vector_folder_has_an_outcome(tdx_dir: Path):
    assert _folders(tdx_dir) == sorted(OUTCOMES)


def _expected(tdx_dir: Path, name: str) -> dict:
    return json.loads((tdx_dir / name / "expected.json").read_text())


def _quote_file(tdx_dir: Path, name: str, expected: dict) -> Path:
    """quote.bin, or the full buffer when expected.json describes the untrimmed buffer."""
    default = tdx_dir / name / "quote.bin"
    if default.stat().st_size == expected["quote_size"]:
        return default
    matches = [p for p in (tdx_dir / name).glob("quote*.bin") if p.stat().st_size == expected["quote_size"]]
    assert matches, f"{name}: no quote file of {expected['quote_size']} bytes"
    return matches[0]


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_parse_matches_expected(tdx_dir: Path, name: str):
    expected = _expected(tdx_dir, name)
    data = _quote_file(tdx_dir, name, expected).read_bytes()
    assert tdx.looks_like(data)
    q = tdx.parse(data)

    h = expected["header"]
    assert q.header.version == h["version"]
    assert q.header.att_key_type == h["att_key_type"]
    assert q.header.tee_type == int(h["tee_type"], 16)
    assert q.header.qe_vendor_id.hex() == h["qe_vendor_id"]
    assert q.header.user_data.hex() == h["user_data"]
    assert q.header.reserved.hex() == expected["header_bytes_8_12"]
    assert q.body_type == expected["body_type"]
    assert len(q.signed) == expected["signed_region"]["end_exclusive"]
    assert len(q.raw) - len(q.signed) - 4 == expected["sig_data_len"]
    assert q.trailing_bytes == expected["trailing_bytes_after_sig_data"]
    assert len(q.pck_chain_pem) == expected["pck_chain_pem_len"]

    for field, value in expected.get("body", {}).items():
        assert getattr(q.body, field).hex() == value, field
    if "body_size" in expected:
        assert len(q.signed) - 48 - 6 == expected["body_size"]

    r = expected["qe_report"]
    assert q.qe_report.cpu_svn.hex() == r["cpusvn"]
    assert q.qe_report.miscselect == int(r["miscselect"], 16)
    assert q.qe_report.attributes.hex() == r["attributes"]
    assert q.qe_report.mr_enclave.hex() == r["mrenclave"]
    assert q.qe_report.mr_signer.hex() == r["mrsigner"]
    assert q.qe_report.isv_prod_id == r["isvprodid"]
    assert q.qe_report.isv_svn == r["isvsvn"]
    assert q.qe_report.report_data.hex() == r["report_data"]
    assert q.qe_auth_data.hex() == expected["qe_auth_data"]

    ext = expected.get("pck_cert_extensions")
    if ext:
        assert q.pck.ppid.hex() == ext["ppid"]
        assert q.pck.pce_svn == ext["pcesvn"]
        assert q.pck.cpu_svn.hex() == ext["cpusvn"]
        assert list(q.pck.sgx_tcb_components) == ext["sgx_tcb_comp_svns"]
        assert q.pck.pce_id.hex() == ext["pceid"]
        assert q.pck.fmspc.hex() == ext["fmspc"]
        assert q.pck.sgx_type == ext["sgx_type"]
    for cert, want in zip(q.pck_chain, expected.get("pck_chain", [])):
        assert cert.not_valid_before_utc == _t(want["not_before"])
        assert cert.not_valid_after_utc == _t(want["not_after"])

    c = tdx.claims(q)
    assert c["version"] == h["version"]
    assert c["debug"] is bool(q.body.td_attributes[0] & 1)
    assert c["qe_svn"] == r["isvsvn"]
    assert c["report_data"] == q.body.report_data and len(c["report_data"]) == 64


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_parse_agrees_with_dcap_qvl(tdx_dir: Path, name: str):
    """Independent parsers, same fields: dcap-qvl's report and PCK extension vs this parser's claims."""
    data = (tdx_dir / name / "quote.bin").read_bytes()
    ours = tdx.claims(tdx.parse(data))
    theirs = dcap_qvl.parse_quote(data)
    assert theirs.header.version == ours["version"]
    assert theirs.header.tee_type == ours["tee_type"]
    rep = theirs.report
    pairs = {"mr_td": "mr_td", "rtmr0": "rt_mr0", "rtmr1": "rt_mr1", "rtmr2": "rt_mr2", "rtmr3": "rt_mr3",
             "report_data": "report_data", "tee_tcb_svn": "tee_tcb_svn", "mr_seam": "mr_seam",
             "mr_signer_seam": "mr_signer_seam", "seam_attributes": "seam_attributes",
             "td_attributes": "td_attributes", "xfam": "xfam", "mr_config_id": "mr_config_id",
             "mr_owner": "mr_owner", "mr_owner_config": "mr_owner_config"}
    if "tee_tcb_svn2" in ours:
        pairs.update(tee_tcb_svn2="tee_tcb_svn2", mr_servicetd="mr_service_td")
    for mine, attr in pairs.items():
        assert bytes(getattr(rep, attr)) == ours[mine], mine
    ext = theirs.pck_extension()
    assert bytes(ext.fmspc) == ours["fmspc"]
    assert ext.pce_svn == ours["pce_svn"]
    assert bytes(ext.pce_id) == ours["pce_id"]


# ---------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------

def _collateral(tdx_dir: Path, outcome: Outcome):
    return tdx.load_collateral(tdx_dir / outcome.collateral) if outcome.collateral else None


def _certs(tdx_dir: Path, outcome: Outcome) -> list[x509.Certificate]:
    return [c for rel in outcome.certs for c in x509.load_pem_x509_certificates((tdx_dir / rel).read_bytes())]


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_verify_recorded_outcome(tdx_dir: Path, name: str):
    outcome = OUTCOMES[name]
    parsed = tdx.parse((tdx_dir / name / "quote.bin").read_bytes())
    kwargs = dict(at=_t(outcome.at), collateral=_collateral(tdx_dir, outcome), certs=_certs(tdx_dir, outcome))
    if outcome.reason:
        with pytest.raises(VerificationFailed) as err:
            tdx.verify(parsed, **kwargs)
        assert err.value.reason == outcome.reason
        assert err.value.steps[-1].ok is False
        assert all(s.ok for s in err.value.steps[:-1])
        return
    v = tdx.verify(parsed, **kwargs)
    assert v.tcb_status == outcome.status
    assert v.claims["tcb_status"] == outcome.status
    assert v.advisory_ids == ()
    assert v.revocation_checked is outcome.revocation_checked
    assert v.report_data == parsed.body.report_data
    assert v.simulated is False and v.tee == tdx.TEE
    assert all(s.ok for s in v.steps)
    names = [s.step for s in v.steps]
    assert names == sorted(names) and names[0] == "tdx.01.parse_header"
    if outcome.collateral is None:
        assert v.notes and "no collateral" in v.notes[0]
        assert "tdx.13.tcb_level" not in names
    else:
        assert names[-1] == "tdx.13.tcb_level"
    if not outcome.revocation_checked:
        assert any("revocation not checked" in n for n in v.notes)


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_signatures_and_chain_without_collateral(tdx_dir: Path, name: str):
    """expected.json crypto_checks: quote, QE report, binding and PCK chain valid for every vector."""
    parsed = tdx.parse((tdx_dir / name / "quote.bin").read_bytes())
    v = tdx.verify(parsed, at=_t(OUTCOMES[name].at))
    assert v.tcb_status is None and v.revocation_checked is False
    assert [s.step for s in v.steps][-1] == "tdx.07.quote_signature"


def test_pck_expired_in_2053(tdx_dir: Path):
    """go-tdx-guest-v4-spr expected: PCK leaf expires 2029-09-20, so the chain is invalid in 2053."""
    parsed = tdx.parse((tdx_dir / "go-tdx-guest-v4-spr/quote.bin").read_bytes())
    with pytest.raises(VerificationFailed) as err:
        tdx.verify(parsed, at=_t("2053-07-01T00:00:00Z"))
    assert err.value.reason == "cert_expired" and err.value.steps[-1].step == "tdx.03.pck_chain"


def test_pcs_folder_gives_the_same_result_as_json(tdx_dir: Path):
    parsed = tdx.parse((tdx_dir / "trustee-v4-spr-2023/quote.bin").read_bytes())
    at = _t("2023-07-01T00:00:00Z")
    folder = tdx.load_collateral(tdx_dir / "go-tdx-guest-v4-spr/pcs")
    assert folder.pck_crl is not None and folder.root_ca_crl is not None and folder.tcb_info_issuer_chain
    as_json = tdx.load_collateral(tdx_dir / "go-tdx-guest-v4-spr/collateral.json")
    # the signed bytes cut out of the raw PCS responses are exactly the strings in collateral.json
    assert folder.tcb_info_raw == as_json.tcb_info_raw
    assert folder.qe_identity_raw == as_json.qe_identity_raw
    from_folder = tdx.verify(parsed, at=at, collateral=folder)
    from_json = tdx.verify(parsed, at=at, collateral=as_json)
    assert (from_folder.tcb_status, from_folder.revocation_checked) == ("UpToDate", True)
    assert (from_json.tcb_status, from_json.revocation_checked) == ("UpToDate", True)


def test_tcb_signing_certificate_reissue_trap(tdx_dir: Path):
    """Intel reissued the TCB Signing cert with the same key: the 2018 one expired 2025-05-21.

    The signature over the 2025-10 TCB info verifies with both certificates (same key), so only the
    dates of the chain actually supplied decide: the old chain must fail at 2025-11-01.
    """
    parsed = tdx.parse((tdx_dir / "trustee-v4-tdx03-outofdate/quote.bin").read_bytes())
    at = _t("2025-11-01T00:00:00Z")
    renewed = tdx.load_collateral(tdx_dir / "trustee-v4-tdx03-outofdate")
    old_chain = tuple(x509.load_pem_x509_certificates(
        (tdx_dir / "go-tdx-guest-v4-spr/pcs/tcb_signing_chain_2018-2025.pem").read_bytes()))
    assert old_chain[0].public_key() == renewed.tcb_info_issuer_chain[0].public_key()
    stale = dataclasses.replace(renewed, tcb_info_issuer_chain=old_chain, qe_identity_issuer_chain=old_chain,
                                _sig_cache={})
    with pytest.raises(VerificationFailed) as err:
        tdx.verify(parsed, at=at, collateral=stale)
    assert err.value.reason == "cert_expired" and err.value.steps[-1].step == "tdx.08.tcb_signing_chain"
    assert tdx.verify(parsed, at=at, collateral=renewed).tcb_status == "OutOfDate"
    # the pcs/ folder alone lacks the chain: it may come from --certs instead
    bare = tdx.load_collateral(tdx_dir / "trustee-v4-tdx03-outofdate/pcs")
    assert bare.tcb_info_issuer_chain == ()
    with pytest.raises(VerificationFailed) as err:
        tdx.verify(parsed, at=at, collateral=bare)
    assert err.value.reason == "certs_missing"
    v = tdx.verify(parsed, at=at, collateral=bare, certs=list(renewed.tcb_info_issuer_chain))
    assert v.tcb_status == "OutOfDate"
    with pytest.raises(VerificationFailed) as err:
        tdx.verify(parsed, at=at, collateral=bare, certs=list(old_chain))
    assert err.value.reason == "cert_expired"


def test_collateral_window_is_enforced(tdx_dir: Path):
    parsed = tdx.parse((tdx_dir / "dcap-qvl-v4-uptodate/quote.bin").read_bytes())
    coll = tdx.load_collateral(tdx_dir / UPTODATE_COLL)
    for at in ("2025-09-01T00:00:00Z", "2025-05-01T00:00:00Z"):
        with pytest.raises(VerificationFailed) as err:
            tdx.verify(parsed, at=_t(at), collateral=coll)
        assert err.value.reason == "collateral_expired"


# ---------------------------------------------------------------------------------------------
# dcap-qvl cross-check
# ---------------------------------------------------------------------------------------------

DCAP_CASES = sorted(n for n, o in OUTCOMES.items() if o.dcap_qvl is not None)


@pytest.mark.parametrize("name", DCAP_CASES)
def test_dcap_qvl_agrees(tdx_dir: Path, name: str):
    outcome = OUTCOMES[name]
    raw = (tdx_dir / name / "quote.bin").read_bytes()
    collateral = dcap_qvl.QuoteCollateralV3.from_json((tdx_dir / outcome.collateral).read_text())
    now = int(_t(outcome.at).timestamp())
    if outcome.dcap_qvl.startswith("error: "):
        with pytest.raises(ValueError) as err:
            dcap_qvl.verify(raw, collateral, now)
        assert outcome.dcap_qvl[len("error: "):] in str(err.value)
    else:
        report = dcap_qvl.verify(raw, collateral, now)
        assert report.status == outcome.dcap_qvl
        ours = tdx.verify(tdx.parse(raw), at=_t(outcome.at), collateral=_collateral(tdx_dir, outcome))
        assert ours.tcb_status == report.status
        assert list(ours.advisory_ids) == list(report.advisory_ids)
    if outcome.dcap_qvl_note:  # a documented difference: our own outcome is the spec's one
        assert outcome.status is not None and outcome.reason is None


# ---------------------------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------------------------

def test_verify_with_parsed_collateral_is_fast(tdx_dir: Path):
    """Goal: <= 15 ms per quote once the collateral is parsed (it is cached by load_collateral)."""
    raw = (tdx_dir / "dcap-qvl-v4-uptodate/quote.bin").read_bytes()
    at = _t("2025-07-19T10:00:34Z")
    coll = tdx.load_collateral(tdx_dir / UPTODATE_COLL)
    assert tdx.load_collateral(tdx_dir / UPTODATE_COLL) is coll  # cached object
    tdx.verify(tdx.parse(raw), at=at, collateral=coll)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        v = tdx.verify(tdx.parse(raw), at=at, collateral=coll)
        times.append(time.perf_counter() - start)
    assert v.tcb_status == "UpToDate"
    assert statistics.median(times) < 0.015, times


def test_verify_rejects_naive_time(tdx_dir: Path):
    parsed = tdx.parse((tdx_dir / "dcap-qvl-v4-uptodate/quote.bin").read_bytes())
    with pytest.raises(ValueError):
        tdx.verify(parsed, at=datetime(2025, 7, 19))
    assert tdx.verify(parsed, at=datetime(2025, 7, 19, tzinfo=timezone.utc)).tcb_status is None


def test_wrong_collateral_type_and_garbage(tdx_dir: Path):
    parsed = tdx.parse((tdx_dir / "dcap-qvl-v4-uptodate/quote.bin").read_bytes())
    with pytest.raises(VerificationFailed) as err:
        tdx.verify(parsed, at=_t("2025-07-19T10:00:34Z"), collateral={"tcb_info": "{}"})
    assert err.value.reason == "collateral_invalid"
    with pytest.raises(MalformedEvidence):
        tdx.parse(b"\x04\x00\x02\x00\x81\x00\x00\x00" + bytes(40))
