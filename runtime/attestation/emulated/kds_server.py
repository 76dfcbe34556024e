"""Emulated AMD KDS for one cluster's SnpTestHierarchy.

Routes (as AMD's KDS, VCEK/KDS interface specification pub. 57230):
  GET /vcek/v1/<Product>/<hwid hex>?blSPL=&teeSPL=&snpSPL=&ucodeSPL=[&fmcSPL=]  VCEK (DER)
  GET /vcek/v1/<Product>/cert_chain                                            ASK + ARK (PEM)
  GET /vcek/v1/<Product>/crl                                                   CRL (DER, by the ARK)
The CRL is issued at request time from the hierarchy's state, so revoke() shows on the next fetch.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Mapping

from conclave.runtime.attestation.emulated.snp_issuer import PRODUCT_NAMES, SnpTestHierarchy
from conclave.runtime.attestation.emulated.vendor_server import VendorServer

_SPL_PARAMS = {"blSPL": "bootloader", "teeSPL": "tee", "snpSPL": "snp", "ucodeSPL": "microcode", "fmcSPL": "fmc"}


class EmulatedKds(VendorServer):
    name = "amd-kds"

    def __init__(self, hierarchy: SnpTestHierarchy, host: str = "127.0.0.1", port: int = 0, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        super().__init__(host, port)
        self.hierarchy = hierarchy
        self.clock = clock

    def respond(self, path: str, query: Mapping[str, str]) -> tuple[int, bytes, dict[str, str]]:
        parts = path.strip("/").split("/")
        product = PRODUCT_NAMES[self.hierarchy.product]
        if len(parts) != 4 or parts[:2] != ["vcek", "v1"] or parts[2] != product:
            return 404, b"", {}
        leaf = parts[3]
        if leaf == "cert_chain":
            return 200, self.hierarchy.cert_chain_pem(), {"Content-Type": "application/x-pem-file"}
        if leaf == "crl":
            return 200, self.hierarchy.crl_der(self.clock()), {"Content-Type": "application/pkix-crl"}
        try:
            hwid = bytes.fromhex(leaf)
            tcb = {name: int(query[param]) for param, name in _SPL_PARAMS.items() if param in query}
        except (ValueError, KeyError):
            return 400, b"", {}
        der = self.hierarchy.vcek_der(hwid, tcb)
        if der is None:
            return 404, b"", {}
        return 200, der, {"Content-Type": "application/pkix-cert"}


__all__ = ["EmulatedKds"]
