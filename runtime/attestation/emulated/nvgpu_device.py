"""Emulated NVIDIA H100s for local mode: per cluster one device-identity hierarchy and one RIM
authority, per host a device dir holding each GPU's identity, and the node's evidence source.

Why: a local cluster should run the GPU half of the trust chain the way a real H100 node does:
SPDM GET_MEASUREMENTS evidence signed by the GPU's attestation key over the node's derived
nonce (binding.gpu_nonce_for(REPORT_DATA), exactly as collect.NvattestSource is asked), a
device chain shaped like NVIDIA's (emulated/nvgpu_build), driver and VBIOS RIMs signed by a test
RIM root (nvgpu_rim_issue) served by the emulated RIM service, and OCSP for both chains from the
emulated responder; the verifiers (nvgpu, nvgpu_rim, ocsp) run unchanged.

Per-host device dir (what `conclave node --gpu-evidence emulated --gpu-device-dir DIR` reads,
like the CPU emulation's configfs-tsm dir):
    DIR/gpu<i>/attestation_key.pem   0600, the GPU's per-boot attestation (FMC leaf) key
    DIR/gpu<i>/cert_chain.pem        leaf -> GSP BROM -> Provisioner ICA -> GH100 Identity -> root
    DIR/gpu<i>/switches.json         {"present": true, "cc_mode": true, "tamper_index": null}
The switches are read on every collection, so flipping one while the cluster runs changes what
the next (re-)attestation presents (set_switches / `conclave` tests write them):
- present false: the GPU is not presented (the node sends no GPU evidence for it) -> gpu_missing
- cc_mode false: the CC-mode configuration is measured in CC_CONFIG_INDEX; a GPU outside CC mode
  reports the CC-off value there, which its VBIOS RIM does not list. The emulated VBIOS RIM names
  that index as the CC-mode configuration (resource name nvgpu_rim.CC_MODE_RESOURCE_PREFIX...), so
  under RIM validation the verifier reports gpu_cc_off (a mismatch ONLY at indices the RIM names so;
  any other mismatched index keeps rim_mismatch), and gpu_cc_off where RIM validation did not run
  (CC mode is only proven by measurements matching the RIMs, see nvgpu_requirement). NVIDIA's
  published RIMs name no such index, so a real H100 outside CC mode shows rim_mismatch.
- tamper_index N: SPDM measurement block N reports a value outside its RIM -> rim_mismatch.
What differs from a real H100: the key is a file (a real GPU's key never leaves the chip), the
hierarchy is the cluster's own (trusted only through an explicitly passed test root), and the
CC-off / tampered values are the emulation's own constants, not NVIDIA's.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conclave.runtime.atomic_write import write_atomic
from conclave.runtime.attestation import collect
from conclave.runtime.attestation.core import TeeType
from conclave.runtime.attestation.emulated import nvgpu_build
from conclave.runtime.attestation.nvgpu_rim_issue import TestRimAuthority

DRIVER_VERSION = "550.90.07"        # what nvgpu_build's opaque data reports
VBIOS_VERSION = "96.00.9F.00.01"
PROJECT_SKU = b"0200"               # completes the board identity naming the VBIOS RIM
# SPDM measurement blocks (1-based) each RIM covers; RIM index = block - 1.
VBIOS_BLOCKS = (1, 2, 3, 4)
DRIVER_BLOCKS = (5, 6, 7, 8)
CC_CONFIG_INDEX = 4                 # the emulation's CC-mode configuration block (VBIOS RIM index 3)
CC_OFF_VALUE = hashlib.sha384(b"conclave emulated H100: CC mode off (devtools)").digest()
TAMPERED_VALUE = hashlib.sha384(b"conclave emulated H100: measurement outside its RIM").digest()
KEY_FILE, CHAIN_FILE, SWITCHES_FILE = "attestation_key.pem", "cert_chain.pem", "switches.json"
DEFAULT_SWITCHES = {"present": True, "cc_mode": True, "tamper_index": None}


def golden_measurements() -> dict[int, bytes]:
    """SPDM block -> value of an emulated H100 in CC mode with the RIMs' firmware."""
    return nvgpu_build.measurement_values(max(DRIVER_BLOCKS))


