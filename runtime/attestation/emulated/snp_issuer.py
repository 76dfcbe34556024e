"""A per-cluster emulated AMD SEV-SNP hierarchy: ARK and ASK for one product, a VCEK per host
(AMD TCB SPL and hwID extensions), reports v3/v5, and what an emulated AMD KDS publishes.

Why: local clusters and multi-node tests run the real SNP verifier end to end on reports that
are byte-exact to real firmware's, with the certificate table configfs-tsm returns as
`auxblob`, signed by a hierarchy shaped like AMD's but rooted in an ARK made for this cluster
only. The real verifier accepts them only with `ark_certificate` passed as a trusted root;
against AMD's pinned ARKs they fail with chain_untrusted.

Shape: ARK-<Product> (RSA-4096, self-signed, RSASSA-PSS SHA-384) -> SEV-<Product> (ASK)
-> SEV-VCEK (ECDSA P-384) per host; O="Conclave Emulated (not AMD)". KDS state (revoked VCEK
serials) lives here; kds_server serves it. Private keys stay in memory.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conclave.runtime.attestation.emulated import snp_build as sb

ORG = "Conclave Emulated (not AMD)"
PRODUCT_NAMES = {"milan": "Milan", "genoa": "Genoa", "turin": "Turin"}
CPUID = {"milan": (0x19, 0x01, 0x01), "genoa": (0x19, 0x11, 0x01), "turin": (0x1A, 0x02, 0x01)}
DEFAULT_TCB = {"milan": {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219},
               "genoa": {"bootloader": 9, "tee": 0, "snp": 23, "microcode": 72},
               "turin": {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9}}
CRL_VALIDITY = timedelta(days=7)
CERT_VALIDITY = timedelta(days=365 * 7)
ISSUE_LEAD = timedelta(minutes=1)   # CRLs are dated a minute early (verifier clocks may lag)
GUEST_POLICY = 0x30000          # SMT allowed, reserved bit 17 set, no debug, no migration agent


def _utc_seconds(t: datetime) -> datetime:
    return t.astimezone(timezone.utc).replace(microsecond=0)


@dataclass(frozen=True)
class SnpImage:
    """The guest's launch measurement and host data: identical on every host of one image."""

    measurement: bytes = hashlib.sha384(b"conclave emulated snp guest").digest()
    host_data: bytes = bytes(32)
    policy: int = GUEST_POLICY


class EmulatedSnpHost:
    """One SNP host: chip ID, reported TCB, VCEK; `report` plays SNP_GET_EXT_REPORT."""

    def __init__(self, hierarchy: "SnpTestHierarchy", name: str, serial: int, version: int):
        if version not in (3, 5):
            raise ValueError("emulated SNP reports are version 3 or 5")
        self.name = name
        self.hierarchy = hierarchy
        self.version = version
        product = hierarchy.product
        digest = hashlib.sha512(b"conclave emulated chip/" + hierarchy.cluster.encode() + b"/" + name.encode()).digest()
        self.chip_id = digest[:8] + bytes(56) if product == "turin" else digest
        self.hwid = digest[:8] if product == "turin" else digest
        self.tcb = dict(DEFAULT_TCB[product])
        self._vcek_key = ec.generate_private_key(ec.SECP384R1())
        self.vcek_certificate = sb.certificate(
            sb.name("SEV-VCEK", ORG), hierarchy.ask_certificate.subject, self._vcek_key.public_key(),
            hierarchy._ask_key, serial, hierarchy.not_before, hierarchy.not_before + CERT_VALIDITY,
            sb.ek_extensions(PRODUCT_NAMES[product] + ("-B0" if product != "turin" else ""), self.tcb, self.hwid))

    def __repr__(self) -> str:
        return f"EmulatedSnpHost({self.name!r}, vcek_serial={self.vcek_certificate.serial_number:#x})"

    def report(self, report_data: bytes, *, debug: bool = False) -> bytes:
        """An ATTESTATION_REPORT over `report_data` (64 bytes), signed by this host's VCEK."""
        if len(report_data) != 64:
            raise ValueError("report_data must be 64 bytes")
        image = self.hierarchy.image
        product = self.hierarchy.product
        return sb.report(version=self.version, product=product, tcb=self.tcb, chip_id=self.chip_id,
                         signer_info=0, key=self._vcek_key, cpuid=CPUID[product],
                         policy=image.policy | ((1 << 19) if debug else 0), report_data=report_data,
                         measurement=image.measurement, host_data=image.host_data,
                         report_id=hashlib.sha256(b"report id/" + self.name.encode()).digest())

    def auxblob(self) -> bytes:
        """The certificate table (VCEK, ASK, ARK), as configfs-tsm's auxblob holds it."""
        h = self.hierarchy
        return sb.cert_table([("vcek", sb.der(self.vcek_certificate)), ("ask", sb.der(h.ask_certificate)),
                              ("ark", sb.der(h.ark_certificate))])


