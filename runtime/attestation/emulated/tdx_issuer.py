"""A per-cluster emulated Intel TDX hierarchy: test root, PCK CA, TCB signing, one PCK leaf and
quoting enclave per host, and the collateral an emulated Intel PCS publishes.

Why: local clusters and multi-node tests run the real TDX verifier end to end on quotes that are
byte-exact to real hardware's, signed by a hierarchy shaped like Intel's but rooted in a test
root created for this cluster only. The real verifier accepts these quotes only where the
caller passes `root_certificate` as a trusted root; against the pinned Intel root they fail
with chain_untrusted, and a production policy can never admit them.

Shape (names carry "Conclave Emulated", never Intel's):
  Conclave Emulated SGX Root CA (self-signed, P-256)
    -> Conclave Emulated SGX PCK Platform CA -> SGX PCK Certificate per host (SGX extensions:
       PPID, 16 TCB components, PCESVN, CPUSVN, PCE-ID, FMSPC, SGX type)
    -> Conclave Emulated SGX TCB Signing (signs TCB info and QE identity)
Each host has its own PCK key (which signs its QE report) and attestation key (which signs
its quotes). PCS state (revoked PCK serials, TCB recoveries) lives here; pcs_server serves it.
Private keys stay in memory and are never serialised.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conclave.runtime.attestation.emulated import tdx_build as tb

ORG = "Conclave Emulated (not Intel)"
ROOT_CN = "Conclave Emulated SGX Root CA"
PLATFORM_CA_CN = "Conclave Emulated SGX PCK Platform CA"
LEAF_CN = "Conclave Emulated SGX PCK Certificate"
TCB_SIGNING_CN = "Conclave Emulated SGX TCB Signing"
DEFAULT_FMSPC = bytes.fromhex("c0ffee00e001")
PCE_ID = bytes(2)
SGX_COMPONENTS = (3, 3, 2, 2, 4, 1, 0, 5) + (0,) * 8
PCE_SVN = 13
QE_ISV_SVN = 7
QE_ISV_PROD_ID = 2
COLLATERAL_VALIDITY = timedelta(days=30)     # Intel's TCB info / QE identity / PCK CRL window
CERT_VALIDITY = timedelta(days=3650)
# Published collateral is dated this much before the request, so a verifier whose clock runs
# a little behind the vendor's still finds it current (Intel's issue dates also lag).
ISSUE_LEAD = timedelta(minutes=1)
TD_ATTRIBUTES = bytes.fromhex("0000001000000000")   # SEPT_VE_DISABLE, as real TDs set it
XFAM = bytes.fromhex("e702060000000000")


def _utc_seconds(t: datetime) -> datetime:
    return t.astimezone(timezone.utc).replace(microsecond=0)


@dataclass(frozen=True)
class TdImage:
    """The TD's measured identity: identical on every host that runs the same image."""

    mr_td: bytes = hashlib.sha384(b"conclave emulated td").digest()
    rtmrs: tuple[bytes, bytes, bytes, bytes] = (hashlib.sha384(b"rtmr0").digest(), hashlib.sha384(b"rtmr1").digest(),
                                                hashlib.sha384(b"rtmr2").digest(), bytes(48))
    mr_config_id: bytes = bytes(48)
    mr_owner: bytes = bytes(48)
    mr_owner_config: bytes = bytes(48)
    td_attributes: bytes = TD_ATTRIBUTES
    xfam: bytes = XFAM


