"""Emulated hardware identities and vendor state as bytes, for local mode's separate processes.

Why: in `conclave up --local` the orchestrator plays both the hardware vendor and the machines.
It creates the cluster's TdxTestHierarchy / SnpTestHierarchy once, then
- each node process (`conclave node --evidence emulated`) gets only its own host's TEE identity
  (TDX: PCK and attestation keys, PCK chain, QE signer; SNP: VCEK key, VCEK/ASK/ARK certificates,
  chip ID, TCB) and rebuilds an EmulatedTdxHost / EmulatedSnpHost from it;
- each emulator process (emulated/service.py) gets the vendor side only (TDX: root, PCK CA and
  TCB signing keys plus the hosts' public PCK certificates; SNP: ARK/ASK keys plus the hosts'
  public VCEKs) and rebuilds a hierarchy that can publish, revoke and recover.
These blobs hold private keys: they travel over stdin only (never argv, never a file), like the
simulated attester. The blob formats are versioned JSON; a wrong or missing field is a
ValueError. repr of everything restored here shows no key.
"""
from __future__ import annotations

import base64
import json
import threading
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conclave.runtime.attestation.emulated.snp_issuer import EmulatedSnpHost, SnpImage, SnpTestHierarchy
from conclave.runtime.attestation.emulated.tdx_issuer import EmulatedTdxHost, TdImage, TdxTestHierarchy

HOST_FORMAT = "conclave-emulated-host/v1"
VENDOR_FORMAT = "conclave-emulated-vendor/v1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    return base64.b64decode(text, validate=True)


def _key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _load_key(text: Any):
    if not isinstance(text, str):
        raise ValueError("expected a PEM private key")
    return serialization.load_pem_private_key(text.encode(), password=None)


def _cert_der(cert: x509.Certificate) -> str:
    return _b64(cert.public_bytes(serialization.Encoding.DER))


def _load_cert(text: Any) -> x509.Certificate:
    return x509.load_der_x509_certificate(_unb64(text))


def _td_image(image: TdImage) -> dict:
    return {"mr_td": image.mr_td.hex(), "rtmrs": [r.hex() for r in image.rtmrs],
            "mr_config_id": image.mr_config_id.hex(), "mr_owner": image.mr_owner.hex(),
            "mr_owner_config": image.mr_owner_config.hex(), "td_attributes": image.td_attributes.hex(),
            "xfam": image.xfam.hex()}


def _load_td_image(d: dict) -> TdImage:
    rtmrs = tuple(bytes.fromhex(r) for r in d["rtmrs"])
    if len(rtmrs) != 4:
        raise ValueError("a TD image has four RTMRs")
    return TdImage(mr_td=bytes.fromhex(d["mr_td"]), rtmrs=rtmrs, mr_config_id=bytes.fromhex(d["mr_config_id"]),
                   mr_owner=bytes.fromhex(d["mr_owner"]), mr_owner_config=bytes.fromhex(d["mr_owner_config"]),
                   td_attributes=bytes.fromhex(d["td_attributes"]), xfam=bytes.fromhex(d["xfam"]))


def _snp_image(image: SnpImage) -> dict:
    return {"measurement": image.measurement.hex(), "host_data": image.host_data.hex(), "policy": image.policy}


def _load_snp_image(d: dict) -> SnpImage:
    return SnpImage(measurement=bytes.fromhex(d["measurement"]), host_data=bytes.fromhex(d["host_data"]),
                    policy=int(d["policy"]))


# -- one host's TEE identity (what a node process gets) ----------------------------------------------

def host_secret_bytes(host: EmulatedTdxHost | EmulatedSnpHost) -> bytes:
    """The host's TEE identity, private keys included (stdin only)."""
    if isinstance(host, EmulatedTdxHost):
        h = host.hierarchy
        body = {"tee": "tdx", "name": host.name, "pck_key": _key_pem(host._pck_key),
                "att_key": _key_pem(host._att_key), "pck_certificate": _cert_der(host.pck_certificate),
                "chain_pem": host._chain, "tee_tcb_svn": host.tee_tcb_svn.hex(),
                "qe_mr_signer": h.qe_mr_signer.hex(), "image": _td_image(host.image)}
    elif isinstance(host, EmulatedSnpHost):
        h = host.hierarchy
        body = {"tee": "snp", "name": host.name, "version": host.version, "product": h.product,
                "vcek_key": _key_pem(host._vcek_key), "vcek_certificate": _cert_der(host.vcek_certificate),
                "ask_certificate": _cert_der(h.ask_certificate), "ark_certificate": _cert_der(h.ark_certificate),
                "chip_id": host.chip_id.hex(), "hwid": host.hwid.hex(), "tcb": dict(host.tcb),
                "image": _snp_image(h.image)}
    else:
        raise TypeError("not an emulated TDX or SNP host")
    return json.dumps({"format": HOST_FORMAT, **body}, sort_keys=True).encode()