@dataclass(frozen=True)
class GpuAuthority:
    """One cluster's NVIDIA stand-ins: the device-identity PKI (`pki.root` is the verifiers'
    test device root) and the RIM authority (`rims.root` is the test RIM root)."""

    pki: nvgpu_build.TestPki
    rims: TestRimAuthority

    @classmethod
    def generate(cls, *, now: datetime | None = None) -> "GpuAuthority":
        return cls(nvgpu_build.make_pki("Conclave Emulated Device Identity CA"),
                   TestRimAuthority.generate(now=now or datetime.now(timezone.utc)))

    @property
    def device_root(self) -> x509.Certificate:
        return self.pki.root

    @property
    def rim_root(self) -> x509.Certificate:
        return self.rims.root

    def signed_rims(self) -> dict[str, bytes]:
        """RIM service id -> signed swidtag, for the driver and the VBIOS every emulated GPU runs.
        The VBIOS RIM names CC_CONFIG_INDEX's resource as the CC-mode configuration (gpu_cc_off)."""
        from conclave.runtime.attestation.nvgpu_rim import CC_MODE_RESOURCE_PREFIX
        m = golden_measurements()
        driver = self.rims.sign_rim(version=DRIVER_VERSION, golden={b - 1: m[b] for b in DRIVER_BLOCKS})
        vbios = self.rims.sign_rim(version=VBIOS_VERSION, golden={b - 1: m[b] for b in VBIOS_BLOCKS},
                                   names={CC_CONFIG_INDEX - 1: f"{CC_MODE_RESOURCE_PREFIX}{CC_CONFIG_INDEX - 1}"})
        driver_id, vbios_id = rim_ids_of_emulated_gpus()
        return {driver_id: driver, vbios_id: vbios}

    def _ocsp_issuers(self) -> list[tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
        """Every CA of the device chain and of the RIM signing chain, with its key."""
        return [(self.pki.root, self.pki.root_key), (self.pki.identity, self.pki.identity_key),
                (self.pki.ica, self.pki.ica_key), *zip(self.rims.chain[1:], self.rims.ca_keys)]

    def serve(self, rim_service, ocsp_responder) -> None:
        """Publish the RIMs on an emulated RIM service and let the emulated OCSP responder answer
        for every CA of the device chain and of the RIM signing chain."""
        for rim_id, xml in self.signed_rims().items():
            rim_service.add(rim_id, xml)
        for cert, key in self._ocsp_issuers():
            ocsp_responder.add_issuer(cert, key)

    # -- as bytes, for local mode's processes (CA keys inside: 0600 files and stdin only) ----------
    def to_secret_bytes(self) -> bytes:
        """The whole authority, CA and signer keys included (local mode keeps it 0600 in the state dir,
        so tests and `conclave` tooling can provision another host for the running cluster)."""
        p, r = self.pki, self.rims
        body = {"format": AUTHORITY_FORMAT,
                "pki": {"root_key": _key_pem(p.root_key), "root": _cert_pem(p.root),
                        "identity_key": _key_pem(p.identity_key), "identity": _cert_pem(p.identity),
                        "ica_key": _key_pem(p.ica_key), "ica": _cert_pem(p.ica)},
                "rims": {"chain": [_cert_pem(c) for c in r.chain], "signer_key": _key_pem(r.signer_key),
                         "ca_keys": [_key_pem(k) for k in r.ca_keys]}}
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_secret_bytes(cls, data: bytes) -> "GpuAuthority":
        try:
            d = json.loads(data)
            if d.get("format") != AUTHORITY_FORMAT:
                raise ValueError("not an emulated GPU authority")
            p, r = d["pki"], d["rims"]
            pki = nvgpu_build.TestPki(_load_key(p["root_key"]), _load_cert(p["root"]), _load_key(p["identity_key"]),
                                      _load_cert(p["identity"]), _load_key(p["ica_key"]), _load_cert(p["ica"]))
            chain = tuple(_load_cert(c) for c in r["chain"])
            rims = TestRimAuthority(root=chain[-1], chain=chain, signer_key=_load_key(r["signer_key"]),
                                    ca_keys=tuple(_load_key(k) for k in r["ca_keys"]))
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"emulated GPU authority: {type(exc).__name__}") from None
        return cls(pki, rims)

    def service_state(self) -> bytes:
        """What the emulated NVIDIA services process needs (emulated/service.py nvidia, over stdin):
        the signed RIMs (public) and the OCSP issuers' certificates and keys; no RIM signer key, no
        way to certify a device."""
        body = {"format": SERVICES_FORMAT,
                "rims": {rim_id: base64.b64encode(xml).decode() for rim_id, xml in self.signed_rims().items()},
                "ocsp_issuers": [{"cert": _cert_pem(c), "key": _key_pem(k)} for c, k in self._ocsp_issuers()]}
        return json.dumps(body, sort_keys=True).encode()

    def __repr__(self) -> str:
        return "GpuAuthority(device_root=..., rim_root=..., keys=<redacted>)"

    @contextmanager
    def running_services(self):
        """An emulated RIM service and OCSP responder serving this authority, for the `with` block:
        yields (rim_service, ocsp_responder)."""
        from conclave.runtime.attestation.ocsp_emulated import EmulatedOcspResponder
        from conclave.runtime.attestation.rim_service_emulated import EmulatedRimService
        rims, responder = EmulatedRimService(), EmulatedOcspResponder()
        self.serve(rims, responder)
        with rims, responder:
            yield rims, responder

    def provision(self, host_dir: Path, host_serial: int, count: int = 1) -> list[Path]:
        """Give an emulated host `count` GPUs: one device dir per GPU under host_dir."""
        if not 1 <= count <= 8:
            raise ValueError("an emulated host has 1..8 GPUs")
        host_dir = Path(host_dir)
        host_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        out = []
        for i in range(count):
            serial = f"41430000{host_serial:04X}{i:04X}"
            device = nvgpu_build.make_device(self.pki, serial)
            gpu = host_dir / f"gpu{i}"
            gpu.mkdir(exist_ok=True, mode=0o700)
            key_pem = device.leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption())
            write_atomic(gpu / KEY_FILE, key_pem, mode=0o600)
            write_atomic(gpu / CHAIN_FILE, nvgpu_build.pem(*device.chain(self.pki)), mode=0o644)
            set_switches(gpu, **DEFAULT_SWITCHES)
            out.append(gpu)
        return out