class EmulatedTdxHost:
    """One TDX host: its PCK certificate and quoting enclave; `quote` plays the TD's quote request."""

    def __init__(self, hierarchy: "TdxTestHierarchy", name: str, serial: int, image: TdImage):
        self.name = name
        self.hierarchy = hierarchy
        self.image = image
        self._pck_key = ec.generate_private_key(ec.SECP256R1())
        self._att_key = ec.generate_private_key(ec.SECP256R1())
        ppid = hashlib.sha256(b"conclave emulated ppid/" + name.encode()).digest()[:16]
        ext = tb.sgx_extension(components=SGX_COMPONENTS, pce_svn=PCE_SVN, fmspc=hierarchy.fmspc,
                               pce_id=PCE_ID, ppid=ppid)
        self.pck_certificate = tb.certificate(
            tb.name(LEAF_CN, ORG), self._pck_key, hierarchy.platform_ca.subject, hierarchy._ca_key, serial,
            ca=False, not_before=hierarchy.not_before, not_after=hierarchy.not_before + CERT_VALIDITY,
            extra=[tb.pck_sgx_extension(ext)])
        self.tee_tcb_svn = bytes([6, 0, 3]) + bytes(13)
        self._chain = tb.pem(self.pck_certificate, hierarchy.platform_ca, hierarchy.root_certificate)

    def __repr__(self) -> str:
        return f"EmulatedTdxHost({self.name!r}, pck_serial={self.pck_certificate.serial_number:#x})"

    def quote(self, report_data: bytes, *, version: int = 4, debug: bool = False) -> bytes:
        """A quote over `report_data` (64 bytes), v4 or v5 (body type 3), certification data type 6."""
        if len(report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        if version not in (4, 5):
            raise ValueError("TDX quote version must be 4 or 5")
        image = self.image
        attrs = bytes([image.td_attributes[0] | (1 if debug else 0)]) + image.td_attributes[1:]
        body = tb.td_body(tee_tcb_svn=self.tee_tcb_svn, mr_seam=hashlib.sha384(b"emulated tdx module").digest(),
                          mr_signer_seam=bytes(48), td_attributes=attrs, xfam=image.xfam, mr_td=image.mr_td,
                          mr_config_id=image.mr_config_id, mr_owner=image.mr_owner,
                          mr_owner_config=image.mr_owner_config, rtmrs=image.rtmrs, report_data=report_data,
                          tdx15=version == 5)
        report = tb.qe_report(tb.qe_report_data_for(self._att_key), mr_signer=self.hierarchy.qe_mr_signer,
                              isv_prod_id=QE_ISV_PROD_ID, isv_svn=QE_ISV_SVN)
        header = tb.quote_header(version, hashlib.sha256(b"emulated qe/" + self.name.encode()).digest()[:20])
        return tb.quote(version=version, header=header, body=body, pck_chain_pem=self._chain, report=report,
                        pck_key=self._pck_key, att_key=self._att_key)


@dataclass(frozen=True)
class PcsSnapshot:
    """What the emulated PCS serves at one moment (bodies exactly as Intel's PCS v4 serves them)."""

    tcb_info_response: bytes
    qe_identity_response: bytes
    tcb_info_issuer_chain: str
    pck_crl_der: bytes
    pck_crl_issuer_chain: str
    root_ca_crl_der: bytes
    fmspc: bytes = field(default=b"")


class TdxTestHierarchy:
    """The cluster's emulated Intel hierarchy and PCS state. Thread-safe: PCS servers read it
    while a test revokes or recovers."""

    def __init__(self, cluster: str, *, now: datetime | None = None, fmspc: bytes = DEFAULT_FMSPC,
                 image: TdImage | None = None):
        now = _utc_seconds(now or datetime.now(timezone.utc))
        self.cluster = cluster
        self.fmspc = fmspc
        self.image = image or TdImage()
        self.not_before = now - timedelta(days=1)
        self._lock = threading.Lock()
        self._root_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._tcb_key = ec.generate_private_key(ec.SECP256R1())
        end = self.not_before + CERT_VALIDITY
        root_name = tb.name(f"{ROOT_CN} ({cluster})", ORG)
        self.root_certificate = tb.certificate(root_name, self._root_key, root_name, self._root_key, 0x1001,
                                               ca=True, not_before=self.not_before, not_after=end)
        self.platform_ca = tb.certificate(tb.name(PLATFORM_CA_CN, ORG), self._ca_key, root_name, self._root_key,
                                          0x2002, ca=True, not_before=self.not_before, not_after=end)
        self.tcb_signing = tb.certificate(tb.name(TCB_SIGNING_CN, ORG), self._tcb_key, root_name, self._root_key,
                                          0x3003, ca=False, not_before=self.not_before, not_after=end)
        self.qe_mr_signer = hashlib.sha256(b"conclave emulated QE signer/" + cluster.encode()).digest()
        self._hosts: dict[str, EmulatedTdxHost] = {}
        self._next_serial = 0x4000
        self._revoked: set[int] = set()
        self._recoveries = 0
        self._crl_number = 1

    # -- hosts ---------------------------------------------------------------------------------
    def host(self, name: str) -> EmulatedTdxHost:
        """The host called `name` (created with its own PCK certificate on first use)."""
        with self._lock:
            if name not in self._hosts:
                self._next_serial += 1
                self._hosts[name] = EmulatedTdxHost(self, name, self._next_serial, self.image)
            return self._hosts[name]

    @property
    def root_pem(self) -> bytes:
        return self.root_certificate.public_bytes(serialization.Encoding.PEM)

    # -- PCS controls --------------------------------------------------------------------------
    def revoke(self, name: str) -> None:
        """List the host's PCK certificate in the PCK CRL from the next publication on."""
        with self._lock:
            self._revoked.add(self._hosts[name].pck_certificate.serial_number)
            self._crl_number += 1

    def tcb_recovery(self) -> None:
        """Publish a TCB recovery: a newer TDX module SVN becomes the only UpToDate level, so every
        host still on the old one evaluates OutOfDate (tcbEvaluationDataNumber goes up)."""
        with self._lock:
            self._recoveries += 1

    @property
    def recoveries(self) -> int:
        return self._recoveries

    def _tcb_info(self, issue: datetime) -> dict:
        current = [6, 0, 3] + [0] * 13
        recovered = [6 + self._recoveries, 0, 3] + [0] * 13
        levels = []
        if self._recoveries:
            levels.append(tb.tcb_level(SGX_COMPONENTS, PCE_SVN, recovered, "UpToDate", tb.iso(issue)))
        levels += [
            tb.tcb_level(SGX_COMPONENTS, PCE_SVN, current, "OutOfDate" if self._recoveries else "UpToDate",
                         "2025-06-01T00:00:00Z", ["INTEL-SA-EMULATED-RECOVERY"] if self._recoveries else ()),
            tb.tcb_level([2, 2, 2, 2, 3, 1, 0, 3] + [0] * 8, 11, [3, 0, 2] + [0] * 13, "OutOfDate",
                         "2024-01-01T00:00:00Z", ["INTEL-SA-EMULATED-0001"]),
        ]
        return {
            "id": "TDX", "version": 3, "issueDate": tb.iso(issue), "nextUpdate": tb.iso(issue + COLLATERAL_VALIDITY),
            "fmspc": self.fmspc.hex().upper(), "pceId": PCE_ID.hex(), "tcbType": 0,
            "tcbEvaluationDataNumber": 17 + self._recoveries,
            "tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8},
            "tdxModuleIdentities": [],
            "tcbLevels": levels,
        }

    def _qe_identity(self, issue: datetime) -> dict:
        return {
            "id": "TD_QE", "version": 2, "issueDate": tb.iso(issue), "nextUpdate": tb.iso(issue + COLLATERAL_VALIDITY),
            "tcbEvaluationDataNumber": 17 + self._recoveries, "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": self.qe_mr_signer.hex().upper(), "isvprodid": QE_ISV_PROD_ID,
            "tcbLevels": [{"tcb": {"isvsvn": QE_ISV_SVN}, "tcbDate": "2025-06-01T00:00:00Z", "tcbStatus": "UpToDate"}],
        }

    def publish(self, now: datetime | None = None) -> PcsSnapshot:
        """The PCS responses as of `now` (dated ISSUE_LEAD before it, valid for 30 days)."""
        issue = _utc_seconds(now or datetime.now(timezone.utc)) - ISSUE_LEAD
        with self._lock:
            tcb_text = tb.compact(self._tcb_info(issue))
            qe_text = tb.compact(self._qe_identity(issue))
            pck_crl = tb.revocation_list(self.platform_ca.subject, self._ca_key, sorted(self._revoked),
                                         last=issue, nxt=issue + COLLATERAL_VALIDITY, number=self._crl_number)
            root_crl = tb.revocation_list(self.root_certificate.subject, self._root_key, (), last=issue,
                                          nxt=issue + timedelta(days=365))
        der = serialization.Encoding.DER
        return PcsSnapshot(
            tcb_info_response=tb.pcs_signed_response("tcbInfo", tcb_text, tb.sign_raw(self._tcb_key, tcb_text.encode())),
            qe_identity_response=tb.pcs_signed_response("enclaveIdentity", qe_text,
                                                        tb.sign_raw(self._tcb_key, qe_text.encode())),
            tcb_info_issuer_chain=tb.pem(self.tcb_signing, self.root_certificate),
            pck_crl_der=pck_crl.public_bytes(der),
            pck_crl_issuer_chain=tb.pem(self.platform_ca, self.root_certificate),
            root_ca_crl_der=root_crl.public_bytes(der),
            fmspc=self.fmspc,
        )


__all__ = ["TdxTestHierarchy", "EmulatedTdxHost", "TdImage", "PcsSnapshot"]
