#!/usr/bin/env python3
"""Generate the TDX negative/positive test vectors under tests/data/tdx/ (run once; outputs committed).

A test CA shaped like Intel's: "Conclave Test SGX Root CA" -> "Conclave Test SGX PCK Platform CA"
-> "Conclave Test SGX PCK Certificate" (with Intel's SGX extensions: PPID, TCB components,
PCESVN, CPUSVN, PCE-ID, FMSPC, SGX type), a "Conclave Test SGX TCB Signing" certificate, a Root
CA CRL and a PCK CRL, and TDX TCB info + TD_QE identity JSON signed by the TCB Signing key.
Quotes (v4 and v5 body type 3) are serialised by runtime/attestation/emulated/tdx_build.py (shared
with the emulated TDX hardware), written from Intel's specs independently of the parser under test.

Each case is valid except for exactly one defect (or is a positive TCB-status case); cases.json
lists every case with its quote, collateral, verification time and expected outcome.
Deterministic: private keys are derived from fixed labels, ECDSA signatures use RFC 6979, and
every date and serial number is fixed, so re-running reproduces the same bytes. Private keys are
never written anywhere (they are re-derivable from the labels and exist only for this test CA).

    .venv/bin/python tests/data/tdx/make_vectors.py
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conclave.runtime.attestation.emulated import tdx_build as tb

OUT = Path(__file__).resolve().parent
AT = datetime(2026, 1, 15, tzinfo=timezone.utc)
CERT_FROM = datetime(2025, 1, 1, tzinfo=timezone.utc)
CERT_TO = datetime(2035, 1, 1, tzinfo=timezone.utc)
ISSUE = datetime(2026, 1, 1, tzinfo=timezone.utc)
NEXT = datetime(2026, 2, 1, tzinfo=timezone.utc)
FMSPC = bytes.fromhex("c0ffee000000")
PCE_ID = bytes(2)
QE_MRSIGNER = hashlib.sha256(b"conclave test QE signer").digest()
SGX_COMPONENTS = [3, 3, 2, 2, 4, 1, 0, 5] + [0] * 8
PCE_SVN = 13
TEE_TCB_SVN = bytes([6, 0, 3]) + bytes(13)  # module SVN 6, major 0 (no module identity), late ucode 3
TD_ATTRIBUTES = bytes.fromhex("0000001000000000")  # SEPT_VE_DISABLE (bit 28), as real TDs set it


# ---------------------------------------------------------------------------------------------
# keys, DER, certificates, CRLs
# ---------------------------------------------------------------------------------------------

def key(label: str) -> ec.EllipticCurvePrivateKey:
    return tb.derive_p256(b"conclave-tdx-test-ca/", label)


sign_raw, raw_pub, pem = tb.sign_raw, tb.raw_pub, tb.pem
_der, _oid, _int = tb.der, tb.der_oid, tb.der_int   # the independent DER encoder (test_der uses it)
SGX = tb.SGX_OID


def sgx_extension(components=SGX_COMPONENTS, pce_svn=PCE_SVN, fmspc=FMSPC) -> bytes:
    return tb.sgx_extension(components=components, pce_svn=pce_svn, fmspc=fmspc, pce_id=PCE_ID,
                            ppid=hashlib.sha256(b"ppid").digest()[:16])


def name(cn: str) -> x509.Name:
    return tb.name(cn)


def cert(subject: str, subject_key, issuer: str, issuer_key, serial: int, *, ca: bool,
         not_before=CERT_FROM, not_after=CERT_TO, extra=()) -> x509.Certificate:
    return tb.certificate(name(subject), subject_key, name(issuer), issuer_key, serial, ca=ca,
                          not_before=not_before, not_after=not_after, extra=extra)


def crl(issuer: str, issuer_key, revoked_serials=(), last=ISSUE, nxt=NEXT) -> x509.CertificateRevocationList:
    return tb.revocation_list(name(issuer), issuer_key, revoked_serials, last=last, nxt=nxt)


ROOT_CN, CA_CN = "Conclave Test SGX Root CA", "Conclave Test SGX PCK Platform CA"
LEAF_CN, TCB_CN = "Conclave Test SGX PCK Certificate", "Conclave Test SGX TCB Signing"
K_ROOT, K_CA, K_LEAF, K_TCB = key("root"), key("pck-platform-ca"), key("pck-leaf"), key("tcb-signing")
K_ATT, K_ROGUE = key("attestation-key"), key("rogue")
ROOT = cert(ROOT_CN, K_ROOT, ROOT_CN, K_ROOT, 0x1001, ca=True)
CA = cert(CA_CN, K_CA, ROOT_CN, K_ROOT, 0x2002, ca=True)
TCB = cert(TCB_CN, K_TCB, ROOT_CN, K_ROOT, 0x3003, ca=False)
LEAF_SERIAL = 0x4004


def leaf(components=SGX_COMPONENTS, pce_svn=PCE_SVN, fmspc=FMSPC, *, signer=K_CA,
         not_after=CERT_TO) -> x509.Certificate:
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX), sgx_extension(components, pce_svn, fmspc))
    return cert(LEAF_CN, K_LEAF, CA_CN, signer, LEAF_SERIAL, ca=False, not_after=not_after, extra=[ext])


# ---------------------------------------------------------------------------------------------
# quotes
# ---------------------------------------------------------------------------------------------

def qe_report(report_data: bytes, *, mr_signer=QE_MRSIGNER, isv_prod_id=2, isv_svn=7) -> bytes:
    return tb.qe_report(report_data, mr_signer=mr_signer, isv_prod_id=isv_prod_id, isv_svn=isv_svn)


def td_body(*, tee_tcb_svn=TEE_TCB_SVN, mr_signer_seam=bytes(48), td_attributes=TD_ATTRIBUTES, tdx15=False) -> bytes:
    def m(label: str) -> bytes:
        return hashlib.sha384(label.encode()).digest()
    return tb.td_body(tee_tcb_svn=tee_tcb_svn, mr_seam=m("mr_seam"), mr_signer_seam=mr_signer_seam,
                      td_attributes=td_attributes, xfam=bytes.fromhex("e702060000000000"), mr_td=m("mr_td"),
                      mr_config_id=bytes(48), mr_owner=bytes(48), mr_owner_config=bytes(48),
                      rtmrs=[m("rtmr0"), m("rtmr1"), m("rtmr2"), bytes(48)],
                      report_data=hashlib.sha512(b"conclave report data").digest(), tdx15=tdx15)


def quote(*, version=4, body_kwargs=None, chain=None, qe_kwargs=None, qe_report_data=None,
          qe_signer=K_LEAF, att_key=K_ATT, quote_signer=None, trailing=b"") -> bytes:
    header = tb.quote_header(version, hashlib.sha256(b"user data").digest()[:20])
    body = td_body(tdx15=version == 5, **(body_kwargs or {}))
    if qe_report_data is None:
        qe_report_data = tb.qe_report_data_for(att_key)
    report = qe_report(qe_report_data, **(qe_kwargs or {}))
    return tb.quote(version=version, header=header, body=body,
                    pck_chain_pem=chain if chain is not None else pem(leaf(), CA, ROOT), report=report,
                    pck_key=qe_signer, att_key=att_key, quote_signer=quote_signer, trailing=trailing)


# ---------------------------------------------------------------------------------------------
# TCB info, QE identity, collateral
# ---------------------------------------------------------------------------------------------

iso, tcb_level, compact = tb.iso, tb.tcb_level, tb.compact


def base_tcb_info() -> dict:
    return {
        "id": "TDX", "version": 3, "issueDate": iso(ISSUE), "nextUpdate": iso(NEXT),
        "fmspc": FMSPC.hex().upper(), "pceId": PCE_ID.hex(), "tcbType": 0, "tcbEvaluationDataNumber": 17,
        "tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8},
        "tdxModuleIdentities": [
            {"id": "TDX_03", "mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8,
             "tcbLevels": [{"tcb": {"isvsvn": 3}, "tcbDate": "2025-06-01T00:00:00Z", "tcbStatus": "UpToDate"},
                           {"tcb": {"isvsvn": 1}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "OutOfDate",
                            "advisoryIDs": ["INTEL-SA-TEST-MODULE"]}]},
        ],
        "tcbLevels": [
            tcb_level(SGX_COMPONENTS, 13, [6, 0, 3] + [0] * 13, "UpToDate", "2025-06-01T00:00:00Z"),
            tcb_level(SGX_COMPONENTS, 13, [4, 0, 2] + [0] * 13, "SWHardeningNeeded", "2025-03-01T00:00:00Z",
                      ["INTEL-SA-TEST-0001"]),
            tcb_level([2, 2, 2, 2, 3, 1, 0, 3] + [0] * 8, 11, [3, 0, 2] + [0] * 13, "OutOfDate",
                      "2024-01-01T00:00:00Z", ["INTEL-SA-TEST-0002", "INTEL-SA-TEST-0003"]),
        ],
    }


def base_qe_identity() -> dict:
    return {
        "id": "TD_QE", "version": 2, "issueDate": iso(ISSUE), "nextUpdate": iso(NEXT),
        "tcbEvaluationDataNumber": 17, "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000", "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": QE_MRSIGNER.hex().upper(), "isvprodid": 2,
        "tcbLevels": [{"tcb": {"isvsvn": 7}, "tcbDate": "2025-06-01T00:00:00Z", "tcbStatus": "UpToDate"},
                      {"tcb": {"isvsvn": 4}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "OutOfDate",
                       "advisoryIDs": ["INTEL-SA-TEST-QE"]}],
    }


def collateral(*, tcb_info=None, qe_identity=None, tcb_chain=None, tcb_signer=K_TCB, qe_signer=K_TCB,
               root_crl=None, pck_crl=None, tcb_info_sig=None) -> dict:
    tcb_text = compact(tcb_info if tcb_info is not None else base_tcb_info())
    qe_text = compact(qe_identity if qe_identity is not None else base_qe_identity())
    chain = tcb_chain if tcb_chain is not None else pem(TCB, ROOT)
    return {
        "pck_crl_issuer_chain": pem(CA, ROOT),
        "root_ca_crl": (root_crl if root_crl is not None else crl(ROOT_CN, K_ROOT)).public_bytes(serialization.Encoding.DER).hex(),
        "pck_crl": (pck_crl if pck_crl is not None else crl(CA_CN, K_CA)).public_bytes(serialization.Encoding.DER).hex(),
        "tcb_info_issuer_chain": chain,
        "tcb_info": tcb_text,
        "tcb_info_signature": (tcb_info_sig or sign_raw(tcb_signer, tcb_text.encode())).hex(),
        "qe_identity_issuer_chain": chain,
        "qe_identity": qe_text,
        "qe_identity_signature": sign_raw(qe_signer, qe_text.encode()).hex(),
    }


def modified(base: dict, path: str, value) -> dict:
    out = copy.deepcopy(base)
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------

def build() -> dict:
    cases: dict[str, dict] = {}
    quotes: dict[str, bytes] = {}
    colls: dict[str, dict] = {}

    def add(case: str, q: str, c: str | None, expect: dict, step: str, note: str, at: datetime = AT) -> None:
        cases[case] = {"quote": f"quotes/{q}.bin", "collateral": f"collateral/{c}.json" if c else None,
                       "at": iso(at), "step": step, "expect": expect, "note": note}

    # quotes
    quotes["v4_valid"] = quote(trailing=bytes(70))
    quotes["v5_valid"] = quote(version=5)
    quotes["pck_rogue_signed"] = quote(chain=pem(leaf(signer=K_ROGUE), CA, ROOT))
    quotes["pck_expired"] = quote(chain=pem(leaf(not_after=AT - timedelta(days=1)), CA, ROOT))
    quotes["pck_no_intermediate"] = quote(chain=pem(leaf()))
    quotes["qe_report_bad_signature"] = quote(qe_signer=K_ROGUE)
    att_pub = raw_pub(K_ATT)
    quotes["qe_report_data_wrong_hash"] = quote(qe_report_data=hashlib.sha256(b"other").digest() + bytes(32))
    quotes["qe_report_data_nonzero_tail"] = quote(
        qe_report_data=hashlib.sha256(att_pub + bytes(range(32))).digest() + b"\x01" + bytes(31))
    quotes["quote_bad_signature"] = quote(quote_signer=K_ROGUE)
    quotes["module_mrsigner_mismatch"] = quote(body_kwargs={"mr_signer_seam": b"\x01" * 48})
    quotes["module_identity_missing"] = quote(body_kwargs={"tee_tcb_svn": bytes([6, 7, 3]) + bytes(13)})
    quotes["qe_mrsigner_mismatch"] = quote(qe_kwargs={"mr_signer": b"\x02" * 32})
    quotes["qe_isvprodid_mismatch"] = quote(qe_kwargs={"isv_prod_id": 3})
    quotes["qe_svn_out_of_date"] = quote(qe_kwargs={"isv_svn": 5})
    quotes["qe_svn_unsupported"] = quote(qe_kwargs={"isv_svn": 3})
    quotes["tcb_sw_hardening"] = quote(body_kwargs={"tee_tcb_svn": bytes([4, 0, 2]) + bytes(13)})
    quotes["tcb_no_match"] = quote(body_kwargs={"tee_tcb_svn": bytes([2, 0, 1]) + bytes(13)})
    quotes["tcb_out_of_date_platform"] = quote(chain=pem(leaf([2, 2, 2, 2, 3, 1, 0, 3] + [0] * 8, 11), CA, ROOT))
    # TEE_TCB_SVN[1] = 3: Intel skips bytes 0-1 for the platform level (module judged by TDX_03);
    # byte 0 = 4 is below the UpToDate level's tdxtcbcomponents[0] = 6, which dcap-qvl compares.
    quotes["tcb_module_identity_skip_bytes"] = quote(body_kwargs={"tee_tcb_svn": bytes([4, 3, 3]) + bytes(13)})
    quotes["tcb_module_out_of_date"] = quote(body_kwargs={"tee_tcb_svn": bytes([2, 3, 3]) + bytes(13)})
    quotes["debug_td"] = quote(body_kwargs={"td_attributes": bytes.fromhex("0100001000000000")})

    # collateral
    base_tcb, base_qe = base_tcb_info(), base_qe_identity()
    colls["base"] = collateral()
    colls["pck_revoked"] = collateral(pck_crl=crl(CA_CN, K_CA, [LEAF_SERIAL]))
    colls["ca_revoked"] = collateral(root_crl=crl(ROOT_CN, K_ROOT, [CA.serial_number]))
    colls["pck_crl_expired"] = collateral(pck_crl=crl(CA_CN, K_CA, last=ISSUE - timedelta(days=60),
                                                      nxt=ISSUE - timedelta(days=30)))
    colls["pck_crl_bad_signature"] = collateral(pck_crl=crl(CA_CN, K_ROGUE))
    old_tcb = cert(TCB_CN, K_TCB, ROOT_CN, K_ROOT, 0x3002, ca=False, not_after=datetime(2025, 5, 21, tzinfo=timezone.utc))
    colls["tcb_signing_expired"] = collateral(tcb_chain=pem(old_tcb, ROOT))
    rogue_tcb = cert(TCB_CN, K_TCB, ROOT_CN, K_ROGUE, 0x3003, ca=False)
    colls["tcb_signing_untrusted"] = collateral(tcb_chain=pem(rogue_tcb, ROOT))
    colls["tcb_signing_missing"] = collateral(tcb_chain=pem(ROOT))
    colls["tcb_signing_revoked"] = collateral(root_crl=crl(ROOT_CN, K_ROOT, [TCB.serial_number]))
    colls["tcb_info_bad_signature"] = collateral(tcb_info_sig=sign_raw(K_ROGUE, compact(base_tcb).encode()))
    colls["tcb_info_expired"] = collateral(tcb_info=modified(base_tcb, "nextUpdate", iso(AT - timedelta(days=1))))
    colls["tcb_info_fmspc_mismatch"] = collateral(tcb_info=modified(base_tcb, "fmspc", "C0FFEE000001"))
    colls["tcb_info_not_tdx"] = collateral(tcb_info=modified(base_tcb, "id", "SGX"))
    colls["qe_identity_bad_signature"] = collateral(qe_signer=K_ROGUE)
    colls["qe_identity_expired"] = collateral(qe_identity=modified(base_qe, "issueDate", iso(AT + timedelta(days=1))))
    colls["qe_identity_not_td_qe"] = collateral(qe_identity=modified(base_qe, "id", "QE"))
    colls["tcb_level_revoked"] = collateral(tcb_info=modified(base_tcb, "tcbLevels.0.tcbStatus", "Revoked"))
    colls["tcb_level_configuration_needed"] = collateral(
        tcb_info=modified(base_tcb, "tcbLevels.0.tcbStatus", "ConfigurationNeeded"))

    ok = {"status": "UpToDate", "advisory_ids": []}
    add("valid_v4", "v4_valid", "base", ok, "tdx.13.tcb_level", "valid v4 quote, 70 trailing bytes")
    add("valid_v5", "v5_valid", "base", ok, "tdx.13.tcb_level", "valid v5 body type 3 quote")
    add("valid_v4_no_collateral", "v4_valid", None, {"status": None, "advisory_ids": []}, "tdx.07.quote_signature",
        "no collateral: chain and signatures only")
    add("pck_chain_rogue_signed", "pck_rogue_signed", "base", {"reason": "chain_untrusted"}, "tdx.03.pck_chain",
        "PCK leaf signed by a key that is not the PCK Platform CA's")
    add("pck_chain_expired_leaf", "pck_expired", "base", {"reason": "cert_expired"}, "tdx.03.pck_chain",
        "PCK leaf expired the day before `at`")
    add("pck_chain_missing_intermediate", "pck_no_intermediate", "base", {"reason": "certs_missing"},
        "tdx.03.pck_chain", "quote embeds only the PCK leaf (no --certs)")
    add("pck_revoked", "v4_valid", "pck_revoked", {"reason": "cert_revoked"}, "tdx.04.pck_revocation",
        "PCK leaf serial listed in the PCK CRL")
    add("pck_ca_revoked", "v4_valid", "ca_revoked", {"reason": "cert_revoked"}, "tdx.04.pck_revocation",
        "PCK Platform CA serial listed in the Root CA CRL")
    add("pck_crl_expired", "v4_valid", "pck_crl_expired", {"reason": "collateral_expired"}, "tdx.04.pck_revocation",
        "PCK CRL nextUpdate before `at`")
    add("pck_crl_bad_signature", "v4_valid", "pck_crl_bad_signature", {"reason": "signature_invalid"},
        "tdx.04.pck_revocation", "PCK CRL signed by a rogue key under the CA's name")
    add("qe_report_bad_signature", "qe_report_bad_signature", "base", {"reason": "signature_invalid"},
        "tdx.05.qe_report_signature", "QE report signed by a key other than the PCK key")
    add("qe_report_data_wrong_hash", "qe_report_data_wrong_hash", "base", {"reason": "qe_report_data_mismatch"},
        "tdx.06.qe_report_data", "QE REPORTDATA[0:32] is not SHA-256(att key || auth data)")
    add("qe_report_data_nonzero_tail", "qe_report_data_nonzero_tail", "base", {"reason": "qe_report_data_mismatch"},
        "tdx.06.qe_report_data", "QE REPORTDATA[32:64] not zero (Intel's QVL compares only the hash)")
    add("quote_bad_signature", "quote_bad_signature", "base", {"reason": "signature_invalid"},
        "tdx.07.quote_signature", "header+body signed by a key other than the attestation key")
    add("tcb_signing_expired", "v4_valid", "tcb_signing_expired", {"reason": "cert_expired"},
        "tdx.08.tcb_signing_chain",
        "supplied TCB Signing cert has the right key but expired 2025-05-21 (Intel's reissue trap)")
    add("tcb_signing_untrusted", "v4_valid", "tcb_signing_untrusted", {"reason": "chain_untrusted"},
        "tdx.08.tcb_signing_chain", "TCB Signing cert not signed by the trusted root")
    add("tcb_signing_missing", "v4_valid", "tcb_signing_missing", {"reason": "certs_missing"},
        "tdx.08.tcb_signing_chain", "issuer chain holds only the root")
    add("tcb_signing_revoked", "v4_valid", "tcb_signing_revoked", {"reason": "cert_revoked"},
        "tdx.08.tcb_signing_chain", "TCB Signing cert serial listed in the Root CA CRL")
    add("tcb_info_bad_signature", "v4_valid", "tcb_info_bad_signature", {"reason": "signature_invalid"},
        "tdx.09.tcb_info", "TCB info signed by a rogue key")
    add("tcb_info_expired", "v4_valid", "tcb_info_expired", {"reason": "collateral_expired"}, "tdx.09.tcb_info",
        "TCB info nextUpdate before `at`")
    add("tcb_info_fmspc_mismatch", "v4_valid", "tcb_info_fmspc_mismatch", {"reason": "tcb_mismatch"},
        "tdx.09.tcb_info", "TCB info for another FMSPC")
    add("tcb_info_not_tdx", "v4_valid", "tcb_info_not_tdx", {"reason": "collateral_invalid"}, "tdx.09.tcb_info",
        "TCB info id SGX")
    add("qe_identity_bad_signature", "v4_valid", "qe_identity_bad_signature", {"reason": "signature_invalid"},
        "tdx.10.qe_identity", "QE identity signed by a rogue key")
    add("qe_identity_expired", "v4_valid", "qe_identity_expired", {"reason": "collateral_expired"},
        "tdx.10.qe_identity", "QE identity issued after `at`")
    add("qe_identity_not_td_qe", "v4_valid", "qe_identity_not_td_qe", {"reason": "collateral_invalid"},
        "tdx.10.qe_identity", "QE identity id QE (SGX), not TD_QE")
    add("tdx_module_mrsigner_mismatch", "module_mrsigner_mismatch", "base", {"reason": "tcb_mismatch"},
        "tdx.11.tdx_module", "MRSIGNERSEAM is not the TDX module signer of the TCB info")
    add("tdx_module_identity_missing", "module_identity_missing", "base", {"reason": "tcb_mismatch"},
        "tdx.11.tdx_module", "TEE_TCB_SVN[1] = 7 but the TCB info has no TDX_07 identity")
    add("qe_identity_mrsigner_mismatch", "qe_mrsigner_mismatch", "base", {"reason": "qe_identity_mismatch"},
        "tdx.12.qe_identity_match", "QE MRSIGNER differs from the QE identity")
    add("qe_identity_isvprodid_mismatch", "qe_isvprodid_mismatch", "base", {"reason": "qe_identity_mismatch"},
        "tdx.12.qe_identity_match", "QE ISVPRODID 3, identity says 2")
    add("qe_svn_out_of_date", "qe_svn_out_of_date", "base",
        {"status": "OutOfDate", "advisory_ids": ["INTEL-SA-TEST-QE"]}, "tdx.13.tcb_level",
        "QE ISVSVN 5 matches the OutOfDate QE level: UpToDate platform converges to OutOfDate")
    add("qe_svn_unsupported", "qe_svn_unsupported", "base", {"reason": "tcb_not_found"}, "tdx.13.tcb_level",
        "QE ISVSVN 3 below every QE identity level")
    add("tcb_level_no_match", "tcb_no_match", "base", {"reason": "tcb_not_found"}, "tdx.13.tcb_level",
        "TEE_TCB_SVN below every level's tdxtcbcomponents")
    add("tcb_level_sw_hardening", "tcb_sw_hardening", "base",
        {"status": "SWHardeningNeeded", "advisory_ids": ["INTEL-SA-TEST-0001"]}, "tdx.13.tcb_level",
        "TEE_TCB_SVN matches the second level")
    add("tcb_level_out_of_date_platform", "tcb_out_of_date_platform", "base",
        {"status": "OutOfDate", "advisory_ids": ["INTEL-SA-TEST-0002", "INTEL-SA-TEST-0003"]}, "tdx.13.tcb_level",
        "PCK SGX components / PCESVN match only the OutOfDate level")
    add("tcb_level_revoked", "v4_valid", "tcb_level_revoked", {"status": "Revoked", "advisory_ids": []},
        "tdx.13.tcb_level", "matched level is Revoked (status reported, policy rejects)")
    add("tcb_level_configuration_needed", "v4_valid", "tcb_level_configuration_needed",
        {"status": "ConfigurationNeeded", "advisory_ids": []}, "tdx.13.tcb_level", "matched level ConfigurationNeeded")
    add("tcb_module_identity_skip_bytes", "tcb_module_identity_skip_bytes", "base",
        {"status": "UpToDate", "advisory_ids": []}, "tdx.13.tcb_level",
        "TEE_TCB_SVN 04 03 03: Intel skips bytes 0-1 (module TDX_03 SVN 4 >= 3 UpToDate); dcap-qvl compares "
        "byte 0 (4 < 6) and lands on a lower level")
    add("tcb_module_out_of_date", "tcb_module_out_of_date", "base",
        {"status": "OutOfDate", "advisory_ids": ["INTEL-SA-TEST-MODULE"]}, "tdx.13.tcb_level",
        "TDX_03 module SVN 2 matches the OutOfDate module level; platform UpToDate converges to OutOfDate")
    add("debug_td", "debug_td", "base", {"status": "UpToDate", "advisory_ids": [], "debug": True},
        "tdx.13.tcb_level", "TD_ATTRIBUTES.DEBUG set: verification succeeds, debug claim True (policy rejects);"
        " dcap-qvl refuses debug TDs")
    # dcap-qvl 0.7.0 (verify_with_root_ca with the test root), observed when these vectors were made:
    # a TCB status, or "error" (it raises). Where it differs from this project's verifier, say why.
    differences = {
        "qe_report_data_nonzero_tail": ("UpToDate", "dcap-qvl (like Intel's QVL) compares only the first 32 bytes "
                                        "of the QE REPORTDATA; this verifier also requires the zero tail"),
        "tcb_level_revoked": ("error", "dcap-qvl rejects a Revoked TCB inside verification; this verifier reports "
                              "tcb_status Revoked and the policy rejects it"),
        "debug_td": ("error", "dcap-qvl refuses debug TDs; this verifier reports debug=True for the policy"),
        "tcb_module_identity_skip_bytes": ("UpToDate", "agrees: dcap-qvl 0.7.0 also skips TEE_TCB_SVN bytes 0-1 "
                                           "when byte 1 is non-zero (older releases compared all 16 bytes)"),
    }
    statuses = {"valid_v4": "UpToDate", "valid_v5": "UpToDate", "qe_svn_out_of_date": "OutOfDate",
                "tcb_level_sw_hardening": "SWHardeningNeeded", "tcb_level_out_of_date_platform": "OutOfDate",
                "tcb_level_configuration_needed": "ConfigurationNeeded", "tcb_module_out_of_date": "OutOfDate"}
    for case, entry in cases.items():
        if entry["collateral"] is None:
            continue
        if case in differences:
            entry["dcap_qvl"], entry["dcap_qvl_note"] = differences[case]
        else:
            entry["dcap_qvl"] = statuses.get(case, "error")
    return {"cases": cases, "quotes": quotes, "collateral": colls}


def write_pcs_folder(folder: Path, coll: dict) -> None:
    """The base collateral as raw Intel PCS responses (for load_collateral's folder mode)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tcb_info_response.json").write_text(
        '{"tcbInfo":' + coll["tcb_info"] + ',"signature":"' + coll["tcb_info_signature"] + '"}')
    (folder / "qe_identity_response.json").write_text(
        '{"enclaveIdentity":' + coll["qe_identity"] + ',"signature":"' + coll["qe_identity_signature"] + '"}')
    (folder / "tcb_signing_chain.pem").write_text(coll["tcb_info_issuer_chain"])
    (folder / "pck_crl_issuer_chain.pem").write_text(coll["pck_crl_issuer_chain"])
    (folder / "root_ca_crl.der").write_bytes(bytes.fromhex(coll["root_ca_crl"]))
    (folder / "pckcrl_platform.der").write_bytes(bytes.fromhex(coll["pck_crl"]))


def main() -> None:
    built = build()
    for sub in ("quotes", "collateral", "pcs_base"):
        shutil.rmtree(OUT / sub, ignore_errors=True)
        (OUT / sub).mkdir()
    for q, data in built["quotes"].items():
        (OUT / "quotes" / f"{q}.bin").write_bytes(data)
    for c, data in built["collateral"].items():
        (OUT / "collateral" / f"{c}.json").write_text(json.dumps(data, indent=1) + "\n")
    write_pcs_folder(OUT / "pcs_base", built["collateral"]["base"])
    (OUT / "test_root_ca.pem").write_text(pem(ROOT))
    (OUT / "rogue_root_ca.pem").write_text(pem(cert(ROOT_CN, K_ROGUE, ROOT_CN, K_ROGUE, 0x1001, ca=True)))
    (OUT / "cases.json").write_text(json.dumps(built["cases"], indent=1) + "\n")
    print(f"wrote {len(built['quotes'])} quotes, {len(built['collateral'])} collateral sets, "
          f"{len(built['cases'])} cases to {OUT}")


if __name__ == "__main__":
    main()