AUTHORITY_FORMAT = "conclave-emulated-gpu-authority/v1"
SERVICES_FORMAT = "conclave-emulated-nvidia-services/v1"


def _key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _load_key(text) -> ec.EllipticCurvePrivateKey:
    if not isinstance(text, str):
        raise TypeError("expected a PEM private key")
    key = serialization.load_pem_private_key(text.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("expected an EC key")
    return key


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _load_cert(text) -> x509.Certificate:
    if not isinstance(text, str):
        raise TypeError("expected a PEM certificate")
    return x509.load_pem_x509_certificate(text.encode())


def start_services(state: bytes, host: str = "127.0.0.1", rim_port: int = 0, ocsp_port: int = 0):
    """The emulated RIM service and OCSP responder over service_state() bytes, started:
    returns (rim_service, ocsp_responder)."""
    from conclave.runtime.attestation.ocsp_emulated import EmulatedOcspResponder
    from conclave.runtime.attestation.rim_service_emulated import EmulatedRimService
    try:
        d = json.loads(state)
        if d.get("format") != SERVICES_FORMAT:
            raise ValueError("not the emulated NVIDIA services state")
        rims = {str(k): base64.b64decode(v, validate=True) for k, v in d["rims"].items()}
        issuers = [(_load_cert(i["cert"]), _load_key(i["key"])) for i in d["ocsp_issuers"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"emulated NVIDIA services state: {type(exc).__name__}") from None
    rim_service, responder = EmulatedRimService(host, rim_port), EmulatedOcspResponder(host, ocsp_port)
    for rim_id, xml in rims.items():
        rim_service.add(rim_id, xml)
    for cert, key in issuers:
        responder.add_issuer(cert, key)
    rim_service.start()
    try:
        responder.start()
    except BaseException:
        rim_service.stop()
        raise
    return rim_service, responder


def rim_ids_of_emulated_gpus() -> tuple[str, str]:
    """The (driver, VBIOS) RIM service ids an emulated GPU's evidence names (read by the verifier's
    own code from a sample of that evidence, so publisher and fetcher cannot disagree)."""
    from conclave.runtime.attestation import nvgpu
    from conclave.runtime.attestation.nvgpu_collateral_source import rim_ids
    sample = nvgpu_build.build_evidence(ec.generate_private_key(ec.SECP384R1()), project_sku=PROJECT_SKU)
    driver_id, vbios_id = rim_ids(nvgpu.parse(sample))
    return driver_id, vbios_id


def set_switches(gpu_dir: Path, *, present: bool | None = None, cc_mode: bool | None = None,
                 tamper_index: int | None | str = "keep") -> dict:
    """Change an emulated GPU's switches (unset arguments keep their value); returns them."""
    current = read_switches(gpu_dir) if (Path(gpu_dir) / SWITCHES_FILE).exists() else dict(DEFAULT_SWITCHES)
    if present is not None:
        current["present"] = bool(present)
    if cc_mode is not None:
        current["cc_mode"] = bool(cc_mode)
    if tamper_index != "keep":
        if tamper_index is not None and tamper_index not in golden_measurements():
            raise ValueError(f"tamper_index must be a measurement block {sorted(golden_measurements())}")
        current["tamper_index"] = tamper_index
    write_atomic(Path(gpu_dir) / SWITCHES_FILE, json.dumps(current, sort_keys=True).encode(), mode=0o644)
    return current


def read_switches(gpu_dir: Path) -> dict:
    try:
        doc = json.loads((Path(gpu_dir) / SWITCHES_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise collect.CollectionError(f"emulated GPU {Path(gpu_dir).name}: unreadable switches ({exc})",
                                      reason="gpu_device_invalid") from None
    if not isinstance(doc, dict) or set(doc) != set(DEFAULT_SWITCHES):
        raise collect.CollectionError(f"emulated GPU {Path(gpu_dir).name}: switches must be {sorted(DEFAULT_SWITCHES)}",
                                      reason="gpu_device_invalid")
    return doc


def gpu_dirs(host_dir: Path) -> list[Path]:
    """The emulated GPUs of a host dir, in index order."""
    found = [p for p in Path(host_dir).glob("gpu*") if p.is_dir() and p.name[3:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[3:]))


class EmulatedGpuSource:
    """A node's GPU evidence source on an emulated host (like collect.NvattestSource): collect(nonce)
    returns the SDK evidence list (JSON) of every presented GPU, or None when the host presents
    no GPU at all (the node then sends no GPU item; a stage that asks for GPUs refuses it)."""

    tee = TeeType.NVGPU

    def __init__(self, host_dir: Path):
        self.host_dir = Path(host_dir)
        if not gpu_dirs(self.host_dir):
            raise collect.CollectionError(f"no emulated GPU under {self.host_dir}", reason="gpu_device_invalid")

    def __repr__(self) -> str:
        return f"EmulatedGpuSource({self.host_dir.name!r})"

    def collect(self, report_data: bytes) -> bytes | None:
        if len(report_data) != 32:
            raise collect.CollectionError("the GPU nonce is 32 bytes (binding.gpu_nonce_for)")
        entries = []
        for gpu in gpu_dirs(self.host_dir):
            switches = read_switches(gpu)
            if not switches["present"]:
                continue
            entries.append(_entry(gpu, switches, report_data))
        return json.dumps(entries, sort_keys=True).encode() if entries else None


def _entry(gpu: Path, switches: dict, nonce: bytes) -> dict:
    try:
        key = serialization.load_pem_private_key((gpu / KEY_FILE).read_bytes(), password=None)
        chain = (gpu / CHAIN_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise collect.CollectionError(f"emulated GPU {gpu.name}: identity unreadable ({type(exc).__name__})",
                                      reason="gpu_device_invalid") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise collect.CollectionError(f"emulated GPU {gpu.name}: not a P-384 key", reason="gpu_device_invalid")
    values = measurements_for(switches)
    raw = nvgpu_build.build_evidence(key, nonce=nonce, project_sku=PROJECT_SKU, measurements=values)
    return {"arch": "HOPPER", "nonce": nonce.hex(), "version": "1.0",
            "evidence": base64.b64encode(raw).decode(), "certificate": base64.b64encode(chain).decode()}


def measurements_for(switches: Mapping) -> dict[int, bytes]:
    values = golden_measurements()
    if not switches.get("cc_mode", True):
        values[CC_CONFIG_INDEX] = CC_OFF_VALUE
    tamper = switches.get("tamper_index")
    if tamper is not None:
        values[int(tamper)] = TAMPERED_VALUE
    return values


def gpu_summary(host_dir: Path) -> list[dict]:
    """What `conclave status` names: each emulated GPU's index, model, serial and switches."""
    out = []
    for gpu in gpu_dirs(host_dir):
        try:
            leaf = x509.load_pem_x509_certificates((gpu / CHAIN_FILE).read_bytes())[0]
            serial = leaf.issuer.get_attributes_for_oid(x509.oid.NameOID.SERIAL_NUMBER)[0].value
        except (OSError, ValueError, IndexError):
            serial = None
        out.append({"gpu": gpu.name, "model": "H100", "chip": "GH100", "serial": serial,
                    "emulated": True, **read_switches(gpu)})
    return out


__all__ = ["GpuAuthority", "EmulatedGpuSource", "start_services", "set_switches", "read_switches", "gpu_dirs", "gpu_summary",
           "golden_measurements", "measurements_for", "CC_CONFIG_INDEX", "DRIVER_VERSION", "VBIOS_VERSION"]