class _RestoredTdxHost(EmulatedTdxHost):
    """An EmulatedTdxHost rebuilt from host_secret_bytes (its hierarchy's keys are not here)."""

    def __init__(self, d: dict):  # noqa: D107 - restores EmulatedTdxHost's fields, generates nothing
        self.name = str(d["name"])
        self.hierarchy = SimpleNamespace(qe_mr_signer=bytes.fromhex(d["qe_mr_signer"]))
        self.image = _load_td_image(d["image"])
        self._pck_key = _load_key(d["pck_key"])
        self._att_key = _load_key(d["att_key"])
        self.pck_certificate = _load_cert(d["pck_certificate"])
        self.tee_tcb_svn = bytes.fromhex(d["tee_tcb_svn"])
        if not isinstance(d["chain_pem"], str) or "BEGIN CERTIFICATE" not in d["chain_pem"]:
            raise ValueError("chain_pem is not a PEM chain")
        self._chain = d["chain_pem"]


class _RestoredSnpHost(EmulatedSnpHost):
    """An EmulatedSnpHost rebuilt from host_secret_bytes (ASK/ARK certificates only, no CA keys)."""

    def __init__(self, d: dict):  # noqa: D107 - restores EmulatedSnpHost's fields, generates nothing
        version = int(d["version"])
        if version not in (3, 5):
            raise ValueError("emulated SNP reports are version 3 or 5")
        self.name = str(d["name"])
        self.version = version
        self.hierarchy = SimpleNamespace(product=str(d["product"]), image=_load_snp_image(d["image"]),
                                         ask_certificate=_load_cert(d["ask_certificate"]),
                                         ark_certificate=_load_cert(d["ark_certificate"]))
        self.chip_id = bytes.fromhex(d["chip_id"])
        self.hwid = bytes.fromhex(d["hwid"])
        self.tcb = {str(k): int(v) for k, v in d["tcb"].items()}
        self._vcek_key = _load_key(d["vcek_key"])
        self.vcek_certificate = _load_cert(d["vcek_certificate"])


def host_from_secret_bytes(data: bytes) -> EmulatedTdxHost | EmulatedSnpHost:
    """The host host_secret_bytes wrote; ValueError for anything else."""
    try:
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("format") != HOST_FORMAT:
            raise ValueError
        if d.get("tee") == "tdx":
            return _RestoredTdxHost(d)
        if d.get("tee") == "snp":
            return _RestoredSnpHost(d)
        raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError("not an emulated host identity") from None


# -- the vendor side (what an emulator process gets) -------------------------------------------------

def vendor_secret_bytes(hierarchy: TdxTestHierarchy | SnpTestHierarchy) -> bytes:
    """The vendor's keys and the hosts' public certificates (stdin of the emulator process only)."""
    if isinstance(hierarchy, TdxTestHierarchy):
        h = hierarchy
        body = {"tee": "tdx", "cluster": h.cluster, "fmspc": h.fmspc.hex(), "image": _td_image(h.image),
                "not_before": h.not_before.isoformat(), "root_key": _key_pem(h._root_key),
                "ca_key": _key_pem(h._ca_key), "tcb_key": _key_pem(h._tcb_key),
                "root_certificate": _cert_der(h.root_certificate), "platform_ca": _cert_der(h.platform_ca),
                "tcb_signing": _cert_der(h.tcb_signing), "qe_mr_signer": h.qe_mr_signer.hex(),
                "hosts": {name: _cert_der(host.pck_certificate) for name, host in h._hosts.items()}}
    elif isinstance(hierarchy, SnpTestHierarchy):
        h = hierarchy
        body = {"tee": "snp", "cluster": h.cluster, "product": h.product, "image": _snp_image(h.image),
                "not_before": h.not_before.isoformat(), "ark_key": _key_pem(h._ark_key),
                "ask_key": _key_pem(h._ask_key), "ark_certificate": _cert_der(h.ark_certificate),
                "ask_certificate": _cert_der(h.ask_certificate),
                "hosts": {name: {"vcek_certificate": _cert_der(host.vcek_certificate), "hwid": host.hwid.hex(),
                                 "tcb": dict(host.tcb)} for name, host in h._hosts.items()}}
    else:
        raise TypeError("not an emulated TDX or SNP hierarchy")
    return json.dumps({"format": VENDOR_FORMAT, **body}, sort_keys=True).encode()