class SnpTestHierarchy:
    """The cluster's emulated AMD hierarchy (one product line) and KDS state. Thread-safe."""

    def __init__(self, cluster: str, *, product: str = "genoa", now: datetime | None = None,
                 image: SnpImage | None = None):
        if product not in PRODUCT_NAMES:
            raise ValueError(f"product must be one of {sorted(PRODUCT_NAMES)}")
        now = _utc_seconds(now or datetime.now(timezone.utc))
        self.cluster = cluster
        self.product = product
        self.image = image or SnpImage()
        self.not_before = now - timedelta(days=1)
        self._lock = threading.Lock()
        p = PRODUCT_NAMES[product]
        self._ark_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
        self._ask_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
        ark_name = sb.name(f"ARK-{p}", ORG)
        end = self.not_before + timedelta(days=365 * 25)
        self.ark_certificate = sb.certificate(ark_name, ark_name, self._ark_key.public_key(), self._ark_key,
                                              0x10000, self.not_before, end, ca=True)
        self.ask_certificate = sb.certificate(sb.name(f"SEV-{p}", ORG), ark_name, self._ask_key.public_key(),
                                              self._ark_key, 0x10001, self.not_before, end, ca=True)
        self._hosts: dict[str, EmulatedSnpHost] = {}
        self._next_serial = 0x100
        self._revoked: set[int] = set()

    def host(self, name: str, *, version: int = 3) -> EmulatedSnpHost:
        with self._lock:
            if name not in self._hosts:
                self._next_serial += 1
                self._hosts[name] = EmulatedSnpHost(self, name, self._next_serial, version)
            return self._hosts[name]

    def hosts(self) -> list[EmulatedSnpHost]:
        with self._lock:
            return list(self._hosts.values())

    @property
    def root_pem(self) -> bytes:
        return self.ark_certificate.public_bytes(serialization.Encoding.PEM)

    def revoke(self, name: str) -> None:
        """List the host's VCEK serial in the ARK's CRL from the next publication on."""
        with self._lock:
            self._revoked.add(self._hosts[name].vcek_certificate.serial_number)

    def cert_chain_pem(self) -> bytes:
        """KDS /vcek/v1/<product>/cert_chain: ASK then ARK."""
        return sb.pem(self.ask_certificate) + sb.pem(self.ark_certificate)

    def crl_der(self, now: datetime | None = None) -> bytes:
        """KDS /vcek/v1/<product>/crl, dated ISSUE_LEAD before `now` and valid for a week."""
        issue = _utc_seconds(now or datetime.now(timezone.utc)) - ISSUE_LEAD
        with self._lock:
            revoked = sorted(self._revoked)
        crl = sb.crl(self.ark_certificate.subject, self._ark_key, revoked, last=issue, nxt=issue + CRL_VALIDITY)
        return crl.public_bytes(serialization.Encoding.DER)

    def vcek_der(self, hwid: bytes, tcb: dict[str, int]) -> bytes | None:
        """KDS /vcek/v1/<product>/<hwid>?...: the VCEK of that chip at that TCB, None if unknown."""
        with self._lock:
            for host in self._hosts.values():
                if host.hwid == hwid and all(tcb.get(k) == v for k, v in host.tcb.items()):
                    return sb.der(host.vcek_certificate)
        return None


__all__ = ["SnpTestHierarchy", "EmulatedSnpHost", "SnpImage"]
