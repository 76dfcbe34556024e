"""Emulated Intel PCS v4 for one cluster's TdxTestHierarchy.

Routes (as Intel's PCS, https://api.portal.trustedservices.intel.com/content/documentation.html):
  GET /tdx/certification/v4/tcb?fmspc=HEX       TCB info JSON; header TCB-Info-Issuer-Chain
  GET /tdx/certification/v4/qe/identity         QE identity JSON; header SGX-Enclave-Identity-Issuer-Chain
  GET /sgx/certification/v4/pckcrl?ca=platform  PCK CRL (DER with encoding=der, else PEM);
                                                header SGX-PCK-CRL-Issuer-Chain
  GET /IntelSGXRootCA.der                       Root CA CRL (Intel serves it from its certificates
                                                host; here from the same server: see root_crl_url)
Issuer chains are URL-encoded PEM, as Intel sends them. Each answer is published at request
time from the hierarchy's current state, so revoke() / tcb_recovery() show on the next fetch.
"""
from __future__ import annotations

import urllib.parse
from datetime import datetime, timezone
from typing import Callable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conclave.runtime.attestation.emulated.tdx_issuer import TdxTestHierarchy
from conclave.runtime.attestation.emulated.vendor_server import VendorServer

ROOT_CRL_PATH = "/IntelSGXRootCA.der"


class EmulatedPcs(VendorServer):
    name = "intel-pcs"

    def __init__(self, hierarchy: TdxTestHierarchy, host: str = "127.0.0.1", port: int = 0, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        super().__init__(host, port)
        self.hierarchy = hierarchy
        self.clock = clock

    @property
    def root_crl_url(self) -> str:
        return self.base_url + ROOT_CRL_PATH

    def respond(self, path: str, query: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        snap = self.hierarchy.publish(self.clock())
        quote = urllib.parse.quote
        if path == "/tdx/certification/v4/tcb":
            if query.get("fmspc", "").lower() != snap.fmspc.hex():
                return 404, b"", {}
            return 200, snap.tcb_info_response, {"Content-Type": "application/json",
                                                 "TCB-Info-Issuer-Chain": quote(snap.tcb_info_issuer_chain)}
        if path == "/tdx/certification/v4/qe/identity":
            return 200, snap.qe_identity_response, {
                "Content-Type": "application/json",
                "SGX-Enclave-Identity-Issuer-Chain": quote(snap.tcb_info_issuer_chain)}
        if path == "/sgx/certification/v4/pckcrl":
            if query.get("ca") != "platform":
                return 400, b"", {}
            headers = {"SGX-PCK-CRL-Issuer-Chain": quote(snap.pck_crl_issuer_chain)}
            if query.get("encoding") == "der":
                return 200, snap.pck_crl_der, {**headers, "Content-Type": "application/pkix-crl"}
            pem = x509.load_der_x509_crl(snap.pck_crl_der).public_bytes(serialization.Encoding.PEM)
            return 200, pem, {**headers, "Content-Type": "application/x-pem-file"}
        if path == ROOT_CRL_PATH:
            return 200, snap.root_ca_crl_der, {"Content-Type": "application/pkix-crl"}
        return 404, b"", {}


__all__ = ["EmulatedPcs", "ROOT_CRL_PATH"]