class ServedTdxHierarchy(TdxTestHierarchy):
    """The PCS side of a TdxTestHierarchy (no host keys), with the controls an emulator offers:
    revoke / unrevoke a host's PCK, publish a TCB recovery / withdraw it."""

    def __init__(self, d: dict):  # noqa: D107 - restores TdxTestHierarchy's vendor fields
        from datetime import datetime
        self.cluster = str(d["cluster"])
        self.fmspc = bytes.fromhex(d["fmspc"])
        self.image = _load_td_image(d["image"])
        self.not_before = datetime.fromisoformat(d["not_before"])
        self._lock = threading.Lock()
        self._root_key, self._ca_key, self._tcb_key = (_load_key(d[k]) for k in ("root_key", "ca_key", "tcb_key"))
        self.root_certificate = _load_cert(d["root_certificate"])
        self.platform_ca = _load_cert(d["platform_ca"])
        self.tcb_signing = _load_cert(d["tcb_signing"])
        self.qe_mr_signer = bytes.fromhex(d["qe_mr_signer"])
        self._hosts = {str(n): SimpleNamespace(name=str(n), pck_certificate=_load_cert(c))
                       for n, c in d["hosts"].items()}
        self._next_serial = max([c.pck_certificate.serial_number for c in self._hosts.values()] + [0x4000])
        self._revoked = set()
        self._recoveries = 0
        self._crl_number = 1

    def __repr__(self) -> str:
        return f"ServedTdxHierarchy({self.cluster!r}, hosts={sorted(self._hosts)}, keys=<redacted>)"

    def host_names(self) -> list[str]:
        return sorted(self._hosts)

    def unrevoke(self, name: str) -> None:
        """Take the host's PCK certificate off the CRL again (tests heal what they broke)."""
        with self._lock:
            self._revoked.discard(self._hosts[name].pck_certificate.serial_number)
            self._crl_number += 1

    def withdraw_recoveries(self) -> None:
        """Publish TCB info as before any recovery (the hosts' TCB is UpToDate again)."""
        with self._lock:
            self._recoveries = 0

    def revoked_hosts(self) -> list[str]:
        with self._lock:
            return sorted(n for n, h in self._hosts.items() if h.pck_certificate.serial_number in self._revoked)


class ServedSnpHierarchy(SnpTestHierarchy):
    """The KDS side of an SnpTestHierarchy (no host keys), with revoke / unrevoke of a VCEK."""

    def __init__(self, d: dict):  # noqa: D107 - restores SnpTestHierarchy's vendor fields
        from datetime import datetime
        self.cluster = str(d["cluster"])
        self.product = str(d["product"])
        self.image = _load_snp_image(d["image"])
        self.not_before = datetime.fromisoformat(d["not_before"])
        self._lock = threading.Lock()
        self._ark_key, self._ask_key = _load_key(d["ark_key"]), _load_key(d["ask_key"])
        self.ark_certificate = _load_cert(d["ark_certificate"])
        self.ask_certificate = _load_cert(d["ask_certificate"])
        self._hosts = {str(n): SimpleNamespace(name=str(n), vcek_certificate=_load_cert(h["vcek_certificate"]),
                                               hwid=bytes.fromhex(h["hwid"]),
                                               tcb={str(k): int(v) for k, v in h["tcb"].items()})
                       for n, h in d["hosts"].items()}
        self._next_serial = max([h.vcek_certificate.serial_number for h in self._hosts.values()] + [0x100])
        self._revoked = set()

    def __repr__(self) -> str:
        return f"ServedSnpHierarchy({self.cluster!r}, hosts={sorted(self._hosts)}, keys=<redacted>)"

    def host_names(self) -> list[str]:
        return sorted(self._hosts)

    def unrevoke(self, name: str) -> None:
        with self._lock:
            self._revoked.discard(self._hosts[name].vcek_certificate.serial_number)

    def revoked_hosts(self) -> list[str]:
        with self._lock:
            return sorted(n for n, h in self._hosts.items() if h.vcek_certificate.serial_number in self._revoked)


def vendor_from_secret_bytes(data: bytes) -> ServedTdxHierarchy | ServedSnpHierarchy:
    """The vendor side vendor_secret_bytes wrote; ValueError for anything else."""
    try:
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("format") != VENDOR_FORMAT:
            raise ValueError
        if d.get("tee") == "tdx":
            return ServedTdxHierarchy(d)
        if d.get("tee") == "snp":
            return ServedSnpHierarchy(d)
        raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError("not an emulated vendor state") from None


__all__ = ["host_secret_bytes", "host_from_secret_bytes", "vendor_secret_bytes", "vendor_from_secret_bytes",
           "ServedTdxHierarchy", "ServedSnpHierarchy"]
