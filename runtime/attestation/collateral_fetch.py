"""Fetch and cache verification collateral (Intel PCS v4, AMD KDS) for offline verification.

Why separate: verification takes collateral as an argument and never does I/O (DESIGN.md
convention 6). This module is the I/O edge: it downloads the vendor responses byte for byte
(signatures cover the exact bytes) into cache_dir()/collateral/, in the folder layouts that
tdx.load_collateral and snp.load_collateral read. Offline mode never touches the network and
raises VerificationFailed(collateral_missing) when something is not cached.

Layout:
  collateral/tdx/<fmspc>-<ca>/  tcb_info_response.json, tcb_info_issuer_chain.pem,
                                qe_identity_response.json, qe_identity_issuer_chain.pem,
                                pckcrl_<ca>.der, pck_crl_issuer_chain.pem, root_ca_crl.der
  collateral/snp/<product>/<vcek-hwid>-<tcb tag>/  vcek.der, cert_chain.pem, crl.der
  collateral/snp/<product>/vlek/                  cert_chain.pem, crl.der

Base URLs are parameters (tests point them at a local server; deployments may use a PCCS).
Nothing here is secret: collateral is public vendor data.
"""
from __future__ import annotations

import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from conclave.runtime import config
from conclave.runtime.atomic_write import write_atomic
from conclave.runtime.attestation.core import Reason, VerificationFailed

INTEL_PCS_BASE = "https://api.trustedservices.intel.com"
INTEL_ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
AMD_KDS_BASE = "https://kdsintf.amd.com"
DEFAULT_TIMEOUT = 20.0
MAX_RESPONSE = 8 * 1024 * 1024
USER_AGENT = "conclave-collateral-fetch/1"
SNP_PRODUCTS = ("milan", "genoa", "turin")
_KDS_PRODUCT = {"milan": "Milan", "genoa": "Genoa", "turin": "Turin"}
# KDS query parameter per TCB component (AMD pub. 57230, "VCEK certificate request").
_KDS_SPL = (("bootloader", "blSPL"), ("tee", "teeSPL"), ("snp", "snpSPL"), ("microcode", "ucodeSPL"))

TDX_FILES = ("tcb_info_response.json", "tcb_info_issuer_chain.pem", "qe_identity_response.json",
             "qe_identity_issuer_chain.pem", "pck_crl_issuer_chain.pem", "root_ca_crl.der")


def collateral_root(cache: Path | None = None) -> Path:
    return Path(cache or config.cache_dir()) / "collateral"


def _missing(message: str) -> VerificationFailed:
    return VerificationFailed(Reason.COLLATERAL_MISSING, message)


@dataclass
class HttpResponse:
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def http_get(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> HttpResponse:
    """GET with a timeout and a size cap; any failure is collateral_missing (fail closed)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("https", "http"):
        raise ValueError(f"unsupported URL scheme in {url!r}")
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked)
            body = resp.read(MAX_RESPONSE + 1)
            headers = {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        raise _missing(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise _missing(f"{url}: {getattr(exc, 'reason', exc)}") from None
    if len(body) > MAX_RESPONSE:
        raise _missing(f"{url}: response larger than {MAX_RESPONSE} bytes")
    return HttpResponse(body, headers)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def _issuer_chain(resp: HttpResponse, header: str, url: str) -> bytes:
    value = resp.headers.get(header.lower())
    if not value:
        raise _missing(f"{url}: response lacks the {header} header")
    chain = urllib.parse.unquote(value).encode()
    if b"-----BEGIN CERTIFICATE-----" not in chain:
        raise _missing(f"{url}: {header} is not a PEM certificate chain")
    return chain


def _fresh(folder: Path, names: tuple[str, ...], max_age: float | None) -> bool:
    paths = [folder / n for n in names]
    if not all(p.is_file() for p in paths):
        return False
    if max_age is None:
        return True
    oldest = min(p.stat().st_mtime for p in paths)
    return time.time() - oldest <= max_age


# ------------------------------------------------------------------------------ Intel TDX

def _check_fmspc(fmspc: str | bytes) -> str:
    text = fmspc.hex() if isinstance(fmspc, (bytes, bytearray)) else str(fmspc).lower()
    if not re.fullmatch(r"[0-9a-f]{12}", text):
        raise ValueError("fmspc must be 6 bytes (12 hex digits)")
    return text


def fetch_tdx_collateral(fmspc: str | bytes, *, ca: str = "platform", cache: Path | None = None,
                         offline: bool = False, refresh: bool = False, max_age: float | None = 86400.0,
                         pcs_base: str = INTEL_PCS_BASE, root_crl_url: str = INTEL_ROOT_CA_CRL_URL,
                         timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Folder with Intel PCS v4 TDX collateral for `fmspc` (pass it to tdx.load_collateral).

    ca: which PCK CA issued the PCK certificate ("platform" or "processor"; see its issuer CN).
    Offline: the cached folder or collateral_missing. Online: re-fetch when missing, older than
    max_age seconds, or refresh=True.
    """
    fmspc = _check_fmspc(fmspc)
    if ca not in ("platform", "processor"):
        raise ValueError("ca must be 'platform' or 'processor'")
    folder = collateral_root(cache) / "tdx" / f"{fmspc}-{ca}"
    names = TDX_FILES + (f"pckcrl_{ca}.der",)
    if offline:
        if not _fresh(folder, names, None):
            raise _missing(f"no cached TDX collateral for FMSPC {fmspc} ({ca} CA) in {folder} (offline)")
        return folder
    if not refresh and _fresh(folder, names, max_age):
        return folder

    base = pcs_base.rstrip("/")
    url = f"{base}/tdx/certification/v4/tcb?fmspc={fmspc}"
    tcb = http_get(url, timeout=timeout)
    tcb_chain = _issuer_chain(tcb, "TCB-Info-Issuer-Chain", url)
    url_qe = f"{base}/tdx/certification/v4/qe/identity"
    qe = http_get(url_qe, timeout=timeout)
    qe_chain = _issuer_chain(qe, "SGX-Enclave-Identity-Issuer-Chain", url_qe)
    url_crl = f"{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"
    crl = http_get(url_crl, timeout=timeout)
    crl_chain = _issuer_chain(crl, "SGX-PCK-CRL-Issuer-Chain", url_crl)
    root_crl = http_get(root_crl_url, timeout=timeout)

    # Write only once everything arrived, so a cache folder is never half new, half old.
    for name, data in (("tcb_info_response.json", tcb.body), ("tcb_info_issuer_chain.pem", tcb_chain),
                       ("qe_identity_response.json", qe.body), ("qe_identity_issuer_chain.pem", qe_chain),
                       (f"pckcrl_{ca}.der", crl.body), ("pck_crl_issuer_chain.pem", crl_chain),
                       ("root_ca_crl.der", root_crl.body)):
        _write_atomic(folder / name, data)
    return folder


# ------------------------------------------------------------------------------ AMD SEV-SNP

def _check_product(product: str) -> str:
    product = str(product).lower()
    if product not in SNP_PRODUCTS:
        raise ValueError(f"product must be one of {SNP_PRODUCTS}")
    return product


def vcek_hwid(chip_id: bytes, product: str) -> str:
    """KDS hardware ID: the report's 64-byte CHIP_ID; Turin uses only its first 8 bytes."""
    if len(chip_id) != 64:
        raise ValueError("chip_id must be 64 bytes")
    return (chip_id[:8] if _check_product(product) == "turin" else chip_id).hex()


def vcek_url(product: str, chip_id: bytes, reported_tcb: Mapping[str, int], *,
             kds_base: str = AMD_KDS_BASE) -> str:
    product = _check_product(product)
    params = []
    for part, name in _KDS_SPL:
        value = reported_tcb.get(part)
        if not isinstance(value, int) or not 0 <= value <= 255:
            raise ValueError(f"reported_tcb.{part} must be an integer 0..255")
        params.append((name, str(value)))
    if product == "turin":
        fmc = reported_tcb.get("fmc")
        if not isinstance(fmc, int) or not 0 <= fmc <= 255:
            raise ValueError("Turin needs reported_tcb.fmc")
        params.insert(0, ("fmcSPL", str(fmc)))
    return (f"{kds_base.rstrip('/')}/vcek/v1/{_KDS_PRODUCT[product]}/{vcek_hwid(chip_id, product)}?"
            + urllib.parse.urlencode(params))


def _tcb_tag(reported_tcb: Mapping[str, int]) -> str:
    return "-".join(f"{k}{reported_tcb.get(k, 0)}" for k in ("fmc", "bootloader", "tee", "snp", "microcode"))


def fetch_snp_collateral(product: str, *, chip_id: bytes | None = None,
                         reported_tcb: Mapping[str, int] | None = None, signing_key: str = "vcek",
                         cache: Path | None = None, offline: bool = False, refresh: bool = False,
                         max_age: float | None = 86400.0, include_crl: bool = True,
                         kds_base: str = AMD_KDS_BASE, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Folder with AMD KDS collateral (pass it to snp.load_collateral).

    vcek: the chip's VCEK for its REPORTED_TCB, plus the ASK/ARK chain and the CRL.
    vlek: the ASVK/ARK chain and CRL only (a VLEK comes from the cloud provider, not from KDS).
    """
    product = _check_product(product)
    kds = kds_base.rstrip("/")
    if signing_key == "vcek":
        if chip_id is None or reported_tcb is None:
            raise ValueError("vcek collateral needs chip_id and reported_tcb")
        folder = (collateral_root(cache) / "snp" / product /
                  f"{vcek_hwid(chip_id, product)[:32]}-{_tcb_tag(reported_tcb)}")
        leaf_url = vcek_url(product, chip_id, reported_tcb, kds_base=kds)
        names = ("vcek.der", "cert_chain.pem")
    elif signing_key == "vlek":
        folder = collateral_root(cache) / "snp" / product / "vlek"
        leaf_url = None
        names = ("cert_chain.pem",)
    else:
        raise ValueError("signing_key must be 'vcek' or 'vlek'")
    if include_crl:
        names += ("crl.der",)
    if offline:
        if not _fresh(folder, names, None):
            raise _missing(f"no cached SNP {signing_key} collateral for {product} in {folder} (offline)")
        return folder
    if not refresh and _fresh(folder, names, max_age):
        return folder

    fetched: list[tuple[str, bytes]] = []
    if leaf_url is not None:
        leaf = http_get(leaf_url, timeout=timeout).body
        if not leaf.startswith(b"\x30"):
            raise _missing(f"{leaf_url}: not a DER certificate")
        fetched.append(("vcek.der", leaf))
    chain_url = f"{kds}/{signing_key}/v1/{_KDS_PRODUCT[product]}/cert_chain"
    chain = http_get(chain_url, timeout=timeout).body
    if chain.count(b"-----BEGIN CERTIFICATE-----") < 2:
        raise _missing(f"{chain_url}: expected PEM certificates (intermediate and ARK)")
    fetched.append(("cert_chain.pem", chain))
    if include_crl:
        crl_url = f"{kds}/{signing_key}/v1/{_KDS_PRODUCT[product]}/crl"
        fetched.append(("crl.der", http_get(crl_url, timeout=timeout).body))
    for name, data in fetched:
        _write_atomic(folder / name, data)
    return folder


__all__ = ["fetch_tdx_collateral", "fetch_snp_collateral", "vcek_url", "vcek_hwid", "collateral_root",
           "http_get", "INTEL_PCS_BASE", "AMD_KDS_BASE", "INTEL_ROOT_CA_CRL_URL"]
